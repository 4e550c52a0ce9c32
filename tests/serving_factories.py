"""Factories for serving tests and benchmarks: a registered tiny student and serving params for it."""

from __future__ import annotations

from pathlib import Path

from eval_factories import make_adapter, make_eval_run

from fitsense.config import Params, load_params
from fitsense.runs import RunContext, read_json, write_json

GOOD = {"validity": 0.8, "adherence": 0.6, "referral_recall": 1.0, "teacher_exercise_overlap": 0.3}


def register_tiny_student(tmp_path: Path, model_dir: Path, run_id: str = "serve1",
                          tracking_uri: str | None = None, adapter_seed: int = 0,
                          system_prompt: str | None = None) -> RunContext:
    """A run with a dataset and a tiny LoRA student, registered (and promoted) in an MLflow store;
    ``system_prompt``: the prompt training recorded for it (student.json), if any."""
    from fitsense.registry.register import register_student

    adapter = make_adapter(model_dir, tmp_path / f"adapter-{adapter_seed}", seed=adapter_seed)
    overrides = {"registry.tracking_uri": tracking_uri} if tracking_uri else {}
    ctx = make_eval_run(tmp_path / run_id, model_dir, adapter, run_id=run_id, **overrides)
    write_json(ctx.stage_dir("evaluation") / "metrics.json", {"models": {"student": GOOD}})
    if system_prompt is not None:
        student = read_json(ctx.stage_dir("training") / "student.json")
        write_json(ctx.stage_dir("training") / "student.json", {**student, "system_prompt": system_prompt})
    register_student(ctx)
    return ctx


def serving_params(ctx: RunContext, **overrides) -> Params:
    """Params that serve ``ctx``'s registry: small generations, an inference log in the run, offline fallback."""
    p = ctx.params
    return load_params(None, {
        "run.artifacts_dir": p.run.artifacts_dir,
        "registry.tracking_uri": p.registry.tracking_uri,
        "registry.artifact_location": p.registry.artifact_location,
        "training.device": "cpu",
        "serving.max_new_tokens": 12,
        "serving.max_wait_ms": 40,
        "serving.reload_interval_s": 0,
        "serving.fallback": "offline",
        "serving.fallback_queries": str(ctx.run_dir / "queries" / "queries.jsonl"),
        "serving.log_url": f"sqlite:///{ctx.run_dir / 'inference.sqlite'}",
        **overrides,
    })
