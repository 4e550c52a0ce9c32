"""The real chain (synthetic -> queries -> offline teacher -> dataset -> quality) passes the gate;
the schema-derived synthetic suites catch corrupted tables, naming the rows."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from dq_factories import REAL_CHAIN, build_real_chain, make_ctx

from fitsense.data.quality.stage import DataQualityError, run_data_quality



@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality_real")
    ctx, dataset = build_real_chain(root, "real")
    return root, ctx, dataset, run_data_quality(ctx)


def test_real_upstream_passes_schema_suites(real_run):
    import json

    _, ctx, dataset, summary = real_run
    assert summary["passed"] and summary["dataset_run_id"] == dataset["dataset_run_id"]
    assert sum(dataset["rows"].values()) + sum(dataset["dropped"].values()) == 90
    validation = json.loads((ctx.stage_dir("quality") / "validation.json").read_text())
    suites = {s["suite"]: s for s in validation["suites"]}
    for table in ("users", "profiles", "workouts", "workout_sets", "daily_logs"):
        assert suites[f"synthetic.{table}"]["evaluated"] > 3 and not suites[f"synthetic.{table}"]["failed"]


def test_corrupt_synthetic_tables_fail_naming_rows(real_run):
    root, ctx, _, _ = real_run
    shutil.copytree(ctx.run_dir, root / "artifacts" / "bad", ignore=shutil.ignore_patterns("quality"))
    bad = make_ctx(root, run_id="bad", **REAL_CHAIN)
    synth = bad.stage_dir("synthetic")

    profiles = pd.read_parquet(synth / "profiles.parquet")
    tall_user = int(profiles.loc[3, "user_id"])
    profiles.loc[3, "height_cm"] = 420.0  # out of the schema's CHECK range
    profiles.to_parquet(synth / "profiles.parquet", index=False)
    workouts = pd.read_parquet(synth / "workouts.parquet")
    orphan = int(workouts.loc[0, "workout_id"])
    workouts.loc[0, "user_id"] = 99_999  # no such user: a broken foreign key
    workouts.to_parquet(synth / "workouts.parquet", index=False)

    with pytest.raises(DataQualityError) as err:
        run_data_quality(bad)
    msg = str(err.value)
    assert "suite synthetic.profiles" in msg and "height_cm" in msg and f"user_id={tall_user}" in msg
    assert "suite synthetic.workouts" in msg and "references users.user_id" in msg
    assert f"workout_id={orphan}" in msg
