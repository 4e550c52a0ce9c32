"""Same seed and params, same bytes: every data artifact is reproducible.

Run reports (``manifest.json`` with its timings, the teacher's ``summary.json``
with wall time and latency percentiles) are the only files allowed to differ.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fitsense.app.pipeline import run_pipeline
from fitsense.config import load_params
from fitsense.runs import RunContext

RUN_REPORTS = {"manifest.json", "summary.json"}


def _run(root: Path, seed: int = 42) -> dict[str, str]:
    params = load_params(None, {"seed": seed, "synthetic.n_users": 60, "queries.n_queries": 80,
                                "run.artifacts_dir": str(root), "teacher.cache_dir": str(root / "cache")})
    ctx = RunContext.create(params, "det")
    run_pipeline(ctx, stop="dataset")
    return {str(p.relative_to(ctx.run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(ctx.run_dir.rglob("*")) if p.is_file() and p.name not in RUN_REPORTS}


def test_data_stages_are_byte_identical_for_the_same_seed_and_params(tmp_path):
    first, second = _run(tmp_path / "a"), _run(tmp_path / "b")
    assert {"synthetic/users.parquet", "queries/queries.jsonl", "teacher/records.jsonl",
            "dataset/train.jsonl", "dataset/dataset_info.json"} <= set(first)
    assert first == second


def test_another_seed_gives_other_data(tmp_path):
    assert _run(tmp_path / "a")["synthetic/users.parquet"] != _run(tmp_path / "b", seed=7)["synthetic/users.parquet"]
