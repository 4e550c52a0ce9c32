"""Training outputs: the adapter, ``loss.csv``, ``metrics.json`` and ``student.json``."""

from __future__ import annotations

import csv
from pathlib import Path

from fitsense.runs import atomic_dir, atomic_open


def loss_rows(log_history: list[dict], base_val_loss: float | None) -> list[dict]:
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


def write_loss_csv(path: Path, rows: list[dict]) -> None:
    with atomic_open(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "train_loss", "val_loss"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def save_adapter(trainer, tokenizer, out_dir: Path) -> None:
    with atomic_dir(out_dir) as tmp:
        trainer.model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))


def training_metrics(state, output, evals: list[dict], resume_from: str | None, tokens_before: int) -> dict:
    """Loss and throughput figures of a finished ``trainer.train()``; evaluation time is left out of the
    throughput (periodic evaluations run inside ``train()``)."""
    runtime = float(output.metrics.get("train_runtime", 0.0))
    resumed_step = int(Path(resume_from).name.split("-")[-1]) if resume_from else 0
    eval_in_train_s = sum(e.get("eval_runtime", 0.0) for e in evals if e["step"] > resumed_step)
    train_only_s = max(runtime - eval_in_train_s, 1e-9)
    tokens = int(state.num_input_tokens_seen or 0)
    train_losses = [e["loss"] for e in state.log_history if "loss" in e]
    return {
        "train_loss": train_losses[-1] if train_losses else None,
        "mean_train_loss": float(output.training_loss),
        "steps": state.global_step,
        "train_tokens": tokens,
        "tokens_per_s": round((tokens - tokens_before) / train_only_s, 2),
        "s_per_step": round(train_only_s / max(state.global_step - resumed_step, 1), 2),
        "train_runtime_s": round(runtime, 2),
        "eval_in_train_s": eval_in_train_s,
        "resumed_from_step": resumed_step if resume_from else None,
        "early_stopped": bool(state.global_step < state.max_steps),
    }
