"""Loading a synthetic run into SQLite: every table, foreign keys on, constraints enforced."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from fitsense.config import load_params
from fitsense.data.sqlstore import (
    DatabaseLoadError,
    load_run_into_database,
    make_engine,
    schema_tables,
)
from fitsense.data.synthetic import generate_synthetic_data
from fitsense.runs import RunContext, file_sha256


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("sqlstore")
    ctx = RunContext.create(load_params(None, {"run.artifacts_dir": str(root), "synthetic.n_users": 60}))
    generate_synthetic_data(ctx)
    result = load_run_into_database(ctx)
    return ctx, result


def _engine(ctx):
    return make_engine(f"sqlite:///{ctx.stage_dir('database') / 'fitsense.sqlite'}")


def test_every_table_loaded_with_parquet_row_counts(loaded):
    ctx, result = loaded
    folder = ctx.stage_dir("synthetic")
    assert list(result["rows"]) == schema_tables()
    engine = _engine(ctx)
    with engine.connect() as conn:
        for table in schema_tables():
            expected = pq.ParquetFile(folder / f"{table}.parquet").metadata.num_rows
            assert expected > 0, table
            assert result["rows"][table] == expected
            assert conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one() == expected
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
        assert conn.execute(text("PRAGMA foreign_key_check")).fetchall() == []
        # dates are stored as ISO text and joins across the hierarchy work
        assert conn.execute(text("SELECT birth_date FROM profiles WHERE user_id = 1")).scalar_one()[4] == "-"
        n = conn.execute(text(
            "SELECT COUNT(*) FROM workout_sets s JOIN workout_exercises we USING (workout_exercise_id) "
            "JOIN workouts w USING (workout_id) JOIN plan_days d ON d.plan_day_id = w.plan_day_id "
            "JOIN workout_plans p ON p.plan_id = d.plan_id AND p.user_id = w.user_id")).scalar_one()
        assert n == result["rows"]["workout_sets"]
    engine.dispose()


@pytest.mark.parametrize(
    "statement",
    [
        # RIR 9 breaks the plan_sets CHECK (0..5)
        "INSERT INTO plan_sets (plan_set_id, plan_exercise_id, set_number, target_reps, target_rir, rest_s) "
        "VALUES (999999, 1, 9, 10, 9, 60)",
        # orphan foreign key
        "INSERT INTO plan_sets (plan_set_id, plan_exercise_id, set_number, target_reps, target_rir, rest_s) "
        "VALUES (999999, 99999999, 1, 10, 2, 60)",
        "INSERT INTO profiles (user_id, birth_date, sex, height_cm, weight_kg, activity_level, experience, "
        "days_available, session_minutes) VALUES (1, '1990-01-01', 'other', 170, 70, 'light', 'beginner', 3, 45)",
        "INSERT INTO goals (goal_id, user_id, goal, priority) VALUES (999999, 1, 'get_swole', 9)",
        "INSERT INTO workout_sets (workout_set_id, workout_exercise_id, set_number, reps, weight_kg, rir) "
        "VALUES (999999999, 1, 9, 5, -20, 2)",
        "DELETE FROM users WHERE user_id = 1",  # still referenced by profiles, plans, logs
    ],
)
def test_constraint_violations_are_rejected(loaded, statement):
    ctx, _ = loaded
    engine = _engine(ctx)
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            conn.execute(text(statement))
    engine.dispose()


def test_bad_parquet_fails_naming_the_table_and_keeps_the_old_database(loaded, tmp_path):
    ctx, _ = loaded
    folder = ctx.stage_dir("synthetic")
    db = ctx.stage_dir("database") / "fitsense.sqlite"
    before = file_sha256(db)
    sets_path = folder / "plan_sets.parquet"
    original = pq.read_table(sets_path)
    bad = original.set_column(original.schema.get_field_index("target_rir"), "target_rir",
                              pa.array([9] * original.num_rows, type=pa.int64()))
    pq.write_table(bad, sets_path)
    try:
        with pytest.raises(DatabaseLoadError, match="plan_sets"):
            load_run_into_database(ctx)
    finally:
        pq.write_table(original, sets_path)
    assert file_sha256(db) == before  # the failed load never replaced the good database
    assert not list(db.parent.glob(".fitsense.sqlite.*"))
    assert not (folder / "fitsense.sqlite").exists()  # the synthetic outputs are untouched


def test_explicit_url_and_missing_run(loaded, tmp_path):
    ctx, result = loaded
    url = f"sqlite:///{tmp_path / 'other.db'}"
    again = load_run_into_database(ctx, url)
    assert again["rows"] == result["rows"] and again["url"] == url
    assert load_run_into_database(ctx, url)["rows"] == result["rows"]  # reloading replaces, never duplicates
    empty = RunContext.create(load_params(None, {"run.artifacts_dir": str(tmp_path / "empty")}))
    with pytest.raises(FileNotFoundError, match="synthetic"):
        load_run_into_database(empty)


POSTGRES_URL = os.environ.get("FITSENSE_TEST_POSTGRES_URL")  # e.g. postgresql+psycopg://user@/db?host=/tmp/sock


@pytest.mark.skipif(not POSTGRES_URL, reason="set FITSENSE_TEST_POSTGRES_URL to a scratch PostgreSQL database")
def test_postgres_load_and_constraints(loaded):
    ctx, result = loaded
    again = load_run_into_database(ctx, POSTGRES_URL)
    assert again["rows"] == result["rows"]
    engine = make_engine(POSTGRES_URL)
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO plan_sets (plan_set_id, plan_exercise_id, set_number, target_reps, "
                              "target_rir, rest_s) VALUES (999999, 1, 9, 10, 9, 60)"))
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM users WHERE user_id = 1"))
    engine.dispose()
    folder = ctx.stage_dir("synthetic")
    original = pq.read_table(folder / "plan_sets.parquet")
    bad = original.set_column(original.schema.get_field_index("target_rir"), "target_rir",
                              pa.array([9] * original.num_rows, type=pa.int64()))
    pq.write_table(bad, folder / "plan_sets.parquet")
    try:
        with pytest.raises(DatabaseLoadError, match="plan_sets"):
            load_run_into_database(ctx, POSTGRES_URL)
    finally:
        pq.write_table(original, folder / "plan_sets.parquet")
    engine = make_engine(POSTGRES_URL)
    with engine.connect() as conn:  # the failed load rolled back: the earlier load is intact
        assert conn.execute(text("SELECT COUNT(*) FROM plan_sets")).scalar_one() == result["rows"]["plan_sets"]
    engine.dispose()
