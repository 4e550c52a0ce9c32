"""The per-request plan grammar: never stricter than the teacher, strict where the constraints are."""

from __future__ import annotations

import json

import pytest

from fitsense.plan_grammar import NoSafeExerciseError, constrained_plan_schema, grammar_key
from fitsense.records import DistillRecord, QueryConstraints
from fitsense.runs import read_jsonl


@pytest.fixture(scope="module")
def compiler(tiny_model_dir):
    import xgrammar as xgr
    from transformers import AutoTokenizer

    return xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(str(tiny_model_dir))))


@pytest.fixture(scope="module")
def teacher_dataset(tmp_path_factory) -> list[DistillRecord]:
    """Every split of a dataset built by the real (tiny) pipeline: synthetic, queries, offline teacher, dataset."""
    from fitsense.app.pipeline import run_pipeline
    from fitsense.config import load_params
    from fitsense.runs import RunContext

    root = tmp_path_factory.mktemp("grammar-data")
    params = load_params(None, {"synthetic.n_users": 80, "queries.n_queries": 120, "run.artifacts_dir": str(root),
                                "teacher.cache_dir": str(root / "cache")})
    ctx = RunContext.create(params, "grammar")
    run_pipeline(ctx, stop="dataset")
    return [r for split in ("train", "val", "test") for r in read_jsonl(ctx.run_dir / "dataset" / f"{split}.jsonl",
                                                                        DistillRecord)]


def accepts(compiler, schema: dict, text: str) -> bool:
    import xgrammar as xgr

    grammar = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))
    matcher = xgr.GrammarMatcher(grammar, terminate_without_stop_token=True)
    return matcher.accept_string(text) and matcher.is_terminated()


def constraints(**kw) -> QueryConstraints:
    base = dict(days_per_week=2, session_minutes=45, max_exercises_per_day=3, available_equipment=["bodyweight"],
                avoid_exercises=["Push-Up"], rir_floor=2)
    return QueryConstraints(**{**base, **kw})


def plan(exercises=("Bodyweight Squat 3x10 RIR2 60s",), days=2, plan_name="2-Day Full Body General Health",
         notes="Built for general health.") -> str:
    return json.dumps({"plan_name": plan_name,
                       "days": [{"day": i, "name": f"Full Body {chr(64 + i)}", "exercises": list(exercises)}
                                for i in range(1, days + 1)],
                       "notes": notes, "safety": {"flags": [], "referral_required": False}}, separators=(",", ":"))


def test_every_teacher_answer_is_accepted_by_its_own_query_grammar(compiler, teacher_dataset):
    assert len(teacher_dataset) > 50
    assert any(r.constraints.referral_required for r in teacher_dataset)
    rejected = [r.query_id for r in teacher_dataset
                if not accepts(compiler, constrained_plan_schema(r.constraints), r.messages[-1].content)]
    assert rejected == []


def test_the_grammar_holds_each_hard_constraint(compiler):
    c = constraints()
    schema = constrained_plan_schema(c)
    assert accepts(compiler, schema, plan())
    assert not accepts(compiler, schema, plan(days=3))  # the exact day count
    assert not accepts(compiler, schema, plan(exercises=["Push-Up 3x10 RIR2 60s"]))  # on the avoid list
    assert not accepts(compiler, schema, plan(exercises=["Goblet Squat 3x10 RIR2 60s"]))  # needs dumbbells
    assert not accepts(compiler, schema, plan(exercises=["Moon Squat 3x10 RIR2 60s"]))  # not in the catalogue
    assert not accepts(compiler, schema, plan(exercises=["Bodyweight Squat 3x10 RIR1 60s"]))  # below the RIR floor
    assert not accepts(compiler, schema, plan(exercises=["Bodyweight Squat 11x10 RIR2 60s"]))  # sets out of range
    assert not accepts(compiler, schema, plan(exercises=["Plank 3x30 RIR2 30s"] * 4))  # over the per-day limit
    assert not accepts(compiler, schema, plan(plan_name="<b>Plan</b>"))  # markup in free text
    assert not accepts(compiler, schema, plan(notes='See {"x": 1}'))


def test_notes_are_bounded_so_a_repeating_student_must_close_them(compiler):
    from fitsense.plan import MAX_NOTE_CLAUSES, NOTE_CLAUSE_CHARS, CoachAnswer

    schema = constrained_plan_schema(constraints())
    loop = "; ".join(["+2 reps on Bodyweight Squat"] * MAX_NOTE_CLAUSES)
    assert accepts(compiler, schema, plan(notes=loop))
    assert not accepts(compiler, schema, plan(notes=loop + "; +2 reps on Bodyweight Squat"))
    assert accepts(compiler, schema, plan(notes="B" * NOTE_CLAUSE_CHARS))
    assert not accepts(compiler, schema, plan(notes="B" * (NOTE_CLAUSE_CHARS + 1)))
    # whatever the grammar admits, the plan schema parses
    longest = "; ".join(["B" * NOTE_CLAUSE_CHARS] * MAX_NOTE_CLAUSES)
    assert accepts(compiler, schema, plan(notes=longest))
    CoachAnswer.model_validate_json(plan(notes=longest))


def test_the_referral_branch_has_no_days_and_a_reason(compiler):
    referral = json.dumps({"plan_name": "Pause Training: See a Clinician", "days": [],
                           "notes": "Stop training and get medical clearance.",
                           "safety": {"flags": ["red_flag_symptom"], "referral_required": True,
                                      "reason": "'I fainted' needs a medical assessment."}}, separators=(",", ":"))
    assert accepts(compiler, constrained_plan_schema(constraints(), referral=True), referral)
    assert accepts(compiler, constrained_plan_schema(constraints(referral_required=True)), referral)
    assert not accepts(compiler, constrained_plan_schema(constraints()), referral)
    assert not accepts(compiler, constrained_plan_schema(constraints(), referral=True), plan())


def test_no_usable_exercise_is_a_clear_error():
    everything = [e.name for e in __import__("fitsense.catalogue", fromlist=["CATALOGUE"]).CATALOGUE]
    with pytest.raises(NoSafeExerciseError, match="no safe exercise for this equipment and avoid list"):
        constrained_plan_schema(constraints(avoid_exercises=everything))
    with pytest.raises(NoSafeExerciseError, match="no safe exercise for this equipment and avoid list"):
        constrained_plan_schema(constraints(avoid_exercises=everything), bound_session=True)
    # A referral needs no exercise.
    assert constrained_plan_schema(constraints(avoid_exercises=everything), referral=True)["properties"]["days"]


def test_the_session_bounded_grammar_admits_no_day_that_runs_long(compiler):
    from fitsense.constraints import check_answer, session_limit_seconds
    from fitsense.plan import parse_coach_answer

    c = constraints(session_minutes=30, max_exercises_per_day=4)  # limit 2070 s with the checker's slack
    long_day = plan(exercises=["Bodyweight Squat 4x10 RIR2 120s"] * 4)  # 4 x 640 s = 2560 s
    assert any(v.startswith("session_too_long") for v in check_answer(parse_coach_answer(long_day), c))
    assert accepts(compiler, constrained_plan_schema(c), long_day)  # the plain grammar cannot see the sum
    bounded = constrained_plan_schema(c, bound_session=True)
    assert not accepts(compiler, bounded, long_day)
    assert accepts(compiler, bounded, plan(exercises=["Bodyweight Squat 4x10 RIR2 120s"] * 2))  # 1280 s
    # At the boundary: k exercises of exactly 1/k of the limit each pass the checker and the grammar.
    for k in (1, 2, 3, 4):
        sets = 2
        rest = int(session_limit_seconds(30) / k // sets) - 40
        text = plan(exercises=[f"Bodyweight Squat {sets}x10 RIR2 {min(rest, 600)}s"] * k)
        assert accepts(compiler, bounded, text), k
        assert check_answer(parse_coach_answer(text), c) == []
        over = plan(exercises=[f"Bodyweight Squat {sets}x10 RIR2 {rest + 1}s"] * k)
        assert rest + 1 > 600 or not accepts(compiler, bounded, over), k


def test_the_cache_key_follows_what_the_grammar_depends_on():
    assert grammar_key(constraints()) == grammar_key(constraints(session_minutes=60))  # not in the plain grammar
    assert grammar_key(constraints(), bound_session=True) != grammar_key(constraints(session_minutes=60),
                                                                         bound_session=True)
    assert grammar_key(constraints()) != grammar_key(constraints(), bound_session=True)
    assert grammar_key(constraints()) != grammar_key(constraints(rir_floor=3))
    assert grammar_key(constraints()) != grammar_key(constraints(), referral=True)
    assert grammar_key(constraints(days_per_week=3), referral=True) == grammar_key(constraints(), referral=True)
