"""The coaching-rule audit: each rule passes a well-coached plan and fails a hand-made bad one; the
teacher's notes say what changed; the quality gate and the dataset filter act on the audit."""

from __future__ import annotations

import copy
import json

import pytest
from dq_factories import make_ctx, write_inputs
from teacher_factories import make_query

from fitsense.audit import RULE_NAMES, RULES, audit_answer, audit_passed, audit_verdicts, parse_claims
from fitsense.constraints import check_answer
from fitsense.data.dataset import build_distillation_dataset
from fitsense.data.quality.stage import DataQualityError, run_data_quality
from fitsense.data.teacher.offline import answer_query
from fitsense.evaluation.audit_metrics import audit_rates
from fitsense.plan import CoachAnswer
from fitsense.records import CoachingQuery, DistillRecord
from fitsense.runs import read_json, read_jsonl, write_jsonl

KIT = ("bodyweight", "dumbbells", "bench", "resistance_bands", "pullup_bar")


def _day(n: int, *exercises: str, sets: int = 3, reps: int = 10) -> dict:
    return {"day": n, "name": f"Day {n}", "exercises": [
        {"name": e, "sets": sets, "reps": reps, "rir": 2, "rest_s": 90} for e in exercises]}


# A well-coached 3-day muscle-gain week: every major pattern, 12:12 push:pull sets, 6-12 sets per group.
GOOD_DAYS = [
    _day(1, "Goblet Squat", "Dumbbell Bench Press", "One-Arm Dumbbell Row", "Dumbbell Romanian Deadlift"),
    _day(2, "Seated Dumbbell Shoulder Press", "Pull-Up", "Dumbbell Reverse Lunge", "Hip Thrust"),
    _day(3, "Goblet Squat", "Push-Up", "Banded Row", "Banded Lat Pulldown", "Pike Push-Up"),
]
GOOD_PLAN = {"plan_name": "3-Day Full Body", "days": GOOD_DAYS, "notes": "",
             "safety": {"flags": [], "referral_required": False}}


def _plan(days=None, notes: str = "Built for muscle gain.") -> CoachAnswer:
    return CoachAnswer.model_validate({**GOOD_PLAN, "days": days or GOOD_DAYS, "notes": notes})


def _query(kind: str = "plan_creation", **kw) -> CoachingQuery:
    return make_query(kind, goal=kw.pop("goal", "muscle_gain"), experience="intermediate",
                      equipment=kw.pop("equipment", KIT), days=3, minutes=60, **kw)


def _verdict(rule: str, answer: CoachAnswer, query: CoachingQuery) -> bool | None:
    return audit_verdicts(answer, query)[rule]


def _swapped(days, old: str, new: str) -> list[dict]:
    days = copy.deepcopy(days)
    for d in days:
        for e in d["exercises"]:
            if e["name"] == old:
                e["name"] = new
    return days


def _without(days, *names: str) -> list[dict]:
    return [{**d, "exercises": [e for e in d["exercises"] if e["name"] not in names]} for d in days]


def test_rules_are_a_named_registry_and_a_good_plan_passes_them_all():
    assert RULE_NAMES == ("notes_match_change", "major_patterns", "push_pull_balance", "weekly_volume",
                          "no_repeat_in_day", "rep_range_goal")
    assert all(r.summary for r in RULES)
    results = audit_answer(_plan(), _query())
    assert {r.rule: r.passed for r in results} == {**dict.fromkeys(RULE_NAMES, True), "notes_match_change": None}
    assert audit_passed(results)


def test_notes_match_change_passes_true_claims_and_fails_false_or_missing_ones():
    query = _query("plan_modification", current_plan=GOOD_PLAN, extra_avoid=("Goblet Squat",))
    new_days = _swapped(GOOD_DAYS, "Goblet Squat", "Box Squat to Bench")
    assert _verdict("notes_match_change", _plan(new_days, "Swapped Goblet Squat for Box Squat to Bench."), query)
    # a swap claim that does not match the plan fails the audit
    wrong = audit_answer(_plan(new_days, "Swapped Goblet Squat for Push-Up."), query)
    assert not audit_passed(wrong)
    assert "no day replaces one with the other" in next(r.reason for r in wrong if r.rule == "notes_match_change")
    # a swap that keeps neither pattern nor muscle is misdescribed even when the names line up
    odd = _swapped(GOOD_DAYS, "Goblet Squat", "Band Pull-Apart")
    assert _verdict("notes_match_change", _plan(odd, "Swapped Goblet Squat for Band Pull-Apart."), query) is False
    # a change the notes keep quiet about
    assert _verdict("notes_match_change", _plan(new_days, "Plan kept; it already fits."), query) is False
    # progression claims must match the numbers
    more_reps = copy.deepcopy(GOOD_DAYS)
    more_reps[0]["exercises"][0]["reps"] = 12
    assert _verdict("notes_match_change", _plan(more_reps, "+2 reps on Goblet Squat."), query)
    assert _verdict("notes_match_change", _plan(more_reps, "+1 set on Goblet Squat."), query) is False


def test_major_patterns_need_every_pattern_or_a_note_saying_why_not():
    no_vertical_pull = _without(_swapped(GOOD_DAYS, "Pull-Up", "Inverted Row"), "Banded Lat Pulldown")
    assert _verdict("major_patterns", _plan(no_vertical_pull), _query()) is False
    # bodyweight only: no pulling exercise exists, and the notes say so
    days = [_day(1, "Bodyweight Squat", "Push-Up", "Glute Bridge", "Pike Push-Up")]
    plan = CoachAnswer.model_validate({**GOOD_PLAN, "days": days, "notes": "Built for you."})
    bodyweight = make_query("plan_creation", goal="muscle_gain", equipment=("bodyweight",), days=1, minutes=60)
    assert _verdict("major_patterns", plan, bodyweight) is False
    noted = plan.model_copy(update={"notes": "Built for you; no horizontal pull: nothing fits; no vertical pull."})
    assert _verdict("major_patterns", noted, bodyweight) is True


def test_push_pull_balance_within_the_stated_ratio():
    push_heavy = _without(GOOD_DAYS, "Banded Row", "Banded Lat Pulldown", "Pull-Up")
    assert _verdict("push_pull_balance", _plan(push_heavy), _query()) is False  # 12 push : 3 pull
    assert _verdict("push_pull_balance", _plan(), _query()) is True


def test_weekly_volume_in_the_goals_range_where_the_budget_allows():
    one_set = [{**d, "exercises": [{**e, "sets": 1} for e in d["exercises"]]} for d in GOOD_DAYS]
    assert _verdict("weekly_volume", _plan(one_set), _query()) is False  # 2-4 sets per group for muscle gain
    too_much = [{**d, "exercises": [{**e, "sets": 8} for e in d["exercises"]]} for d in GOOD_DAYS]
    assert _verdict("weekly_volume", _plan(too_much), _query()) is False  # back 32 sets
    tiny = make_query("plan_creation", goal="muscle_gain", experience="intermediate", equipment=KIT, days=1,
                      minutes=20)
    assert _verdict("weekly_volume", _plan(one_set[:1]), tiny) is None  # 20 minutes once a week: out of reach


def test_no_exercise_repeated_within_a_day():
    twice = copy.deepcopy(GOOD_DAYS)
    twice[0]["exercises"].append(dict(twice[0]["exercises"][0]))
    assert _verdict("no_repeat_in_day", _plan(twice), _query()) is False
    assert _verdict("no_repeat_in_day", _plan(), _query()) is True


def test_rep_ranges_match_the_goal():
    assert _verdict("rep_range_goal", _plan(), _query()) is True
    assert _verdict("rep_range_goal", _plan(), _query(goal="strength")) is False  # 10 reps on compounds
    heavy = [{**d, "exercises": [{**e, "reps": 5} for e in d["exercises"]]} for d in GOOD_DAYS]
    assert _verdict("rep_range_goal", _plan(heavy), _query(goal="strength")) is True


def test_knee_and_home_equipment_note_names_the_dropped_exercise():
    # a user with a recovering knee moves to home training with only dumbbells and bands
    current = {**GOOD_PLAN, "days": [
        _day(d, "Box Squat to Bench", "Dumbbell Bench Press", "Inverted Row", "Dumbbell Romanian Deadlift")
        for d in (1, 2, 3)]}
    home = ("bodyweight", "dumbbells", "resistance_bands")
    query = make_query("plan_modification", goal="muscle_gain", equipment=home, injury_sites=["knee"],
                       current_plan=current, days=3, minutes=45,
                       modification="I'm training at home now with only dumbbells and resistance bands.")
    answer = answer_query(query)
    assert "dropped Box Squat to Bench: no knee-safe squat without a bench" in answer.notes
    assert "Swapped Dumbbell Bench Press for Banded Chest Press" in answer.notes
    assert "swapped Inverted Row for Banded Row" in answer.notes
    assert "swapped Box Squat to Bench" not in answer.notes.lower()
    assert "no squat or lunge" in answer.notes  # the pattern the constraints rule out is named
    assert {c.kind for c in parse_claims(answer.notes)} >= {"swap", "drop"}
    assert audit_passed(audit_answer(answer, query))


def test_progression_notes_match_the_new_plan():
    query = make_query("progress_adaptation", minutes=60, trends=[
        ("Goblet Squat", [8, 9, 10, 11], "progressing"),
        ("Dumbbell Bench Press", [10, 10, 10, 10], "stalled"),
        ("One-Arm Dumbbell Row", [10, 9, 8, 7], "regressing"),
    ])
    answer = answer_query(query)
    assert "+2 reps on Goblet Squat" in answer.notes
    assert "deload on One-Arm Dumbbell Row (fewer sets, more RIR)" in answer.notes
    assert _verdict("notes_match_change", answer, query) is True


def _quality_run(tmp_path, **overrides):
    ctx = make_ctx(tmp_path, **overrides)
    write_inputs(ctx, n_users=40, per_user=3, seed=3)
    return ctx


def test_gate_fails_when_a_rule_pass_rate_is_below_the_threshold(tmp_path):
    ctx = _quality_run(tmp_path, **{"quality.min_audit_pass_rate": 0.99})
    build_distillation_dataset(ctx)
    with pytest.raises(DataQualityError, match="teacher_audit.*quality.min_audit_pass_rate"):
        run_data_quality(ctx)
    audit = read_json(ctx.stage_dir("quality") / "audit.json")
    assert set(audit["rules"]) == set(RULE_NAMES) and audit["threshold"] == 0.99
    assert any(r["rate"] is not None and r["rate"] < 0.99 and r["failing"] for r in audit["rules"].values())
    report = (ctx.stage_dir("quality") / "report.md").read_text()
    assert "Coaching-rule audit" in report and "weekly_volume" in report


def test_require_audit_drops_answers_that_fail_the_audit(tmp_path):
    ctx = make_ctx(tmp_path, **{"dataset.require_audit": True})
    queries, records = write_inputs(ctx, n_users=40, per_user=3, seed=3)
    # the teacher's answers for most queries; the factory's uncoached random plans for every fifth
    coached = []
    for i, (q, r) in enumerate(zip(queries, records)):
        if i % 5 and r.status == "ok":
            answer = answer_query(q)
            r = r.model_copy(update={"answer": answer.model_dump(mode="json", exclude_none=True),
                                     "response_text": answer.to_json(), "constraint_violations": []})
        coached.append(r)
    write_jsonl(ctx.stage_dir("teacher") / "records.jsonl", coached)
    by_id = {q.query_id: q for q in queries}
    failing = {r.query_id for r in coached if r.status == "ok" and not check_answer(
        CoachAnswer.model_validate(r.answer), by_id[r.query_id].constraints)
        and not audit_passed(audit_answer(CoachAnswer.model_validate(r.answer), by_id[r.query_id]))}
    summary = build_distillation_dataset(ctx)
    assert failing and summary["dropped"]["audit_failed"] == len(failing)
    kept = [r for s in ("train", "val", "test") for r in read_jsonl(ctx.stage_dir("dataset") / f"{s}.jsonl",
                                                                   DistillRecord)]
    assert kept and not {r.query_id for r in kept} & failing
    for r in kept:
        answer = CoachAnswer.model_validate(json.loads(r.messages[-1].content))
        assert audit_passed(audit_answer(answer, by_id[r.query_id]))


def test_evaluation_audits_model_answers_with_n_and_interval():
    query = _query("plan_modification", current_plan=GOOD_PLAN, extra_avoid=("Goblet Squat",))
    good = answer_query(query).to_json()
    lying = _plan(GOOD_DAYS, "Swapped Goblet Squat for Push-Up.").to_json()
    rates = audit_rates([good, lying, "not json", None], [query, query, query, query])
    notes = rates["notes_match_change"]
    assert (notes["n"], notes["passed"], notes["rate"]) == (2, 1, 0.5)  # unparseable answers are left out
    assert notes["ci95"][0] < 0.5 < notes["ci95"][1]
