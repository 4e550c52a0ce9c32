"""Training stage: fine-tune the student on the distillation dataset with LoRA (QLoRA on a GPU).

``train_student(ctx)`` reads ``dataset/{train,val}.jsonl`` and writes ``training/``:
``adapter/`` (PEFT LoRA adapter + tokenizer), ``student.json``, ``metrics.json``,
``loss.csv`` and, with ``training.merge_adapter``, ``merged/``.

Two paths, picked by ``training.quantization`` and the hardware:

- **QLoRA** (CUDA and ``quantization`` auto or 4bit): the base model is loaded in
  4-bit NF4 with double quantisation and bfloat16 compute
  (``BitsAndBytesConfig``), prepared with ``peft.prepare_model_for_kbit_training``
  (gradient checkpointing on) and trained with bf16 LoRA adapters.
- **LoRA** (CPU, or ``quantization: none``): the base model in float32 (bfloat16
  on CUDA) with trainable LoRA adapters. Asking for 4bit on a machine without
  CUDA is a ``ConfigError`` (bitsandbytes' 4-bit training needs a GPU).

The data is given to TRL's ``SFTTrainer`` in prompt-completion form
(``prompt`` = system + user messages, ``completion`` = the assistant message):
TRL renders both with the model's own chat template and, with
``completion_only_loss``, sets the labels of every prompt token to -100, so the
loss covers the assistant answer (and its end-of-turn token) only. Examples
longer than ``training.max_length`` are dropped, not truncated: a truncated
answer would teach the student to stop mid-JSON.

Resuming: checkpoints (adapter, optimizer, scheduler, RNG state) are saved
every ``eval_steps`` steps to ``training/checkpoints/``, keeping the last
``save_total_limit`` (plus the best one). Rerunning a killed run with the same
run id, data and training params continues from the last checkpoint, in the
same MLflow run; changed params or data, or a rerun after a completed
training, start afresh.

Every run is one MLflow run: params, per-step train/eval loss (logged by a
callback; the trainer's own ``report_to`` integrations are off so no second run
appears), the train/val splits as dataset inputs, dataset lineage tags and the
adapter as an artifact.

Parts: ``hardware`` (device, quantization, the base model), ``data`` (rows and
the quality gate), ``trainer`` (SFTTrainer + LoRA), ``resume`` (checkpoints),
``mlflow_run`` (tracking) and ``outputs`` (adapter, metrics, loss curve).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fitsense.runs import RunContext, read_json, write_json, write_manifest
from fitsense.training.data import check_quality_gate, load_split, load_training_rows, system_prompt_of
from fitsense.training.hardware import load_base_for_training, plan_hardware
from fitsense.training.mlflow_run import log_run_inputs, start_mlflow_run
from fitsense.training.outputs import loss_rows, save_adapter, training_metrics, write_loss_csv
from fitsense.training.resume import RESUME_FILE, prepare_checkpoints, resume_key, tokens_at
from fitsense.training.screen import train_screen
from fitsense.training.student import load_tokenizer, merge_adapter, resolve_base_model, resolve_precision
from fitsense.training.trainer import build_trainer

log = logging.getLogger(__name__)

STAGE = "training"


def _validation_losses(trainer, state, has_val: bool) -> tuple[float | None, float | None]:
    """(final, best) validation loss of the trained adapter; final is the saved (best) checkpoint's."""
    if not has_val:
        return None, None
    evals = [e for e in state.log_history if "eval_loss" in e]
    best = state.best_metric
    if trainer.args.load_best_model_at_end and best is not None:
        final = best  # the best checkpoint is what gets saved
    elif evals and evals[-1]["step"] == state.global_step:
        final = evals[-1]["eval_loss"]
    else:
        final = trainer.evaluate()["eval_loss"]
    if best is None:
        best = min([e["eval_loss"] for e in evals] + [final])
    return final, best


def _train_safety_screen(ctx: RunContext, out_dir: Path) -> Path:
    """Fit the red-flag screen on the train split (threshold on val), save it and log its figures."""
    import mlflow

    val = load_split(ctx, "val") if (ctx.run_dir / "dataset" / "val.jsonl").exists() else []
    screen = train_screen(load_split(ctx, "train"), val, ctx.params.seed)
    screen.save(out_dir)
    figures = {f"screen/{split}_{k}": float(v) for split in ("train", "val")
               for k, v in screen.metrics[split].items() if k in ("recall", "precision") and v is not None}
    mlflow.log_metrics({**figures, "screen/threshold": screen.threshold})
    log.info("safety screen: threshold %.3f, %s", screen.threshold, screen.metrics)
    return out_dir


def train_student(ctx: RunContext) -> dict:
    """Fine-tune the student on this run's dataset; see the module docstring for what it writes."""
    import mlflow
    from transformers import EarlyStoppingCallback, set_seed

    started = time.perf_counter()
    params, cfg = ctx.params, ctx.params.training
    device, quantization = plan_hardware(cfg)
    precision = resolve_precision(cfg.precision, device)
    check_quality_gate(ctx)
    info = read_json(ctx.require("dataset", "dataset_info.json"))

    base_path = resolve_base_model(cfg)
    tokenizer = load_tokenizer(base_path)
    rows = load_training_rows(ctx, tokenizer)

    stage_dir = ctx.stage_dir(STAGE)
    ckpt_dir = stage_dir / "checkpoints"
    resume_from, record = prepare_checkpoints(ckpt_dir, resume_key(params, info["digest"], base_path))

    set_seed(params.seed)
    model = load_base_for_training(base_path, device, quantization)
    trainer = build_trainer(params, model, tokenizer, rows.train, rows.val, ckpt_dir, device)

    run, continued = start_mlflow_run(params, ctx, record, resuming=resume_from is not None)
    with run:
        mlflow_run_id = record["mlflow_run_id"] = run.info.run_id
        write_json(ckpt_dir / RESUME_FILE, record)
        if not continued:
            mlflow.set_tags({
                "fitsense.run_id": ctx.run_id, "fitsense.stage": STAGE,
                "dataset_run_id": info["dataset_run_id"], "dataset_digest": info["digest"],
                "source_run_id": info.get("source_run_id", ""),
            })
            log_run_inputs(params, info, rows.train, rows.val, ctx.run_dir / "dataset", {
                "base_model_path": str(base_path), "device": device, "quantization": quantization,
                "precision": precision, "train_examples": len(rows.train), "val_examples": len(rows.val),
            })

        # LoRA B starts at zero, so before training the model computes exactly the base model's loss.
        base_val_loss, base_eval_s = record.get("base_val_loss"), None
        if rows.val and base_val_loss is None:
            t0 = time.perf_counter()
            base_val_loss = record["base_val_loss"] = trainer.evaluate()["eval_loss"]
            base_eval_s = round(time.perf_counter() - t0, 2)
            write_json(ckpt_dir / RESUME_FILE, record)
        if rows.val and cfg.early_stopping_patience > 0:
            trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))

        tokens_before = tokens_at(resume_from)
        output = trainer.train(resume_from_checkpoint=resume_from)
        state = trainer.state
        final_val_loss, best_val_loss = _validation_losses(trainer, state, bool(rows.val))

        adapter_dir = stage_dir / "adapter"
        save_adapter(trainer, tokenizer, adapter_dir)
        screen_dir = _train_safety_screen(ctx, stage_dir / "screen")
        merged_dir = merge_adapter(base_path, adapter_dir, stage_dir / "merged") if cfg.merge_adapter else None

        evals = [e for e in state.log_history if "eval_loss" in e]
        run_figures = training_metrics(state, output, evals, resume_from, tokens_before)
        eval_in_train_s = run_figures.pop("eval_in_train_s")
        metrics = {
            "base_val_loss": base_val_loss,
            "final_val_loss": final_val_loss,
            "best_val_loss": best_val_loss,
            **run_figures,
            "wall_s": round(time.perf_counter() - started, 2),
            "eval_s": round(eval_in_train_s + (base_eval_s or 0.0), 2),
            "base_eval_s": base_eval_s,
            "train_examples": len(rows.train),
            "val_examples": len(rows.val),
            "dropped_too_long": {"train": rows.dropped_train, "val": rows.dropped_val},
        }
        student = {
            "base_model": cfg.base_model,
            "base_model_path": str(base_path.resolve()),
            "adapter_dir": str(adapter_dir.resolve()),
            "merged_dir": str(Path(merged_dir).resolve()) if merged_dir else None,
            "screen_dir": str(screen_dir.resolve()),
            "mlflow_run_id": mlflow_run_id,
            "dataset_run_id": info["dataset_run_id"],
            "dataset_digest": info["digest"],
            "device": device,
            "quantization": quantization,
            "precision": precision,
            "system_prompt": system_prompt_of(rows.train),  # serving adds it to requests sent without one
        }
        write_json(stage_dir / "metrics.json", metrics)
        write_loss_csv(stage_dir / "loss.csv", loss_rows(state.log_history, base_val_loss))
        write_json(stage_dir / "student.json", student)

        mlflow.log_metrics({k: float(metrics[k]) for k in
                            ("base_val_loss", "final_val_loss", "best_val_loss", "tokens_per_s", "wall_s")
                            if metrics[k] is not None})
        mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")
        mlflow.log_artifacts(str(screen_dir), artifact_path="screen")
        for name in ("metrics.json", "student.json", "loss.csv"):
            mlflow.log_artifact(str(stage_dir / name))

    outputs = {"adapter": adapter_dir, "metrics": stage_dir / "metrics.json", "loss": stage_dir / "loss.csv",
               "student": stage_dir / "student.json", "screen": screen_dir}
    if merged_dir:
        outputs["merged"] = merged_dir
    record["completed"] = True  # a later rerun trains afresh; only a killed run resumes
    write_json(ckpt_dir / RESUME_FILE, record)
    write_manifest(ctx, STAGE, outputs, rows={"train": len(rows.train), "val": len(rows.val)},
                   extra={"mlflow_run_id": mlflow_run_id, "dataset_run_id": info["dataset_run_id"]})
    log.info("trained %s steps: val loss %s -> %s (best %s), %.1f tokens/s", state.global_step,
             base_val_loss, final_val_loss, best_val_loss, metrics["tokens_per_s"])
    return {"mlflow_run_id": mlflow_run_id, "steps": state.global_step, "base_val_loss": base_val_loss,
            "final_val_loss": final_val_loss, "best_val_loss": best_val_loss}
