"""Synthetic data: deterministic bytes, schema-exact tables, realistic joint distributions, valid plans, chunks
that continue ids and keys."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fitsense.catalogue import BY_NAME, EQUIPMENT
from fitsense.config import load_params
from fitsense.constraints import check_answer
from fitsense.data import synthetic
from fitsense.data.queries import _World, age_band, constraints_for
from fitsense.data.sqlstore import load_run_into_database, schema_statements, schema_tables
from fitsense.data.synthetic import generate_synthetic_data, generate_tables
from fitsense.plan import CoachAnswer
from fitsense.records import QueryConstraints
from fitsense.runs import RunContext, file_sha256

N_USERS = 500


def _run(root, seed=7, n_users=N_USERS, **synthetic) -> RunContext:
    overrides = {"run.artifacts_dir": str(root), "seed": seed, "synthetic.n_users": n_users}
    overrides.update({f"synthetic.{k}": v for k, v in synthetic.items()})
    ctx = RunContext.create(load_params(None, overrides))
    generate_synthetic_data(ctx)
    return ctx


def _hashes(ctx: RunContext) -> dict[str, str]:
    folder = ctx.stage_dir("synthetic")
    return {p.name: file_sha256(p) for p in sorted(folder.glob("*.parquet"))}


@pytest.fixture(scope="module")
def run_ctx(tmp_path_factory) -> RunContext:
    return _run(tmp_path_factory.mktemp("synthetic-a"))


@pytest.fixture(scope="module")
def world() -> dict[str, pd.DataFrame]:
    """A larger in-memory world (no files) for distribution checks."""
    tables = generate_tables(11, 4000, np.datetime64("2026-01-05"), 6)
    return {name: t.to_pandas() for name, t in tables.items()}


def test_same_seed_same_bytes_other_seed_differs(run_ctx, tmp_path):
    first = _hashes(run_ctx)
    assert set(first) == {f"{t}.parquet" for t in schema_tables()}
    assert first == _hashes(_run(tmp_path / "again"))
    other = _hashes(_run(tmp_path / "other", seed=8))
    assert other["profiles.parquet"] != first["profiles.parquet"]
    assert other["workout_sets.parquet"] != first["workout_sets.parquet"]
    assert other["exercises.parquet"] == first["exercises.parquet"]  # the catalogue does not depend on the seed


def test_manifest_counts_rows_per_table(run_ctx):
    manifest = run_ctx.manifest("synthetic")
    folder = run_ctx.stage_dir("synthetic")
    for table in schema_tables():
        assert manifest["rows"][table] == pq.ParquetFile(folder / f"{table}.parquet").metadata.num_rows
    assert manifest["rows"]["users"] == N_USERS


def test_tables_have_exactly_the_sql_columns(run_ctx):
    db = sqlite3.connect(":memory:")
    for statement in schema_statements():
        db.execute(statement)
    folder = run_ctx.stage_dir("synthetic")
    for table in schema_tables():
        sql_cols = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
        assert pq.read_schema(folder / f"{table}.parquet").names == sql_cols, table
        assert pq.read_metadata(folder / f"{table}.parquet").metadata is None or \
            b"pandas" not in pq.read_metadata(folder / f"{table}.parquet").metadata


def _users(world) -> pd.DataFrame:
    prof = world["profiles"].copy()
    anchor = pd.Timestamp("2026-01-05")
    prof["age"] = ((anchor - pd.to_datetime(prof["birth_date"])).dt.days / 365.25).astype(int)
    prof["band"] = prof["age"].map(age_band)
    prof["bmi"] = prof["weight_kg"] / (prof["height_cm"] / 100) ** 2
    prof["n_cond"] = prof["user_id"].map(world["medical_conditions"].groupby("user_id").size()).fillna(0)
    prof["n_inj"] = prof["user_id"].map(world["injuries"].groupby("user_id").size()).fillna(0)
    primary = world["goals"][world["goals"].priority == 1].set_index("user_id")["goal"]
    prof["goal"] = prof["user_id"].map(primary)
    eq = world["user_equipment"].groupby("user_id").size()
    prof["n_equipment"] = prof["user_id"].map(eq)
    return prof


def test_conditions_and_injuries_rise_with_age(world):
    users = _users(world)
    cond_rate = users.groupby("band")["n_cond"].apply(lambda s: (s > 0).mean())
    assert cond_rate["18-29"] < cond_rate["30-44"] < cond_rate["45-59"] < cond_rate["60+"]
    cond = world["medical_conditions"].merge(users[["user_id", "age", "band"]], on="user_id")
    for age_related in ("hypertension", "osteoarthritis", "type2_diabetes"):
        by_band = cond[cond.condition == age_related].groupby("band").size() / users.groupby("band").size()
        assert by_band.get("60+", 0) > 2 * by_band.get("18-29", 0), age_related
    inj_rate = users.groupby("band")["n_inj"].apply(lambda s: (s > 0).mean())
    assert inj_rate["60+"] > inj_rate["18-29"]


def test_pregnancy_only_for_women_of_childbearing_age(world):
    users = _users(world)
    pregnant = world["medical_conditions"].query("condition == 'pregnancy'").merge(users, on="user_id")
    assert len(pregnant) > 0
    assert (pregnant["sex"] == "female").all()
    assert pregnant["age"].between(18, 45).all()


def test_bmi_experience_and_equipment_follow_activity(world):
    users = _users(world)
    bmi = users.groupby("activity_level")["bmi"].mean()
    assert bmi["sedentary"] > bmi["moderate"] > bmi["very_active"]
    advanced = users.groupby("activity_level")["experience"].apply(lambda s: (s == "advanced").mean())
    assert advanced["very_active"] > 3 * advanced["sedentary"]
    gym = users.groupby("experience")["n_equipment"].apply(lambda s: (s == len(world["equipment"])).mean())
    assert gym["advanced"] > gym["intermediate"] > gym["beginner"]
    fat_loss = users.groupby(users["bmi"] >= 30)["goal"].apply(lambda s: (s == "fat_loss").mean())
    assert fat_loss[True] > fat_loss[False] + 0.15


def test_daily_logs_track_the_goal(world):
    users = _users(world)
    logs = world["daily_logs"].copy()
    logs["day"] = (pd.to_datetime(logs["log_date"]) - pd.to_datetime(logs["log_date"]).min()).dt.days
    slope = logs.groupby("user_id")[["day", "body_weight_kg"]].apply(
        lambda g: np.polyfit(g["day"], g["body_weight_kg"], 1)[0] * 7 if len(g) > 5 else np.nan)
    users["kg_per_week"] = users["user_id"].map(slope)
    by_goal = users.groupby("goal")["kg_per_week"].mean()
    assert by_goal["fat_loss"] < -0.15 and by_goal["muscle_gain"] > 0.05
    # calories per kg are lower when losing weight (energy deficit)
    kcal = logs.groupby("user_id")["calories"].mean() / users.set_index("user_id")["weight_kg"]
    users["kcal_per_kg"] = users["user_id"].map(kcal)
    assert users.groupby("goal")["kcal_per_kg"].mean()["fat_loss"] < users.groupby("goal")["kcal_per_kg"].mean()["muscle_gain"]
    assert logs["sleep_hours"].between(3, 11).all()


def test_logged_performance_progresses_stalls_or_regresses(world):
    sets = world["workout_sets"].merge(world["workout_exercises"], on="workout_exercise_id")
    sets = sets.merge(world["workouts"], on="workout_id")
    sets["week"] = (pd.to_datetime(sets["performed_on"]) - pd.Timestamp("2026-01-05")).dt.days // 7
    top = sets.groupby(["user_id", "exercise_id", "week"])["reps"].max().reset_index()
    # least-squares slope of top reps over weeks, per user and exercise (vectorised)
    g = top.assign(wr=top.week * top.reps, ww=top.week ** 2).groupby(["user_id", "exercise_id"])
    s = g.agg(n=("week", "size"), w=("week", "sum"), r=("reps", "sum"), wr=("wr", "sum"), ww=("ww", "sum"))
    s = s[s.n >= 4]
    slopes = (s.n * s.wr - s.w * s.r) / (s.n * s.ww - s.w ** 2)
    assert (slopes > 0.4).mean() > 0.25  # progressing
    assert (slopes.abs() < 0.25).mean() > 0.15  # stalled
    assert (slopes < -0.25).mean() > 0.03  # regressing
    # reps rise at a steady RIR: logged RIR stays near the plan's target
    assert sets["rir"].between(0, 6).all()
    dates = pd.to_datetime(world["workouts"]["performed_on"])
    assert dates.max() < pd.Timestamp("2026-01-05") and dates.min() >= pd.Timestamp("2025-11-24")


def test_every_current_plan_is_valid_for_its_user(run_ctx):
    w = _World(run_ctx)
    users = [int(u) for u in w.user_ids()]
    w.load_users(users)
    plans = w.current_plans(users)
    assert sorted(plans) == users
    for user in users:
        answer = CoachAnswer.model_validate(plans[user])
        b = w.base(user)
        constraints = QueryConstraints(**constraints_for(b["profile"]["experience"], b["conditions"], b["injuries"],
                                                         b["equipment"], b["days"], b["minutes"]))
        assert check_answer(answer, constraints) == [], (user, answer.to_json())
        assert all(ex.name in BY_NAME for d in answer.days for ex in d.exercises)


def test_plans_never_use_avoided_exercises_at_scale(world):
    """At 4000 users every injury/condition mix occurs; no plan may contain a contraindicated exercise."""
    pe = world["plan_exercises"].merge(world["plan_days"], on="plan_day_id")
    pe = pe.merge(world["exercise_contraindications"], on="exercise_id")
    live = world["injuries"].query("status != 'resolved'")[["user_id", "site"]].rename(columns={"site": "tag"})
    hits = pe.rename(columns={"plan_id": "user_id"}).merge(live, on=["user_id", "tag"])
    assert hits.empty


ID_COLUMNS = {"users": "user_id", "goals": "goal_id", "medical_conditions": "condition_id", "injuries": "injury_id",
              "medications": "medication_id", "workout_plans": "plan_id", "plan_days": "plan_day_id",
              "plan_exercises": "plan_exercise_id", "plan_sets": "plan_set_id", "workouts": "workout_id",
              "workout_exercises": "workout_exercise_id", "workout_sets": "workout_set_id"}
ANCHOR = np.datetime64("2026-01-05")


@pytest.fixture()
def small_chunks(monkeypatch):
    monkeypatch.setattr(synthetic, "CHUNK_USERS", 50)


def test_chunks_continue_ids_and_keep_keys_valid(small_chunks, tmp_path):
    ctx = _run(tmp_path / "a", n_users=130)
    folder = ctx.stage_dir("synthetic")
    tables = {t: pq.read_table(folder / f"{t}.parquet") for t in schema_tables()}
    for table, column in ID_COLUMNS.items():  # surrogate ids run on from one chunk to the next
        ids = tables[table][column].to_numpy()
        assert (ids == np.arange(1, len(ids) + 1)).all(), table
    assert tables["users"].num_rows == 130
    assert pq.ParquetFile(folder / "users.parquet").metadata.num_row_groups == 3  # one per chunk
    assert tables["equipment"].num_rows == len(EQUIPMENT) and tables["exercises"].num_rows == len(BY_NAME)
    # every key resolves (SQLite with foreign keys on), and each workout is a day of its own user's plan
    load_run_into_database(ctx)
    plans, days, w = (tables[t].to_pandas() for t in ("workout_plans", "plan_days", "workouts"))
    owner = w.merge(days, on="plan_day_id").merge(plans, on="plan_id", suffixes=("", "_plan"))
    assert len(owner) == len(w) and (owner["user_id"] == owner["user_id_plan"]).all()
    # each later chunk draws from its own stream, and a run is still a function of its params
    prof = tables["profiles"].to_pandas()
    assert not np.array_equal(prof["height_cm"][:30], prof["height_cm"][50:80])
    assert _hashes(ctx) == _hashes(_run(tmp_path / "b", n_users=130))
    manifest = ctx.manifest("synthetic")
    assert manifest["rows"] == {t: tables[t].num_rows for t in manifest["rows"]}


def test_first_chunk_is_the_one_shot_run(small_chunks):
    one_shot = generate_tables(5, 50, ANCHOR, 4)
    chunked = generate_tables(5, 51, ANCHOR, 4)  # a second chunk of one user
    for name, table in one_shot.items():
        assert chunked[name].slice(0, table.num_rows).equals(table), name
    assert chunked["users"].num_rows == 51
    assert chunked["workout_plans"]["plan_id"].to_pylist()[-1] == 51


def test_a_failed_chunk_leaves_no_table_file(small_chunks, tmp_path, monkeypatch):
    draw = synthetic._chunk_tables

    def fail_on_third_chunk(rng, n, before, *args, **kwargs):
        if before.get("users", 0) >= 100:
            raise RuntimeError("killed")
        return draw(rng, n, before, *args, **kwargs)

    monkeypatch.setattr(synthetic, "_chunk_tables", fail_on_third_chunk)
    with pytest.raises(RuntimeError, match="killed"):
        _run(tmp_path, n_users=130)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and "synthetic" in p.parts]
