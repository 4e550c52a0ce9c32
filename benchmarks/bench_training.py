"""Training throughput of the student on this machine: tokens/s and seconds per optimizer step.

Runs the real training stage (``train_student``) for a few steps on synthetic
examples of the real shape (~260-token prompts, ~200-450-token JSON answers) in
a temporary folder, with a throw-away MLflow store. Use it to size
``training.max_steps`` / ``batch_size`` / ``max_length`` for a time budget:

    python benchmarks/bench_training.py                      # bundled SmolLM2-135M, 4 steps
    python benchmarks/bench_training.py --steps 8 --set training.batch_size=4
    python benchmarks/bench_training.py --set training.base_model=/path/to/model
    python benchmarks/bench_training.py --compare            # each CPU speed-up in turn, ratios in one run
    python benchmarks/bench_training.py --loss whole answers whole answers   # logits everywhere vs answers only

``--compare`` runs, one after the other in the same process, the stop-8 CPU
set-up (fp32, LoRA dropout 0.05, LoRA in all layers, TRL's fused LM-head loss)
and then adds one change at a time up to the current defaults, printing
tokens/s and the ratio to the first row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the training factories

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# (label, params overrides, loss: "trl" (TRL's fused LM-head loss), "whole" (the model's own loss, logits at
# every position) or "answers" (completion_loss: logits at answer positions only, the default))
COMPARE = [
    ("stop-8 set-up: fp32, dropout 0.05, all layers, TRL loss",
     {"training.precision": "fp32", "training.lora.dropout": "0.05", "training.lora.top_layers": "null"}, "trl"),
    ("+ bf16 autocast", {"training.precision": "bf16", "training.lora.dropout": "0.05",
                         "training.lora.top_layers": "null"}, "trl"),
    ("+ the model's own loss", {"training.precision": "bf16", "training.lora.dropout": "0.05",
                                "training.lora.top_layers": "null"}, "whole"),
    ("+ LoRA dropout 0", {"training.precision": "bf16", "training.lora.dropout": "0",
                          "training.lora.top_layers": "null"}, "whole"),
    ("+ LoRA in the top 15 layers", {"training.precision": "bf16", "training.lora.dropout": "0",
                                     "training.lora.top_layers": "15"}, "whole"),
    ("+ logits at answer positions only", {"training.precision": "bf16", "training.lora.dropout": "0",
                                           "training.lora.top_layers": "15"}, "answers"),
]


def _whole_sequence_loss(model, inputs, num_items_in_batch=None):
    return model(**inputs, use_cache=False, num_items_in_batch=num_items_in_batch).loss


def run_once(args, extra: dict, loss: str = "answers") -> dict:
    import torch
    from training_factories import (
        write_dataset_stage,  # tests/: a synthetic dataset of the real shape
    )

    from fitsense.config import load_params
    from fitsense.runs import RunContext
    from fitsense.training import train, trainer
    from fitsense.training.student import resolve_base_model

    original_class, original_loss = trainer._trainer_class, trainer.completion_loss
    if loss == "trl":
        from trl import SFTTrainer

        trainer._trainer_class = lambda device: SFTTrainer
    elif loss == "whole":
        trainer.completion_loss = _whole_sequence_loss
    try:
        with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
            tmp = Path(tmp)
            overrides = {
                "run.artifacts_dir": str(tmp / "artifacts"),
                "registry.tracking_uri": f"sqlite:///{tmp / 'mlruns.db'}",
                "registry.artifact_location": str(tmp / "mlartifacts"),
                "training.max_steps": str(args.steps),
                "training.eval_steps": str(args.steps),
                "training.max_val_examples": str(args.val),
                "training.early_stopping_patience": "0",
            }
            overrides.update(dict(o.split("=", 1) for o in args.overrides))
            overrides.update(extra)
            params = load_params(args.params, overrides)
            cfg = params.training
            t0 = time.perf_counter()
            model_dir = resolve_base_model(cfg)
            resolve_s = time.perf_counter() - t0
            n_train = args.steps * cfg.batch_size * cfg.grad_accum
            ctx = RunContext.create(params, "bench")
            write_dataset_stage(ctx.stage_dir("dataset"), n_train=n_train, n_val=args.val, seed=params.seed)
            train.train_student(ctx)
            m = json.loads((ctx.stage_dir("training") / "metrics.json").read_text())
            student = json.loads((ctx.stage_dir("training") / "student.json").read_text())
    finally:
        trainer._trainer_class, trainer.completion_loss = original_class, original_loss

    steps = max(m["steps"], 1)
    # tokens_per_s and s_per_step exclude evaluation time; eval is timed separately (base eval).
    return {
        "base_model": cfg.base_model, "model_dir": str(model_dir), "device": student["device"],
        "precision": student["precision"], "torch_threads": torch.get_num_threads(), "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum, "max_length": cfg.max_length, "lora_r": cfg.lora.r,
        "lora_top_layers": cfg.lora.top_layers, "lora_dropout": cfg.lora.dropout, "steps": m["steps"],
        "resolve_model_s": round(resolve_s, 2),
        "train_tokens": m["train_tokens"], "tokens_per_s": m["tokens_per_s"],
        "s_per_step": m["s_per_step"],
        "tokens_per_step": round(m["train_tokens"] / steps, 1),
        "base_eval_s_per_example": round(m["base_eval_s"] / m["val_examples"], 2) if m.get("base_eval_s") else None,
        "stage_wall_s": m["wall_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--val", type=int, default=4, help="validation examples (base eval timing)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value params override")
    parser.add_argument("--compare", action="store_true", help="the stop-8 CPU set-up, then each speed-up in turn")
    parser.add_argument("--loss", nargs="+", choices=["answers", "whole", "trl"],
                        help="run once per loss path, in this order (e.g. whole answers whole answers)")
    args = parser.parse_args()

    if not args.compare and not args.loss:
        print(json.dumps(run_once(args, {}), indent=2))
        return
    plan = COMPARE if args.compare else [(f"loss: {name}", {}, name) for name in args.loss]
    rows = []
    for label, extra, loss in plan:
        result = run_once(args, extra, loss)
        rows.append((label, result))
        print(f"{label}: {result['tokens_per_s']} tokens/s, {result['s_per_step']} s/step", flush=True)
    first = rows[0][1]["tokens_per_s"]
    print(f"\n{'set-up':58} {'tokens/s':>9} {'s/step':>7} {'ratio':>6}")
    for label, r in rows:
        print(f"{label:58} {r['tokens_per_s']:>9} {r['s_per_step']:>7} {r['tokens_per_s'] / first:>5.2f}x")


if __name__ == "__main__":
    main()
