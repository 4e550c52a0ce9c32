"""Training throughput of the student on this machine: tokens/s and seconds per optimizer step.

Runs the real training stage (``train_student``) for a few steps on synthetic
examples of the real shape (~260-token prompts, ~200-450-token JSON answers) in
a temporary folder, with a throw-away MLflow store. Use it to size
``training.max_steps`` / ``batch_size`` / ``max_length`` for a time budget:

    python benchmarks/bench_training.py                      # bundled SmolLM2-135M, 4 steps
    python benchmarks/bench_training.py --steps 8 --set training.batch_size=4
    python benchmarks/bench_training.py --set training.base_model=/path/to/model
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--val", type=int, default=4, help="validation examples (base eval timing)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value params override")
    args = parser.parse_args()

    import torch

    from fitsense.config import load_params
    from fitsense.runs import RunContext
    from fitsense.training.examples import write_dataset_stage
    from fitsense.training.student import resolve_base_model
    from fitsense.training.train import train_student

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
        params = load_params(args.params, overrides)
        cfg = params.training
        t0 = time.perf_counter()
        model_dir = resolve_base_model(cfg)
        resolve_s = time.perf_counter() - t0
        n_train = args.steps * cfg.batch_size * cfg.grad_accum
        ctx = RunContext.create(params, "bench")
        write_dataset_stage(ctx.stage_dir("dataset"), n_train=n_train, n_val=args.val, seed=params.seed)
        train_student(ctx)
        m = json.loads((ctx.stage_dir("training") / "metrics.json").read_text())

    steps = max(m["steps"], 1)
    # tokens_per_s and s_per_step exclude evaluation time; eval is timed separately (base eval).
    print(json.dumps({
        "base_model": cfg.base_model, "model_dir": str(model_dir), "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(), "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
        "max_length": cfg.max_length, "lora_r": cfg.lora.r, "steps": m["steps"],
        "resolve_model_s": round(resolve_s, 2),
        "train_tokens": m["train_tokens"], "tokens_per_s": m["tokens_per_s"],
        "s_per_step": m["s_per_step"],
        "tokens_per_step": round(m["train_tokens"] / steps, 1),
        "base_eval_s_per_example": round(m["base_eval_s"] / m["val_examples"], 2) if m.get("base_eval_s") else None,
        "stage_wall_s": m["wall_s"],
    }, indent=2))


if __name__ == "__main__":
    main()
