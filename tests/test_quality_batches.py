"""Big synthetic tables are validated a batch at a time: the same gate, statistics and drift as the
whole-table path, and a corrupt row anywhere in a big table is still reported, named by its id."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from dq_factories import REAL_CHAIN, build_real_chain, make_ctx

from fitsense.data.quality import parquet
from fitsense.data.quality.stage import DataQualityError, run_data_quality

SMALL_BATCH = 700  # workout_sets (~7k rows) in ~10 batches, daily_logs in 2, the small tables whole


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality_batches")
    ctx, _ = build_real_chain(root, "whole")
    run_data_quality(ctx)
    return root, ctx


def _copy(root, ctx, run_id: str, **overrides):
    shutil.copytree(ctx.run_dir, root / "artifacts" / run_id, ignore=shutil.ignore_patterns("quality"))
    return make_ctx(root, run_id=run_id, **REAL_CHAIN, **overrides)


def _read(ctx, name: str) -> dict:
    return json.loads((ctx.stage_dir("quality") / name).read_text())


def _suites(validation: dict) -> dict:
    return {s["suite"]: {k: v for k, v in s.items() if k != "batches"} for s in validation["suites"]}


def test_batched_path_gives_the_whole_table_results(real_run, monkeypatch):
    root, whole = real_run
    monkeypatch.setattr(parquet, "BATCH_ROWS", SMALL_BATCH)
    batched = _copy(root, whole, "batched", **{"quality.drift_reference": "whole"})
    run_data_quality(batched)

    assert _read(batched, "gate.json") == _read(whole, "gate.json")
    validation = _read(batched, "validation.json")
    batches = {s["suite"]: s.get("batches") for s in validation["suites"]}
    assert batches["synthetic.workout_sets"] >= 5 and batches["synthetic.users"] is None
    assert _suites(validation) == _suites(_read(whole, "validation.json"))

    stats, ref = _read(batched, "stats.json")["artifacts"], _read(whole, "stats.json")["artifacts"]
    assert stats.keys() == ref.keys()
    for artifact in ("synthetic.workout_sets", "synthetic.daily_logs", "synthetic.workout_exercises"):
        for col, expected in ref[artifact]["columns"].items():
            got = stats[artifact]["columns"][col]
            assert got.keys() == expected.keys(), (artifact, col)
            for key, value in expected.items():
                if isinstance(value, dict) and key != "histogram":
                    assert got[key] == pytest.approx(value, rel=1e-12, nan_ok=True), (artifact, col, key)
                else:
                    assert got[key] == value, (artifact, col, key)
    drift = _read(batched, "drift.json")
    synthetic = [c for c in drift["columns"] if c["artifact"].startswith("synthetic.workout_sets")]
    assert synthetic and drift["max_psi"] < 1e-6 and all(c["psi"] == 0 for c in synthetic)


def test_corrupt_rows_in_a_big_table_are_reported_as_in_the_whole_table(real_run, monkeypatch):
    root, whole = real_run
    sets_path = whole.stage_dir("synthetic") / "workout_sets.parquet"
    sets = pd.read_parquet(sets_path)
    late, middle, far = len(sets) - 3, len(sets) // 2, len(sets) - SMALL_BATCH // 2
    sets.loc[late, "reps"] = 500  # out of the schema's CHECK range, in the last batch
    sets.loc[middle, "workout_exercise_id"] = 10**9  # a broken foreign key
    sets.loc[far, "workout_set_id"] = int(sets.loc[1, "workout_set_id"])  # a primary key repeated batches apart
    gates = {}
    for run_id, batch_rows in (("bad-whole", parquet.BATCH_ROWS), ("bad-batched", SMALL_BATCH)):
        monkeypatch.setattr(parquet, "BATCH_ROWS", batch_rows)
        ctx = _copy(root, whole, run_id)
        sets.to_parquet(ctx.stage_dir("synthetic") / "workout_sets.parquet", index=False)
        with pytest.raises(DataQualityError):
            run_data_quality(ctx)
        gates[run_id] = _read(ctx, "gate.json")
    assert gates["bad-batched"] == gates["bad-whole"]
    msg = "\n".join(gates["bad-batched"]["failures"])
    assert "suite synthetic.workout_sets" in msg
    assert "column=reps" in msg and f"workout_set_id={int(sets.loc[late, 'workout_set_id'])}" in msg
    assert "references workout_exercises.workout_exercise_id" in msg
    assert f"workout_set_id={int(sets.loc[middle, 'workout_set_id'])}" in msg
    assert "expect_column_values_to_be_unique(column=workout_set_id)" in msg and "2 unexpected" in msg
