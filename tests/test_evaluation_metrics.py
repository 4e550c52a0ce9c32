"""Answer metrics on hand-made answers: validity, adherence, referral precision/recall, agreement, disparity."""

from __future__ import annotations

import json

import pytest

from fitsense.catalogue import usable_exercises
from fitsense.evaluation.evaluate import select_examples
from fitsense.evaluation.metrics import (
    answer_frame,
    exercise_overlap,
    referral_precision_recall,
    score_answer,
    score_row,
    slice_disparity,
    structure_match,
    summarise,
)
from fitsense.plan import parse_coach_answer
from fitsense.records import QueryConstraints

EQUIPMENT = ["dumbbells", "bench"]


def constraints(**kw) -> QueryConstraints:
    base = dict(days_per_week=2, session_minutes=60, max_exercises_per_day=4, available_equipment=EQUIPMENT,
                avoid_exercises=[], rir_floor=1, referral_required=False)
    return QueryConstraints(**{**base, **kw})


def names(k: int = 3) -> list[str]:
    return [e.name for e in usable_exercises(EQUIPMENT, [])][:k]


def plan(days: int = 2, exercises: list[str] | None = None, referral: bool = False, rir: int = 2) -> str:
    exercises = exercises or names()
    answer = {
        "plan_name": "Test plan",
        "days": [{"day": d, "name": f"Day {d}",
                  "exercises": [{"name": n, "sets": 3, "reps": 10, "rir": rir, "rest_s": 60} for n in exercises]}
                 for d in range(1, days + 1)],
        "notes": "",
        "safety": {"flags": [], "referral_required": referral, "reason": "see a doctor" if referral else None},
    }
    return json.dumps(answer)


REFERRAL_ONLY = json.dumps({"plan_name": "Stop", "days": [],
                            "safety": {"flags": ["red_flag"], "referral_required": True, "reason": "chest pain"}})


def test_valid_adherent_answer():
    s = score_answer(plan(), constraints())
    assert s.valid and s.adherent and s.violations == [] and not s.referral_given


def test_invalid_json_and_schema_invalid_are_not_valid():
    truncated = score_answer(plan()[:40], constraints())
    assert not truncated.valid and not truncated.adherent and "truncated" in truncated.parse_error
    no_json = score_answer("Sure! Here is your plan.", constraints())
    assert not no_json.valid and "no JSON" in no_json.parse_error
    schema = score_answer(plan().replace('"sets": 3', '"sets": 0'), constraints())
    assert not schema.valid and schema.parse_error.startswith("schema:")


def test_constraint_breaking_answer_is_valid_but_not_adherent():
    s = score_answer(plan(days=3, rir=0), constraints())
    assert s.valid and not s.adherent
    assert s.violation_codes == ["days_per_week", "rir_floor"]


def test_missing_and_unnecessary_referral():
    missing = score_answer(plan(), constraints(referral_required=True))
    assert missing.valid and not missing.adherent and "referral_missing" in missing.violation_codes
    unexpected = score_answer(REFERRAL_ONLY, constraints())
    assert unexpected.referral_given and "referral_unexpected" in unexpected.violation_codes
    right = score_answer(REFERRAL_ONLY, constraints(referral_required=True))
    assert right.adherent and right.referral_given


def test_referral_precision_and_recall():
    # TP=1 (row 0), FN=1 (row 1), FP=2 (rows 2, 3), TN=1 (row 4).
    required = [True, True, False, False, False]
    given = [True, False, True, True, False]
    precision, recall = referral_precision_recall(required, given)
    assert precision == pytest.approx(1 / 3) and recall == pytest.approx(1 / 2)
    # Undefined, not 0 or 1: nothing required / nothing given.
    assert referral_precision_recall([False, False], [False, True]) == (0.0, None)
    assert referral_precision_recall([True, False], [False, False]) == (None, 0.0)


def test_summarise_from_scored_rows():
    ref = parse_coach_answer(plan())
    rows = [
        score_row(plan(), constraints(), ref, latency_s=1.0, completion_tokens=100, cost_usd=0.001),
        score_row(plan(days=3), constraints(), ref, latency_s=2.0, completion_tokens=100, cost_usd=0.001),
        score_row("not json", constraints(), ref, latency_s=3.0, completion_tokens=50, cost_usd=0.002),
        score_row(REFERRAL_ONLY, constraints(referral_required=True), ref, latency_s=4.0, completion_tokens=50,
                  cost_usd=0.0),
        score_row(plan(), constraints(referral_required=True), ref, latency_s=5.0, completion_tokens=0,
                  cost_usd=0.0),
    ]
    m = summarise(answer_frame(rows))
    assert m["n"] == 5
    assert m["validity"] == pytest.approx(4 / 5)
    assert m["adherence"] == pytest.approx(2 / 5)  # rows 0 and 3
    assert m["referral_recall"] == pytest.approx(1 / 2) and m["referral_precision"] == pytest.approx(1.0)
    assert m["violation_rates"]["days_per_week"] == pytest.approx(1 / 5)
    assert m["violation_rates"]["referral_missing"] == pytest.approx(1 / 5)
    assert m["latency_p50_s"] == pytest.approx(3.0) and m["latency_p95_s"] == pytest.approx(4.8)
    assert m["tokens_per_s"] == pytest.approx(300 / 15)
    assert m["usd_per_1k_answers"] == pytest.approx(0.004 / 5 * 1000)
    # Agreement with the teacher: rows 0 and 4 copy it, row 1 has the same exercises but 3 days.
    assert m["teacher_exercise_overlap"] == pytest.approx(3 / 5)
    assert m["teacher_structure_match"] == pytest.approx(2 / 5)


def test_exercise_overlap_and_structure_match():
    a, b, c, d = names(4)
    one = parse_coach_answer(plan(exercises=[a, b]))
    two = parse_coach_answer(plan(exercises=[b, c]))
    assert exercise_overlap(one, two) == pytest.approx(1 / 3)
    assert exercise_overlap(one, one) == 1.0 and exercise_overlap(None, one) == 0.0
    assert exercise_overlap(one, parse_coach_answer(plan(exercises=[d]))) == 0.0
    assert structure_match(one, two)
    assert not structure_match(one, parse_coach_answer(plan(days=3)))
    assert not structure_match(one, parse_coach_answer(plan(referral=True)))


def _slice_rows(valid_by_sex: dict[str, list[bool]]) -> list[dict]:
    rows = []
    for sex, flags in valid_by_sex.items():
        for ok in flags:
            rows.append(score_row(plan() if ok else "garbage", constraints(), None,
                                  slices={"sex": sex, "age_band": "30-44"}))
    return rows


def test_disparity_flags_large_gaps_and_ignores_small_slices():
    # n >= 20 per slice to compare; "other" (n=5) is ignored
    frame = answer_frame(_slice_rows({"female": [True] * 20, "male": [False] * 15 + [True] * 5,
                                      "other": [True] * 5}))
    result = {(d["tag"], d["metric"]): d for d in slice_disparity(frame, threshold=0.5)}
    validity = result[("sex", "validity")]
    assert validity["gap"] == pytest.approx(0.75) and validity["flagged"]
    assert validity["best"]["slice"] == "female" and validity["worst"]["slice"] == "male"
    assert validity["best"]["n"] == 20 and validity["worst"]["ci95"][1] < validity["best"]["ci95"][0]
    assert validity["ignored_slices"] == {"other": 5}
    # One slice only: nothing to compare, never flagged.
    assert result[("age_band", "validity")]["gap"] is None and not result[("age_band", "validity")]["flagged"]
    higher = {(d["tag"], d["metric"]): d for d in slice_disparity(frame, threshold=0.8)}
    assert not higher[("sex", "validity")]["flagged"]


def test_disparity_above_threshold_is_not_flagged_when_intervals_overlap():
    # gap 0.25 > threshold 0.2, but with n = 20 per slice the 95% intervals overlap: noise, not a disparity
    frame = answer_frame(_slice_rows({"female": [True] * 15 + [False] * 5, "male": [True] * 10 + [False] * 10}))
    validity = {(d["tag"], d["metric"]): d for d in slice_disparity(frame, threshold=0.2)}[("sex", "validity")]
    assert validity["gap"] == pytest.approx(0.25) and not validity["flagged"]
    small = answer_frame(_slice_rows({"female": [True] * 4, "male": [False] * 4}))
    assert all(d["gap"] is None for d in slice_disparity(small, threshold=0.2))  # n < 20: never compared


class _Rec:
    def __init__(self, qid, kind):
        self.query_id, self.kind = qid, kind


def test_select_examples_is_deterministic_and_covers_kinds():
    records = [_Rec(f"q{i:03d}", kind) for i, kind in
               enumerate(["plan_creation"] * 20 + ["safety_adjustment"] * 3 + ["plan_modification"] * 10)]
    first = select_examples(records, 9, seed=1)
    assert [r.query_id for r in first] == [r.query_id for r in select_examples(records, 9, seed=1)]
    assert len(first) == 9 and {r.kind for r in first} == {"plan_creation", "safety_adjustment", "plan_modification"}
    assert [r.query_id for r in first] != [r.query_id for r in select_examples(records, 9, seed=2)]
    assert len(select_examples(records, None, seed=1)) == len(records)


def test_teacher_cost_uses_captured_cost_or_prices():
    from fitsense.evaluation.evaluate import teacher_cost
    from fitsense.records import TeacherRecord

    base = dict(query_id="q1", user_id=1, kind="plan_creation", teacher_model="m", status="ok",
                prompt_tokens=1000, completion_tokens=500)
    assert teacher_cost(TeacherRecord(**base, cost_usd=0.02), 1.0, 1.0) == 0.02
    # No captured cost: 1k input tokens at $0.5/1k + 0.5k output tokens at $2/1k.
    assert teacher_cost(TeacherRecord(**base), 0.5, 2.0) == pytest.approx(1.5)
