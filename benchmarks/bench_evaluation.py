"""Evaluation generation speed: seconds, tokens/s and latency per answer for base and fine-tuned student.

Runs the evaluation stage's own generation and scoring (``generate_student_answers``,
``build_answer_tables``, ``compute_metrics``) on a run's test split. The run needs
the dataset and teacher stages; when it has no training output, the configured base
model gets a zero-initialised LoRA adapter (same compute as a trained one, answers
equal to the base), so generation cost can be sized before training:

    python benchmarks/bench_evaluation.py --run-id default --examples 8
    python benchmarks/bench_evaluation.py --run-id default --examples 8 --set evaluation.max_new_tokens=200
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


def _zero_adapter(model_dir: Path, out: Path, target_modules) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    get_peft_model(model, LoraConfig(r=16, target_modules=target_modules, task_type="CAUSAL_LM")).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-id", required=True, help="a run with dataset and teacher outputs")
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value params override")
    args = parser.parse_args()

    from fitsense.config import load_params
    from fitsense.evaluation.evaluate import (
        build_answer_tables,
        compute_metrics,
        generate_student_answers,
        select_examples,
    )
    from fitsense.records import DistillRecord, TeacherRecord
    from fitsense.runs import RunContext, read_jsonl
    from fitsense.training.student import resolve_base_model

    overrides = dict(o.split("=", 1) for o in args.overrides)
    overrides["evaluation.max_examples"] = str(args.examples)
    params = load_params(args.params, overrides)
    ctx = RunContext.create(params, args.run_id)
    test = read_jsonl(ctx.require("dataset", "test.jsonl"), DistillRecord)
    teacher = {r.query_id: r for r in read_jsonl(ctx.require("teacher", "records.jsonl"), TeacherRecord)}
    examples = select_examples(test, args.examples, params.seed)

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        student_json = ctx.run_dir / "training" / "student.json"
        if student_json.exists():
            student = json.loads(student_json.read_text())
        else:
            base = resolve_base_model(params.training)
            adapter = _zero_adapter(base, Path(tmp) / "adapter", params.training.lora.target_modules)
            student = {"base_model_path": str(base), "adapter_dir": str(adapter)}
        started = time.perf_counter()
        generations = generate_student_answers(ctx, examples, student)
        wall = time.perf_counter() - started
    tables, _ = build_answer_tables(ctx, examples, generations, teacher)
    metrics = compute_metrics(tables, params.evaluation.disparity_threshold)

    print(f"examples: {len(examples)}, batch {params.evaluation.batch_size}, "
          f"max_new_tokens {params.evaluation.max_new_tokens}, total generation wall {wall:.1f} s (incl. load)")
    for role in ("base", "student"):
        m = metrics["models"][role]
        seconds = sum(g.latency_s for g in generations[role])
        print(f"{role:8s} {seconds:7.1f} s  {m['tokens_per_s'] or 0:7.1f} tok/s  p50 {m['latency_p50_s']:.2f} s/answer  "
              f"{m['completion_tokens_mean']:.0f} tok/answer  validity {m['validity']:.2f}  "
              f"adherence {m['adherence']:.2f}  USD/1k {m['usd_per_1k_answers']:.4f}")


if __name__ == "__main__":
    main()
