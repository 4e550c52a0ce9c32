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
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
import warnings
from pathlib import Path

from fitsense.training.student import (
    load_tokenizer,
    merge_adapter,
    resolve_base_model,
    resolve_device,
    resolve_precision,
)
from transformers import TrainerCallback

from fitsense.config import ConfigError, Params, TrainingConfig
from fitsense.records import DistillRecord
from fitsense.runs import (
    RunContext,
    atomic_open,
    read_json,
    read_jsonl,
    write_json,
    write_manifest,
)

log = logging.getLogger(__name__)

STAGE = "training"
RESUME_FILE = "resume.json"  # in checkpoints/: what the checkpoints belong to, and the MLflow run to continue


# --------------------------------------------------------------------------- data


def to_prompt_completion(records: list[DistillRecord], source: str) -> list[dict]:
    """DistillRecords -> TRL prompt-completion rows; a malformed record is named by file and query id."""
    rows = []
    for rec in records:
        roles = [m.role for m in rec.messages]
        if len(roles) < 2 or roles[-1] != "assistant" or "assistant" in roles[:-1] or roles[-2] != "user":
            raise ValueError(f"{source}: record {rec.query_id}: messages must be [system,] user, assistant; got {roles}")
        msgs = [m.model_dump() for m in rec.messages]
        rows.append({"prompt": msgs[:-1], "completion": msgs[-1:], "query_id": rec.query_id, "kind": rec.kind})
    return rows


def _load_split(ctx: RunContext, split: str) -> list[DistillRecord]:
    path = ctx.require("dataset", f"{split}.jsonl")
    return read_jsonl(path, DistillRecord)


def _fits(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """Keep the rows whose full chat rendering fits in max_length tokens."""
    kept = []
    for row in rows:
        ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=True)
        if len(ids["input_ids"]) <= max_length:
            kept.append(row)
    return kept, len(rows) - len(kept)


def _sample(rows: list[dict], cap: int | None, seed: int) -> list[dict]:
    if cap is None or len(rows) <= cap:
        return rows
    import random

    return random.Random(seed).sample(rows, cap)


def _check_quality_gate(ctx: RunContext) -> None:
    gate = ctx.run_dir / "quality" / "gate.json"
    if not gate.exists():
        log.warning("no quality gate result for run %s (%s): training without it", ctx.run_id, gate)
        return
    result = read_json(gate)
    if not result.get("passed", False):
        raise RuntimeError(f"{gate}: the data quality gate failed ({result.get('failures')}); not training")


# --------------------------------------------------------------------------- model and trainer


def plan_hardware(cfg: TrainingConfig) -> tuple[str, str]:
    """(device, quantization) actually used: ``4bit`` or ``none``; clear errors for impossible requests."""
    device = resolve_device(cfg.device)
    if cfg.quantization == "4bit" and device != "cuda":
        raise ConfigError(
            "training.quantization: 4bit (QLoRA) needs a CUDA GPU and none is in use; "
            "set training.quantization=auto or none to train plain LoRA on the CPU"
        )
    quant = "4bit" if device == "cuda" and cfg.quantization in ("auto", "4bit") else "none"
    return device, quant


def load_base_for_training(model_dir: Path, device: str, quantization: str):
    import torch
    from transformers import AutoModelForCausalLM

    if quantization == "4bit":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), quantization_config=bnb, dtype=torch.bfloat16, device_map={"": 0}
        )
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    return model.to(device)


def lora_config(cfg: TrainingConfig, num_layers: int):
    from peft import LoraConfig

    top = cfg.lora.top_layers
    if top is not None and top >= num_layers:
        log.info("training.lora.top_layers=%d covers all %d layers of this model", top, num_layers)
        top = None
    return LoraConfig(
        layers_to_transform=None if top is None else list(range(num_layers - top, num_layers)),
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def sft_config(params: Params, output_dir: Path, device: str, has_val: bool):
    from trl import SFTConfig

    cfg = params.training
    bf16 = resolve_precision(cfg.precision, device) == "bf16"
    return SFTConfig(
        output_dir=str(output_dir),
        seed=params.seed,
        data_seed=params.seed,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of the total steps
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.num_epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length,
        packing=False,
        completion_only_loss=True,  # labels of prompt tokens are -100
        logging_steps=1,
        eval_strategy="steps" if has_val else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.eval_steps,  # = eval_steps, so the best checkpoint can be restored at the end
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=has_val,
        metric_for_best_model="eval_loss" if has_val else None,
        greater_is_better=False if has_val else None,
        use_cpu=device == "cpu",
        bf16=bf16,  # mixed precision: fp32 master weights, bf16 matmuls (autocast on the CPU)
        activation_checkpointing=device == "cuda",  # on the CPU the 135M model fits; recomputation only costs time
        include_num_input_tokens_seen="non_padding",
        report_to="none",  # MLflow is logged by MlflowStepLogger into the stage's own run
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


class MlflowStepLogger(TrainerCallback):
    """Logs every trainer log line (train loss, eval loss, lr, grad norm) to the active MLflow run, at its step."""

    RENAME = {"loss": "train_loss", "eval_loss": "eval_loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm"}

    def on_log(self, args, state, control, logs=None, **kwargs):
        import mlflow

        metrics = {self.RENAME[k]: float(v) for k, v in (logs or {}).items()
                   if k in self.RENAME and isinstance(v, (int, float)) and math.isfinite(v)}
        if metrics and state.is_world_process_zero:
            mlflow.log_metrics(metrics, step=state.global_step)


def _quiet_progress():
    """The trainer's progress bar without its printed dict per logged step (that goes to MLflow and
    loss.csv); validation losses are logged as one line each."""
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "eval_loss" in logs:
                when = f"step {state.global_step}/{state.max_steps}" if state.global_step else "before training"
                log.info("%s: val loss %.4f", when, logs["eval_loss"])

    return ProgressCallback, QuietProgress()


def _trainer_class(device: str):
    """TRL's ``SFTTrainer``; on the CPU, one that takes the loss from the model's own forward.

    TRL computes the loss with a fused, tiled LM head: a Triton kernel on a GPU, but on the CPU a
    loop of fp32 matmuls that took a third of each step. The model's own cross-entropy (with the
    collator's -100 prompt labels, so the same completion-only loss) runs the LM head under bf16
    autocast: 1.2-1.3x faster steps on 2 cores (``benchmarks/bench_training.py``). TRL's entropy and
    token-accuracy logs are not computed on that path.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    if device == "cuda":
        return SFTTrainer

    class CpuSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return CpuSFTTrainer


def build_trainer(params: Params, model, tokenizer, train_rows: list[dict], val_rows: list[dict],
                  output_dir: Path, device: str):
    """An ``SFTTrainer`` over prompt-completion rows with the LoRA adapter attached (completion-only loss)."""
    from datasets import Dataset

    def as_dataset(rows):
        return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])

    trainer = _trainer_class(device)(
        model=model,
        args=sft_config(params, output_dir, device, has_val=bool(val_rows)),
        train_dataset=as_dataset(train_rows),
        eval_dataset=as_dataset(val_rows) if val_rows else None,
        processing_class=tokenizer,
        peft_config=lora_config(params.training, model.config.num_hidden_layers),
        callbacks=[MlflowStepLogger()],
    )
    noisy, quiet = _quiet_progress()
    if trainer.pop_callback(noisy) is not None:  # absent when tqdm is disabled
        trainer.add_callback(quiet)
    return trainer


# --------------------------------------------------------------------------- resume bookkeeping


def _resume_key(params: Params, dataset_digest: str, base_model_path: Path) -> str:
    return f"{params.section_hash('seed', 'training')}|{dataset_digest}|{base_model_path.resolve()}"


def _prepare_checkpoints(ckpt_dir: Path, key: str) -> tuple[str | None, dict]:
    """The checkpoint to resume from (or None) and the resume record; stale checkpoints are cleared."""
    from transformers.trainer_utils import get_last_checkpoint

    record_path = ckpt_dir / RESUME_FILE
    if ckpt_dir.exists():
        record = read_json(record_path) if record_path.exists() else {}
        last = get_last_checkpoint(str(ckpt_dir))
        if last and record.get("completed"):
            log.info("the previous training of this run completed: training afresh")
        elif last and record.get("key") == key:
            log.info("resuming from %s", last)
            return last, record
        elif last:
            log.warning("checkpoints in %s belong to other params or data: starting afresh", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True)
    return None, {"key": key}


def _start_mlflow_run(params: Params, ctx: RunContext, record: dict, resuming: bool):
    import mlflow
    from mlflow.exceptions import MlflowException

    from fitsense.tracking import setup_mlflow

    setup_mlflow(params)
    if resuming and record.get("mlflow_run_id"):
        try:
            return mlflow.start_run(run_id=record["mlflow_run_id"]), True
        except MlflowException:
            log.warning("MLflow run %s not found in %s: starting a new one",
                        record["mlflow_run_id"], params.registry.tracking_uri)
    return mlflow.start_run(run_name=f"train-{ctx.run_id}"), False


def _log_run_inputs(params: Params, info: dict, train_rows, val_rows, dataset_dir: Path, extra: dict) -> None:
    import mlflow
    import pandas as pd

    cfg = params.training
    flat = {f"training.{k}": v for k, v in cfg.model_dump(mode="json").items() if k != "lora"}
    flat.update({f"training.lora.{k}": v for k, v in cfg.lora.model_dump(mode="json").items()})
    flat.update({"seed": params.seed, **extra})
    mlflow.log_params({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flat.items()})
    for split, rows, context in (("train", train_rows, "training"), ("val", val_rows, "validation")):
        if not rows:
            continue
        df = pd.DataFrame({
            "query_id": [r["query_id"] for r in rows],
            "kind": [r["kind"] for r in rows],
            "prompt": [json.dumps(r["prompt"], ensure_ascii=False) for r in rows],
            "completion": [r["completion"][0]["content"] for r in rows],
        })
        with warnings.catch_warnings():  # a local path matches two equivalent MLflow source types; either is right
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(
                df, source=str((dataset_dir / f"{split}.jsonl").resolve()),
                name=f"{info['dataset_run_id']}-{split}", targets="completion",
            )
        mlflow.log_input(dataset, context=context, tags={"dataset_run_id": info["dataset_run_id"]})


# --------------------------------------------------------------------------- outputs


def _loss_rows(log_history: list[dict], base_val_loss: float | None) -> list[dict]:
    by_step: dict[int, dict] = {}
    if base_val_loss is not None:
        by_step[0] = {"step": 0, "train_loss": "", "val_loss": base_val_loss}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        row = by_step.setdefault(step, {"step": step, "train_loss": "", "val_loss": ""})
        if "loss" in entry:
            row["train_loss"] = entry["loss"]
        if "eval_loss" in entry:
            row["val_loss"] = entry["eval_loss"]
    return [by_step[s] for s in sorted(by_step)]


def _write_loss_csv(path: Path, rows: list[dict]) -> None:
    with atomic_open(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "train_loss", "val_loss"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _save_adapter(trainer, tokenizer, out_dir: Path) -> None:
    from fitsense.runs import atomic_dir

    with atomic_dir(out_dir) as tmp:
        trainer.model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))


def _tokens_at(checkpoint: str | None) -> int:
    if not checkpoint:
        return 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return int(state.get("num_input_tokens_seen", 0) or 0)


# --------------------------------------------------------------------------- the stage


def train_student(ctx: RunContext) -> dict:
    """Fine-tune the student on this run's dataset; see the module docstring for what it writes."""
    import mlflow
    from transformers import EarlyStoppingCallback, set_seed

    started = time.perf_counter()
    params, cfg = ctx.params, ctx.params.training
    device, quantization = plan_hardware(cfg)
    precision = resolve_precision(cfg.precision, device)
    _check_quality_gate(ctx)
    info = read_json(ctx.require("dataset", "dataset_info.json"))
    dataset_dir = ctx.run_dir / "dataset"

    base_path = resolve_base_model(cfg)
    tokenizer = load_tokenizer(base_path)
    train_rows = to_prompt_completion(_load_split(ctx, "train"), str(dataset_dir / "train.jsonl"))
    val_path = dataset_dir / "val.jsonl"
    val_rows = to_prompt_completion(_load_split(ctx, "val"), str(val_path)) if val_path.exists() else []
    train_rows, dropped_train = _fits(_sample(train_rows, cfg.max_train_examples, params.seed), tokenizer, cfg.max_length)
    val_rows, dropped_val = _fits(val_rows, tokenizer, cfg.max_length)
    val_rows = _sample(val_rows, cfg.max_val_examples, params.seed)
    if dropped_train or dropped_val:
        log.warning("dropped %d train / %d val examples longer than training.max_length=%d tokens",
                    dropped_train, dropped_val, cfg.max_length)
    if not train_rows:
        raise ValueError(f"{dataset_dir / 'train.jsonl'}: no training example fits training.max_length={cfg.max_length}")

    stage_dir = ctx.stage_dir(STAGE)
    ckpt_dir = stage_dir / "checkpoints"
    resume_from, record = _prepare_checkpoints(ckpt_dir, _resume_key(params, info["digest"], base_path))

    set_seed(params.seed)
    model = load_base_for_training(base_path, device, quantization)
    trainer = build_trainer(params, model, tokenizer, train_rows, val_rows, ckpt_dir, device)
    args = trainer.args

    run, continued = _start_mlflow_run(params, ctx, record, resuming=resume_from is not None)
    with run:
        mlflow_run_id = run.info.run_id
        record["mlflow_run_id"] = mlflow_run_id
        write_json(ckpt_dir / RESUME_FILE, record)
        if not continued:
            mlflow.set_tags({
                "fitsense.run_id": ctx.run_id, "fitsense.stage": STAGE,
                "dataset_run_id": info["dataset_run_id"], "dataset_digest": info["digest"],
                "source_run_id": info.get("source_run_id", ""),
            })
            _log_run_inputs(params, info, train_rows, val_rows, dataset_dir, {
                "base_model_path": str(base_path), "device": device, "quantization": quantization,
                "precision": precision,
                "train_examples": len(train_rows), "val_examples": len(val_rows),
            })

        # LoRA B starts at zero, so before training the model computes exactly the base model's loss.
        base_val_loss = record.get("base_val_loss")
        base_eval_s = None
        if val_rows and base_val_loss is None:
            t0 = time.perf_counter()
            base_val_loss = trainer.evaluate()["eval_loss"]
            base_eval_s = round(time.perf_counter() - t0, 2)
            record["base_val_loss"] = base_val_loss
            write_json(ckpt_dir / RESUME_FILE, record)
        if val_rows and cfg.early_stopping_patience > 0:
            trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))

        tokens_before = _tokens_at(resume_from)
        output = trainer.train(resume_from_checkpoint=resume_from)
        state = trainer.state
        evals = [e for e in state.log_history if "eval_loss" in e]
        best_val_loss = state.best_metric if val_rows else None
        if not val_rows:
            final_val_loss = None
        elif args.load_best_model_at_end and best_val_loss is not None:
            final_val_loss = best_val_loss  # the best checkpoint is what gets saved
        elif evals and evals[-1]["step"] == state.global_step:
            final_val_loss = evals[-1]["eval_loss"]
        else:
            final_val_loss = trainer.evaluate()["eval_loss"]
        if val_rows and best_val_loss is None:
            best_val_loss = min([e["eval_loss"] for e in evals] + [final_val_loss])

        adapter_dir = stage_dir / "adapter"
        _save_adapter(trainer, tokenizer, adapter_dir)
        merged_dir = None
        if cfg.merge_adapter:
            merged_dir = merge_adapter(base_path, adapter_dir, stage_dir / "merged")

        train_losses = [e["loss"] for e in state.log_history if "loss" in e]
        runtime = float(output.metrics.get("train_runtime", 0.0))
        resumed_step = int(Path(resume_from).name.split("-")[-1]) if resume_from else 0
        # Periodic evaluations run inside trainer.train(); leave them out of the training throughput.
        eval_in_train_s = sum(e.get("eval_runtime", 0.0) for e in evals if e["step"] > resumed_step)
        train_only_s = max(runtime - eval_in_train_s, 1e-9)
        tokens = int(state.num_input_tokens_seen or 0)
        metrics = {
            "base_val_loss": base_val_loss,
            "final_val_loss": final_val_loss,
            "best_val_loss": best_val_loss,
            "train_loss": train_losses[-1] if train_losses else None,
            "mean_train_loss": float(output.training_loss),
            "steps": state.global_step,
            "train_tokens": tokens,
            "tokens_per_s": round((tokens - tokens_before) / train_only_s, 2),
            "s_per_step": round(train_only_s / max(state.global_step - resumed_step, 1), 2),
            "wall_s": round(time.perf_counter() - started, 2),
            "train_runtime_s": round(runtime, 2),
            "eval_s": round(eval_in_train_s + (base_eval_s or 0.0), 2),
            "base_eval_s": base_eval_s,
            "train_examples": len(train_rows),
            "val_examples": len(val_rows),
            "dropped_too_long": {"train": dropped_train, "val": dropped_val},
            "resumed_from_step": resumed_step if resume_from else None,
            "early_stopped": bool(state.global_step < state.max_steps),
        }
        loss_rows = _loss_rows(state.log_history, base_val_loss)
        student = {
            "base_model": cfg.base_model,
            "base_model_path": str(base_path.resolve()),
            "adapter_dir": str(adapter_dir.resolve()),
            "merged_dir": str(Path(merged_dir).resolve()) if merged_dir else None,
            "mlflow_run_id": mlflow_run_id,
            "dataset_run_id": info["dataset_run_id"],
            "dataset_digest": info["digest"],
            "device": device,
            "quantization": quantization,
            "precision": precision,
        }
        write_json(stage_dir / "metrics.json", metrics)
        _write_loss_csv(stage_dir / "loss.csv", loss_rows)
        write_json(stage_dir / "student.json", student)

        mlflow.log_metrics({k: float(metrics[k]) for k in
                            ("base_val_loss", "final_val_loss", "best_val_loss", "tokens_per_s", "wall_s")
                            if metrics[k] is not None})
        mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")
        for name in ("metrics.json", "student.json", "loss.csv"):
            mlflow.log_artifact(str(stage_dir / name))

    outputs = {"adapter": adapter_dir, "metrics": stage_dir / "metrics.json", "loss": stage_dir / "loss.csv",
               "student": stage_dir / "student.json"}
    if merged_dir:
        outputs["merged"] = merged_dir
    record["completed"] = True  # a later rerun trains afresh; only a killed run resumes
    write_json(ckpt_dir / RESUME_FILE, record)
    write_manifest(ctx, STAGE, outputs, rows={"train": len(train_rows), "val": len(val_rows)},
                   extra={"mlflow_run_id": mlflow_run_id, "dataset_run_id": info["dataset_run_id"]})
    log.info("trained %s steps: val loss %s -> %s (best %s), %.1f tokens/s", state.global_step,
             base_val_loss, final_val_loss, best_val_loss, metrics["tokens_per_s"])
    return {"mlflow_run_id": mlflow_run_id, "steps": state.global_step, "base_val_loss": base_val_loss,
            "final_val_loss": final_val_loss, "best_val_loss": best_val_loss}
