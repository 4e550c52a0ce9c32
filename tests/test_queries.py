"""Coaching queries: constraints follow the profile, every kind present, safety referrals, slices, prompts."""

from __future__ import annotations

import re
import statistics
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fitsense.catalogue import (
    BY_NAME,
    CONDITIONS,
    EQUIPMENT,
    exercises_to_avoid,
    usable_exercises,
)
from fitsense.config import load_params
from fitsense.data import phrasings
from fitsense.data.prompts import SYSTEM_PROMPT, compact_plan, render_request, with_typo
from fitsense.data.queries import (
    BENIGN_SYMPTOMS,
    HOME_ONLY,
    RED_FLAG_SYMPTOMS,
    build_queries,
    kind_counts,
)
from fitsense.data.synthetic import generate_synthetic_data
from fitsense.plan import CoachAnswer
from fitsense.records import QUERY_KINDS, SLICE_TAGS, CoachingQuery
from fitsense.runs import RunContext, file_sha256, read_jsonl

EXPERIENCE_FLOOR = {"beginner": 2, "intermediate": 1, "advanced": 0}


def _ctx(root, seed=5, n_queries=300) -> RunContext:
    overrides = {"run.artifacts_dir": str(root), "seed": seed, "synthetic.n_users": 150,
                 "queries.n_queries": n_queries}
    return RunContext.create(load_params(None, overrides))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    ctx = _ctx(tmp_path_factory.mktemp("queries"))
    generate_synthetic_data(ctx)
    build_queries(ctx)
    queries = read_jsonl(ctx.require("queries", "queries.jsonl"), CoachingQuery)
    return ctx, queries


@pytest.fixture(scope="module")
def facts(run) -> dict[int, dict]:
    """Per user, the facts read straight from the Parquet tables (independently of the query code)."""
    ctx, _ = run
    folder = ctx.stage_dir("synthetic")
    read = lambda t: pq.read_table(folder / f"{t}.parquet").to_pandas()  # noqa: E731
    profiles = read("profiles").set_index("user_id")
    eq = read("user_equipment").merge(read("equipment"), on="equipment_id")
    injuries = read("injuries").query("status != 'resolved'")
    conditions = read("medical_conditions")
    goals = read("goals").query("priority == 1").set_index("user_id")["goal"]
    out = {}
    for user, prof in profiles.iterrows():
        out[user] = {
            "experience": prof["experience"],
            "days": int(prof["days_available"]),
            "minutes": int(prof["session_minutes"]),
            "equipment": sorted(eq.loc[eq.user_id == user, "name"], key=EQUIPMENT.index),
            "conditions": set(conditions.loc[conditions.user_id == user, "condition"]),
            "live_sites": set(injuries.loc[injuries.user_id == user, "site"]),
            "goal": goals[user],
        }
    return out


def test_kinds_ids_and_manifest(run):
    ctx, queries = run
    assert [q.query_id for q in queries] == [f"q{i:06d}" for i in range(1, len(queries) + 1)]
    counts = Counter(q.kind for q in queries)
    assert set(counts) == set(QUERY_KINDS)
    assert counts == kind_counts(300, ctx.params.queries.kind_mix)
    manifest = ctx.manifest("queries")
    assert manifest["rows"] == {"queries": 300, **counts}


def test_kind_counts_follow_the_mix():
    assert kind_counts(10, {"plan_creation": 1, "safety_adjustment": 1}) == {"plan_creation": 5, "safety_adjustment": 5}
    counts = kind_counts(7, {"plan_creation": 0.3, "plan_modification": 0.25, "safety_adjustment": 0.2,
                             "progress_adaptation": 0.25})
    assert sum(counts.values()) == 7 and min(counts.values()) >= 1


def test_constraints_match_the_profile(run, facts):
    _, queries = run
    for q in queries:
        f, c, ctx = facts[q.user_id], q.constraints, q.context
        # context carries the stored facts (plus any new injury / condition of a safety query)
        assert f["conditions"] <= set(ctx.conditions)
        assert f["live_sites"] <= {i.site for i in ctx.injuries}
        sites = [i.site for i in ctx.injuries]
        assert set(exercises_to_avoid(sites, ctx.conditions)) <= set(c.avoid_exercises)
        floors = [EXPERIENCE_FLOOR[f["experience"]]] + [CONDITIONS[x]["rir_floor"] for x in ctx.conditions]
        assert c.rir_floor == max(floors)
        assert usable_exercises(c.available_equipment, c.avoid_exercises), q.query_id  # satisfiable
        assert ctx.primary_goal == f["goal"] == ctx.goals[0]
        modification = ctx.modification or ""
        if "home" in modification or "bodyweight only" in modification:
            assert set(c.available_equipment) < set(f["equipment"])
            assert set(c.available_equipment) <= set(HOME_ONLY)
        else:
            assert c.available_equipment == f["equipment"]
        if "days a week" in modification:
            assert c.days_per_week != f["days"] and f"{c.days_per_week} days a week" in modification
        else:
            assert c.days_per_week == f["days"]
        if "minutes" in modification:
            assert c.session_minutes < f["minutes"]
        else:
            assert c.session_minutes == f["minutes"]
        if "swap" in modification:
            swapped = modification.split("I don't like ")[1].split(";")[0]
            assert swapped in c.avoid_exercises


def test_current_plans_and_trends_in_context(run):
    _, queries = run
    for q in queries:
        if q.kind in ("plan_modification", "progress_adaptation"):
            CoachAnswer.model_validate(q.context.current_plan)
        else:
            assert q.context.current_plan is None
        if q.kind == "progress_adaptation":
            assert 1 <= len(q.context.recent_trends) <= 3
            for t in q.context.recent_trends:
                assert len(t.weekly_top_reps) == len(t.weekly_avg_rir) >= 2
                assert t.name in BY_NAME
        if q.kind == "plan_modification":
            assert q.context.modification


def test_red_flags_require_referral_and_nothing_else_does(run):
    _, queries = run
    safety = [q for q in queries if q.kind == "safety_adjustment"]
    red = [q for q in safety if q.context.new_symptom and q.context.new_symptom.red_flag]
    assert 0 < len(red) < len(safety)
    assert any(q.context.new_injury for q in safety) and any(q.context.new_condition for q in safety)
    assert any(q.context.new_symptom and not q.context.new_symptom.red_flag for q in safety)
    for q in queries:
        symptom = q.context.new_symptom
        is_red = bool(symptom and symptom.red_flag)
        assert q.constraints.referral_required == is_red, q.query_id
        if symptom:
            assert symptom.text in (RED_FLAG_SYMPTOMS if is_red else BENIGN_SYMPTOMS)
            family = q.phrasing.intent
            assert family.startswith("red_flag." if is_red else "benign.")
            assert phrasings.INTENTS[family].canonical == symptom.text  # the wording paraphrases this symptom
        if q.context.new_injury:
            assert q.context.new_injury in q.context.injuries
        if q.context.new_condition:
            assert q.context.new_condition in q.context.conditions
            if q.context.new_condition == "pregnancy":
                assert q.context.profile.sex == "female" and q.context.profile.age <= 45


def test_slices_complete_and_consistent(run):
    _, queries = run
    for q in queries:
        assert list(q.slices) == list(SLICE_TAGS) or set(q.slices) == set(SLICE_TAGS)
        assert all(isinstance(v, str) and v for v in q.slices.values())
        assert q.slices["has_condition"] == ("yes" if q.context.conditions else "no")
        assert q.slices["has_injury"] == ("yes" if q.context.injuries else "no")
        assert q.slices["sex"] == q.context.profile.sex
        assert q.slices["primary_goal"] == q.context.primary_goal
        assert q.slices["equipment_tier"] in ("bodyweight", "home", "full_gym")
        age = q.context.profile.age
        assert q.slices["age_band"] == ("18-29" if age < 30 else "30-44" if age < 45 else "45-59" if age < 60 else "60+")


def _number(text: str, value: int, before: str = "", after: str = "") -> bool:
    return re.search(rf"{before}\b{value}\b{after}", text) is not None


def test_prompt_states_the_constraints(run):
    _, queries = run
    for q in queries:
        system, user = q.messages
        assert system.role == "system" and system.content == SYSTEM_PROMPT
        text, c = user.content, q.constraints
        assert _number(text, c.days_per_week, after=r"(/wk| days| training days|x| sessions| workouts)"), text
        assert _number(text, c.session_minutes, after=r"(-minute| min)"), text
        assert _number(text, c.max_exercises_per_day, after=r"(/day| exercises)"), text
        assert _number(text, c.rir_floor, before=r"RIR( floor:)? ", after=r"( or|\+|$)") or \
            f"RIR floor: {c.rir_floor}" in text, text
        assert re.search(rf"\b{q.context.profile.age}(y|F|M|\b)", text), text
        have = set(c.available_equipment) | {"bodyweight"}
        for name in c.avoid_exercises:
            if set(BY_NAME[name].equipment) <= have:  # avoidable exercises the user could otherwise pick
                assert name in text, (q.query_id, name)
        for condition in q.context.conditions:
            assert condition.replace("_", " ") in text
        for injury in q.context.injuries:
            assert injury.site.replace("_", " ") in text
        if q.kind == "plan_modification":
            assert q.phrasing.intent.startswith("change.") and "Current plan" in text
            for value in q.phrasing.slots.values():
                assert str(value) in text  # the requested days, minutes or exercise are stated
        if q.kind == "progress_adaptation":
            assert "Current plan" in text
            assert all(t.name in text for t in q.context.recent_trends)
            assert all(",".join(map(str, t.weekly_top_reps)) in text for t in q.context.recent_trends)


def test_compact_plan_is_exact_and_short():
    push = {"name": "Push-Up", "sets": 3, "reps": 10, "rir": 2, "rest_s": 60}
    plank = {"name": "Plank", "sets": 2, "reps": 15, "rir": 3, "rest_s": 45}
    day = {"name": "Full Body", "exercises": [push, push | {"name": "Banded Row"}, plank]}
    plan = {"plan_name": "p", "days": [{"day": 1, **day}, {"day": 2, **day}]}
    text = compact_plan(plan)
    assert text.splitlines() == [
        "Current plan (3x10 at RIR 2, rest 60s unless noted):",
        "D1 Full Body: Push-Up, Banded Row, Plank 2x15 RIR 3 45s",
        "D2 Full Body: as D1",
    ]


def test_deterministic_for_the_seed(run, tmp_path):
    ctx, _ = run
    again = _ctx(tmp_path / "again")
    generate_synthetic_data(again)
    build_queries(again)
    first = file_sha256(ctx.require("queries", "queries.jsonl"))
    assert file_sha256(again.require("queries", "queries.jsonl")) == first
    other = _ctx(tmp_path / "other", seed=6)
    generate_synthetic_data(other)
    build_queries(other)
    assert file_sha256(other.require("queries", "queries.jsonl")) != first


def test_prompts_fit_the_token_budget(run, tiny_model_dir):
    from transformers import AutoTokenizer

    _, queries = run
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(tok(SYSTEM_PROMPT)["input_ids"]) <= 120
    lengths = pd.DataFrame({"kind": [q.kind for q in queries],
                            "tokens": [len(tok(q.messages[1].content)["input_ids"]) for q in queries]})
    median = lengths.groupby("kind")["tokens"].median()
    assert median[["plan_creation", "safety_adjustment"]].max() <= 200, median.to_dict()
    # these carry the current plan: the teacher's answer builds on it, so the student must see it
    assert median[["plan_modification", "progress_adaptation"]].max() <= 320, median.to_dict()
    assert statistics.quantiles(lengths["tokens"], n=20)[-1] <= 500


def test_missing_synthetic_stage_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="synthetic"):
        build_queries(_ctx(tmp_path))


def test_phrasing_bank_sizes():
    """>= 15 paraphrases per symptom family, >= 8 per change kind and plan request; some of each held out."""
    for name, intent in {**phrasings.RED_FLAG, **phrasings.BENIGN}.items():
        assert len(intent.seen) + len(intent.held_out) >= 15, name
    for name, intent in {**phrasings.CHANGE, **phrasings.PLAN, **phrasings.SAFETY}.items():
        assert len(intent.seen) + len(intent.held_out) >= 8, name
    for name, intent in phrasings.INTENTS.items():
        assert intent.held_out and len(set(intent.seen) | set(intent.held_out)) == len(intent.seen) + len(
            intent.held_out), name


def test_queries_are_worded_in_many_seen_phrasings(run):
    _, queries = run
    templates = Counter(q.phrasing.template for q in queries)
    assert not any(q.phrasing.held_out or re.search(r"\.h\d\d$", q.phrasing.template) for q in queries)
    assert {q.phrasing.style for q in queries} == set(phrasings.REGISTERS)
    assert {q.phrasing.units for q in queries} == {"kg/cm", "kg/ft-in", "lb/cm", "lb/ft-in"}
    assert 0 < sum(q.phrasing.typo for q in queries) < 0.2 * len(queries)
    creation = [q for q in queries if q.kind == "plan_creation"]
    assert len({q.messages[1].content.splitlines()[-1] for q in creation}) > 5
    assert max(templates.values()) < 0.1 * len(queries)  # no single wording dominates
    assert len({tuple(q.phrasing.fact_order) for q in queries}) > 10


def test_rendering_is_deterministic_and_held_out_wording_differs(run):
    _, queries = run
    q = next(q for q in queries if q.kind == "safety_adjustment" and q.phrasing.intent.startswith("red_flag."))
    args = (q.kind, q.context, q.constraints, q.phrasing.intent, q.phrasing.slots)
    first = render_request(*args, np.random.default_rng([1, 2]))
    assert render_request(*args, np.random.default_rng([1, 2])) == first
    unseen, phrasing = render_request(*args, np.random.default_rng([1, 2]), held_out=True)
    assert phrasing.held_out and phrasing.template.startswith(q.phrasing.intent + ".h")
    request = phrasings.INTENTS[q.phrasing.intent].held_out[int(phrasing.template[-2:])]
    assert request.split()[1] in unseen or phrasing.typo


def test_typos_leave_slots_and_numbers_alone():
    rng = np.random.default_rng(0)
    for _ in range(50):
        out = with_typo("I can only train {days} days a week now.", rng)
        assert "{days}" in out and out != "I can only train {days} days a week now."
        assert sorted(out) == sorted("I can only train {days} days a week now.")


def test_forked_workers_write_the_file_one_process_writes(run, tmp_path, monkeypatch):
    """Queries built in chunks by three forked workers and stitched: the same bytes and counts as one process."""
    import shutil

    import fitsense.data.queries as stage

    ctx, _ = run
    other = _ctx(tmp_path)
    shutil.copytree(ctx.stage_dir("synthetic"), other.stage_dir("synthetic"), dirs_exist_ok=True)
    monkeypatch.setattr(stage, "CHUNK", 40)  # 300 queries: 8 chunks over 3 workers, the last one short
    monkeypatch.setattr(stage, "available_cpus", lambda: 3)
    result = build_queries(other)
    assert file_sha256(other.require("queries", "queries.jsonl")) == file_sha256(ctx.require("queries", "queries.jsonl"))
    assert result["by_kind"] == {k: v for k, v in ctx.manifest("queries")["rows"].items() if k != "queries"}
    assert result["referral_required"] == ctx.manifest("queries")["referral_required"]
    assert not list(other.stage_dir("queries").glob("*.part*"))


def test_query_lines_validate_the_batch_and_write_what_jsonl_line_writes(run):
    import json

    from fitsense.data.queries import query_lines
    from fitsense.errors import StageError
    from fitsense.runs import jsonl_line

    _, queries = run
    some = [next(q for q in queries if q.kind == kind) for kind in QUERY_KINDS]
    records = [q.model_dump(mode="json", exclude_none=True) for q in some]
    assert query_lines(records) == b"".join(jsonl_line(q) for q in some)
    records[0]["context"]["profile"]["height_cm"] = 1e16  # orjson writes 1e16, the json module 1e+16
    assert query_lines(records).splitlines()[0] == json.dumps(records[0], sort_keys=True, ensure_ascii=False,
                                                               separators=(",", ":")).encode()
    records[2]["constraints"]["days_per_week"] = 9
    with pytest.raises(StageError, match=rf"query {some[2].query_id}: invalid record: constraints.days_per_week"):
        query_lines(records)


def test_batches_of_users_read_only_their_row_groups_and_build_the_same_file(run, tmp_path, monkeypatch):
    """Tables in many row groups, users read 7 at a time: each batch's read skips the row groups outside its
    users by their statistics, returns what filtering the whole table returns, and the file is unchanged."""
    import pyarrow.dataset as ds

    import fitsense.data.queries as stage

    ctx, _ = run
    other = _ctx(tmp_path)
    folder = other.stage_dir("synthetic")
    for path in sorted(ctx.stage_dir("synthetic").iterdir()):
        if path.suffix == ".parquet":
            pq.write_table(pq.read_table(path), folder / path.name, row_group_size=40)
        else:
            (folder / path.name).write_bytes(path.read_bytes())
    world = stage._World(other)
    users = [int(u) for u in world.user_ids()[30:37]]
    for table, key, ids in (("profiles", "user_id", users), ("workout_plans", "user_id", users),
                            ("plan_days", "plan_id", users)):
        whole = pq.read_table(folder / f"{table}.parquet").to_pandas()
        expected = whole[whole[key].isin(ids)].reset_index(drop=True)
        pd.testing.assert_frame_equal(world.rows(table, key, ids), expected)
    fragment = next(iter(ds.dataset(folder / "daily_logs.parquet").get_fragments()))
    kept = fragment.split_by_row_group(stage.selection("user_id", users))
    theirs = sum(g.num_rows for f in kept[1:-1] for g in f.row_groups)  # the end groups may hold others' rows
    assert theirs <= len(world.rows("daily_logs", "user_id", users)) and len(kept) < fragment.num_row_groups / 10

    monkeypatch.setattr(stage, "USER_BATCH", 7)
    build_queries(other)
    written = other.require("queries", "queries.jsonl")
    assert file_sha256(written) == file_sha256(ctx.require("queries", "queries.jsonl"))


def test_packed_values_by_user():
    """Values packed by user come back parsed, None for a user without one; dedup stores a value once."""
    from fitsense.data.queries import _Packed

    packed = _Packed(iter([{3: b'{"a":[1,2]}', 5: b"[]"}, {9: b'"x"'}]))
    assert len(packed) == 3 and packed.users.tolist() == [3, 5, 9]
    assert [packed.get(u) for u in (3, 5, 9)] == [{"a": [1, 2]}, [], "x"]
    assert packed.get(3) is not packed.get(3)  # a fresh value each time: a query may change its own
    assert packed.get(4) is None and packed.get(10) is None and _Packed(iter(())).get(1) is None
    shared = _Packed(iter([{1: b"[1]", 2: b"[2]"}, {4: b"[1]"}]), dedup=True)
    assert [shared.get(u) for u in (1, 2, 4)] == [[1], [2], [1]] and len(shared.data) == 6
