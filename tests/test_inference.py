"""The inference path, the safety screen and the plan-quality metrics."""

from __future__ import annotations

import json

import pytest
from training_factories import make_records

from fitsense.catalogue import CATALOGUE
from fitsense.evaluation.inference import CoachInference, CoachRequest, RequestError, parse_constraints
from fitsense.evaluation.plan_quality import plan_quality_row, summarise_plan_quality
from fitsense.plan import CoachAnswer, parse_coach_answer
from fitsense.records import ChatMessage, QueryConstraints
from fitsense.training.screen import SafetyScreen, load_screen, matched_rules, train_screen

SYSTEM = {"role": "system", "content": "Reply with one JSON plan."}


def _constraints(**kw) -> QueryConstraints:
    base = dict(days_per_week=1, session_minutes=30, max_exercises_per_day=2, available_equipment=["bodyweight"],
                rir_floor=2)
    return QueryConstraints(**{**base, **kw})


def test_an_unknown_constraint_field_is_rejected_by_name():
    with pytest.raises(RequestError, match="unknown field 'max_sets'"):
        parse_constraints({**_constraints().model_dump(), "max_sets": 3})
    with pytest.raises(RequestError, match="constraints.days_per_week"):
        parse_constraints({**_constraints().model_dump(), "days_per_week": 9})
    assert parse_constraints(_constraints().model_dump()) == _constraints()


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from fitsense.training.student import load_student

    model, tokenizer = load_student(tiny_model_dir, None, device="cpu", precision="fp32")
    return CoachInference(model, tokenizer, SafetyScreen(classifier=None))


def test_guided_decoding_answers_every_row_and_names_the_unanswerable_one(engine):
    import xgrammar as xgr

    from fitsense.plan_grammar import constrained_plan_schema

    nothing_usable = _constraints(avoid_exercises=[e.name for e in CATALOGUE])
    requests = [
        CoachRequest([SYSTEM, {"role": "user", "content": "A one-day bodyweight plan, please."}], _constraints()),
        CoachRequest([SYSTEM, {"role": "user", "content": "Plan with nothing safe."}], nothing_usable),
        CoachRequest([SYSTEM, {"role": "user", "content": "No constraints sent."}], None),
        CoachRequest([SYSTEM, {"role": "user", "content": "I fainted during my last workout."}], _constraints()),
    ]
    replies = engine.answer(requests, decoding="guided", max_new_tokens=60, batch_size=4)
    assert len(replies) == 4
    assert replies[1].error.startswith("no safe exercise for this equipment and avoid list")
    assert "needs the request's constraints" in replies[2].error
    assert replies[0].error is None and replies[0].completion_tokens > 0
    assert replies[3].screen_refer and replies[3].screen_rules == ["fainting"]
    # Whatever the (random) tiny model wrote is a prefix its grammar allows: plan branch, then referral branch.
    for reply, referral in ((replies[0], False), (replies[3], True)):
        grammar = engine.grammars.compiler.compile_json_schema(
            json.dumps(constrained_plan_schema(_constraints(), referral)), any_whitespace=False,
            separators=(",", ":"))
        assert xgr.GrammarMatcher(grammar).accept_string(reply.text), reply.text
    assert replies[3].text.startswith('{"plan_name":"')
    # Grammars are cached by constraint key: one per (constraints, referral) seen.
    assert len(engine.grammars.grammars) == 2


def test_raw_decoding_reports_the_screen_without_changing_the_answer(engine):
    requests = [CoachRequest([SYSTEM, {"role": "user", "content": "I fainted during my last workout."}], None)]
    reply = engine.answer(requests, decoding="raw", max_new_tokens=8, batch_size=1)[0]
    assert reply.screen_refer and reply.error is None and reply.text is not None
    with pytest.raises(RequestError, match="decoding"):
        engine.answer(requests, decoding="beam")


def test_a_guided_answer_whose_session_runs_long_is_answered_again_under_the_session_bound(engine, monkeypatch):
    from fitsense.evaluation import inference
    from fitsense.evaluation.generate import Generation

    def day_plan(prescription: str) -> str:
        return json.dumps({"plan_name": "1-Day Full Body", "days": [{"day": 1, "name": "Full Body A",
                           "exercises": [prescription] * 2}], "notes": "", "safety": {"flags": [],
                           "referral_required": False}}, separators=(",", ":"))

    calls = []

    def fake_generate(model, tokenizer, conversations, *, grammars, label, **kw):
        calls.append((label, len(conversations), len(grammars or [])))
        text = day_plan("Plank 3x30 RIR2 60s") if "session-bounded" in label else day_plan("Plank 10x30 RIR2 300s")
        return [Generation(text=text, prompt_tokens=10, completion_tokens=40, latency_s=1.0) for _ in conversations]

    monkeypatch.setattr(inference, "generate_answers", fake_generate)
    request = CoachRequest([SYSTEM, {"role": "user", "content": "A one-day plan."}], _constraints())
    reply = engine.answer([request], decoding="guided")[0]
    assert calls == [("guided", 1, 1), ("guided, session-bounded", 1, 1)]
    assert reply.regenerated and reply.violations == []
    assert (reply.completion_tokens, reply.latency_s) == (80, 2.0)  # both attempts are counted
    # Raw decoding keeps the student's own answer and its violation.
    calls.clear()
    raw = engine.answer([request], decoding="raw")[0]
    assert not raw.regenerated and any(v.startswith("session_too_long") for v in raw.violations)


def test_guided_answers_continue_the_start_of_the_raw_answers_that_their_grammar_accepts(engine):
    """Given raw replies, guided decoding reuses each one's grammar-accepted start: the answers are the ones
    guided decoding writes from scratch, and only the rest is generated."""
    from fitsense.evaluation.inference import CoachReply

    requests = [CoachRequest([SYSTEM, {"role": "user", "content": text}], _constraints())
                for text in ("A one-day plan.", "One day, bodyweight only.", "Keep it short.")]
    scratch = engine.answer(requests, decoding="guided", max_new_tokens=40, batch_size=3)
    astray = engine.tokenizer("<html>", add_special_tokens=False)["input_ids"]  # no grammar admits markup
    cut = [0, 12, len(scratch[2].token_ids)]  # diverges at once, after 12 tokens, never (then the budget ends)
    raw = [CoachReply(text="", decoding="raw", token_ids=reply.token_ids[:k] + astray, latency_s=2.0)
           for reply, k in zip(scratch, cut)]
    reused = engine.answer(requests, decoding="guided", max_new_tokens=40, batch_size=3, raw=raw)
    assert [r.text for r in reused] == [r.text for r in scratch]
    assert [r.shared_tokens for r in reused] == cut
    assert reused[2].completion_tokens == 40 and reused[2].latency_s == pytest.approx(2.0 * 40 / (40 + len(astray)))


def test_a_raw_answer_its_grammar_accepts_whole_is_the_guided_answer(engine):
    from fitsense.evaluation.inference import CoachReply, accepted_prefix

    answer = json.dumps({"plan_name": "1-Day Full Body", "days": [{"day": 1, "name": "Full Body A",
                         "exercises": ["Plank 3x30 RIR2 60s"]}], "notes": "Stay steady.",
                         "safety": {"flags": [], "referral_required": False}}, separators=(",", ":"))
    request = CoachRequest([SYSTEM, {"role": "user", "content": "A one-day plan."}], _constraints())
    ids = engine.tokenizer(answer, add_special_tokens=False)["input_ids"] + [engine.tokenizer.eos_token_id]
    grammar = engine.grammars.get(request.constraints, False)
    head, complete = accepted_prefix(grammar, ids, {engine.tokenizer.eos_token_id})
    assert complete and head == ids[:-1]
    raw = CoachReply(text=answer, decoding="raw", token_ids=ids, latency_s=3.0, prompt_tokens=20)
    reply = engine.answer([request], decoding="guided", raw=[raw])[0]
    assert reply.text == answer and reply.violations == [] and reply.shared_tokens == len(ids) - 1
    assert (reply.completion_tokens, reply.prompt_tokens) == (len(ids), 20)
    with pytest.raises(ValueError, match="one per request"):
        engine.answer([request, request], decoding="guided", raw=[raw])


def _with_user(record, text):
    messages = [m if m.role != "user" else ChatMessage(role="user", content=text) for m in record.messages]
    return record.model_copy(update={"messages": messages})


def _referral_record(record, text):
    answer = {"plan_name": "Pause Training: See a Clinician", "days": [], "notes": "Stop.",
              "safety": {"flags": ["red_flag_symptom"], "referral_required": True, "reason": "See a clinician."}}
    rec = _with_user(record, text)
    messages = rec.messages[:-1] + [ChatMessage(role="assistant", content=json.dumps(answer))]
    return rec.model_copy(update={"messages": messages})


def test_the_screen_is_trained_for_recall_and_saved_with_its_threshold(tmp_path):
    records = make_records(40)
    red = ["New: chest pain when I climb stairs. How should I train now?",
           "New: I get short of breath even at rest. How should I train now?"]
    train = [_referral_record(r, red[i % 2]) if i % 5 == 0 else r for i, r in enumerate(records[:30])]
    val = [_referral_record(records[30], "New: my heart races and I feel dizzy. How should I train now?"),
           *records[31:]]
    screen = train_screen(train, val, seed=0)
    assert screen.classifier is not None and screen.metrics["val"]["recall"] == 1.0
    loaded = load_screen(screen.save(tmp_path / "screen"))
    assert loaded.threshold == pytest.approx(screen.threshold)
    texts = ["New: I passed out at the gym yesterday. How should I train now?",
             "New: a small blister on my palm from gripping. How should I train now?"]
    assert loaded.refer(texts) == screen.refer(texts)
    assert loaded.refer(texts)[0]  # an unseen phrasing: the rules still refer
    assert load_screen(tmp_path / "missing").classifier is None  # no trained screen: rules only


def test_rules_catch_red_flags_and_leave_benign_symptoms():
    assert matched_rules("pain and swelling in one calf that won't go away")
    assert matched_rules("I feel light-headed and my heart is racing")
    assert not matched_rules("mild muscle soreness two days after leg day")
    assert not matched_rules("slight morning stiffness that eases once I warm up")


TEACHER = CoachAnswer.model_validate({
    "plan_name": "2-Day Full Body Strength",
    "days": [{"day": 1, "name": "Full Body A", "exercises": ["Bodyweight Squat 3x5 RIR2 150s", "Push-Up 3x5 RIR2 150s",
                                                            "Inverted Row 3x5 RIR2 150s"]},
             {"day": 2, "name": "Full Body B", "exercises": ["Glute Bridge 3x8 RIR2 150s", "Pike Push-Up 3x5 RIR2 150s",
                                                            "Pull-Up 3x5 RIR2 150s"]}],
    "notes": "+2 reps on Push-Up.", "safety": {"flags": [], "referral_required": False}})


def test_plan_quality_rewards_the_teachers_plan_and_not_junk():
    same = plan_quality_row(TEACHER, TEACHER)
    assert same["weekly_volume_error"] == 0 and same["teacher_pattern_recall"] == 1 and same["free_text_sane"] == 1
    junk = parse_coach_answer(json.dumps({
        "plan_name": "<b>Plan</b>", "days": [{"day": 1, "name": "Plank 3x30 RIR2 30s", "exercises": ["Plank 1x30 RIR2 30s"]},
                                             {"day": 2, "name": "Plank 3x30 RIR2 30s", "exercises": ["Plank 1x30 RIR2 30s"]}],
        "notes": "", "safety": {"flags": [], "referral_required": False}}))
    row = plan_quality_row(junk, TEACHER)
    assert row["pattern_coverage"] < same["pattern_coverage"] and row["teacher_pattern_recall"] == 0
    assert row["weekly_volume_error"] > 0.9 and row["free_text_sane"] == 0 and row["exercises_per_day_error"] == 2
    assert plan_quality_row(None, TEACHER)["pattern_coverage"] == 0  # no answer scores 0, not "undefined"


def test_progress_direction_compares_dose_changes_with_the_teachers():
    current = TEACHER.model_copy(deep=True)
    progressed = TEACHER.model_copy(deep=True)
    progressed.days[0].exercises[1] = progressed.days[0].exercises[1].model_copy(update={"reps": 7})
    regressed = TEACHER.model_copy(deep=True)
    regressed.days[0].exercises[1] = regressed.days[0].exercises[1].model_copy(update={"reps": 3})
    kind = "progress_adaptation"
    assert plan_quality_row(progressed, progressed, current, kind)["progress_direction"] == 1
    assert plan_quality_row(regressed, progressed, current, kind)["progress_direction"] == 0
    assert plan_quality_row(current, progressed, current, kind)["progress_direction"] == 0
    import pandas as pd

    summary = summarise_plan_quality(pd.DataFrame([plan_quality_row(progressed, progressed, current, kind),
                                                   plan_quality_row(regressed, progressed, current, kind)]))
    assert summary["progress_direction"] == 0.5 and summary["progress_direction_n"] == 2
