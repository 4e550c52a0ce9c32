"""The trainer: TRL's SFTTrainer over prompt-completion rows, with the LoRA adapter attached.

TRL renders prompt and completion with the model's chat template and, with
``completion_only_loss``, labels every prompt token -100, so the loss covers
the assistant answer (and its end-of-turn token) only.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from transformers import TrainerCallback

from fitsense.config import Params, TrainingConfig
from fitsense.training.student import resolve_precision

log = logging.getLogger(__name__)


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
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
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


def completion_loss(model, inputs: dict, num_items_in_batch=None):
    """The model's causal-LM loss, with logits computed only where a position has a target.

    The model's own loss function (transformers' ``ForCausalLMLoss``) on the kept positions' targets,
    so the same value, but prompt positions, whose targets are all -100, never reach the LM head: the
    log-softmax over the 49k-token vocabulary and its gradient were ~40% of a CPU step, and most of a
    row's tokens are prompt.
    """
    import torch.nn.functional as F
    from transformers.loss.loss_utils import ForCausalLMLoss

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # position t predicts token t + 1
    keep = (targets != -100).any(dim=0).nonzero().squeeze(1)
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
    return ForCausalLMLoss(logits, None, logits.shape[-1], num_items_in_batch, shift_labels=targets[:, keep])


def _trainer_class(device: str):
    """TRL's ``SFTTrainer``; on the CPU, one whose training loss is the model's own (``completion_loss``).

    TRL computes the loss with a fused, tiled LM head: a Triton kernel on a GPU, but on the CPU a
    loop of fp32 matmuls that took a third of each step. The model's own cross-entropy (with the
    collator's -100 prompt labels, so the same completion-only loss) runs the LM head under bf16
    autocast: 1.2-1.3x faster steps on 2 cores (``benchmarks/bench_training.py``), and
    ``completion_loss`` runs it on the answer positions only. TRL's entropy and token-accuracy logs
    are not computed on that path.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    if device == "cuda":
        return SFTTrainer

    class CpuSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs:  # evaluation keeps the model's whole-sequence outputs
                inputs["use_cache"] = False
                return Trainer.compute_loss(self, model, inputs, return_outputs=True,
                                            num_items_in_batch=num_items_in_batch)
            return completion_loss(model, inputs, num_items_in_batch)

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
