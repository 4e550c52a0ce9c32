"""Core contracts: the plan schema parser, the constraint checker, atomic writes, resume fingerprints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from fitsense.app.pipeline import STAGE_NAMES, fingerprint, get_stage
from fitsense.catalogue import (
    BY_NAME,
    CATALOGUE,
    EQUIPMENT,
    exercises_to_avoid,
    usable_exercises,
)
from fitsense.config import load_params
from fitsense.constraints import check_answer, violation_code
from fitsense.plan import AnswerParseError, CoachAnswer, parse_coach_answer
from fitsense.records import QueryConstraints
from fitsense.runs import (
    RunContext,
    atomic_open,
    read_jsonl,
    write_jsonl,
    write_manifest,
)


def _answer(**overrides) -> dict:
    answer = {
        "plan_name": "Home strength",
        "days": [
            {"day": 1, "name": "Full body A", "exercises": [
                {"name": "Goblet Squat", "sets": 3, "reps": 8, "rir": 2, "rest_s": 120},
                {"name": "Push-Up", "sets": 3, "reps": 10, "rir": 2, "rest_s": 60},
            ]},
            {"day": 3, "name": "Full body B", "exercises": [
                {"name": "Dumbbell Romanian Deadlift", "sets": 3, "reps": 10, "rir": 2, "rest_s": 90},
                {"name": "Banded Row", "sets": 3, "reps": 12, "rir": 2, "rest_s": 60},
            ]},
        ],
        "notes": "Add a rep each week while RIR stays at 2.",
        "safety": {"flags": [], "referral_required": False},
    }
    answer.update(overrides)
    return answer


def _constraints(**overrides) -> QueryConstraints:
    base = dict(days_per_week=2, session_minutes=45, max_exercises_per_day=4,
                available_equipment=["bodyweight", "dumbbells", "resistance_bands"],
                avoid_exercises=[], rir_floor=1, referral_required=False)
    return QueryConstraints(**(base | overrides))


# --------------------------------------------------------------------------- plan schema


def test_parse_accepts_fenced_and_reasoning_wrapped_answers():
    text = json.dumps(_answer())
    assert parse_coach_answer(text).plan_name == "Home strength"
    assert parse_coach_answer(f"<think>pick squats</think>\n```json\n{text}\n```").days[1].day == 3
    assert parse_coach_answer(f"Sure! Here is your plan: {text} Good luck.").notes


@pytest.mark.parametrize("text, reason", [
    ("I cannot help with that.", "no JSON object"),
    ('{"plan_name": "x", "days": [', "truncated"),
    ('{"plan_name": "x", "days": [], "safety": {"referral_required": false}}', "referral_required"),
    (json.dumps(_answer(extra_key=1)), "extra_key"),
])
def test_parse_rejects_bad_answers_with_a_reason(text, reason):
    with pytest.raises(AnswerParseError) as err:
        parse_coach_answer(text)
    assert reason in err.value.reason


def test_out_of_range_set_is_named_by_path():
    bad = _answer()
    bad["days"][0]["exercises"][1]["rir"] = 9
    with pytest.raises(AnswerParseError, match=r"days\.0\.exercises\.1\.rir"):
        parse_coach_answer(json.dumps(bad))


def test_canonical_json_round_trips():
    answer = CoachAnswer.model_validate(_answer())
    assert parse_coach_answer(answer.to_json()) == answer
    assert '": ' not in answer.to_json() and '", "' not in answer.to_json()  # compact: fewer tokens


def test_exercises_are_prescription_strings_in_json_and_typed_in_python():
    answer = CoachAnswer.model_validate(_answer())
    day = json.loads(answer.to_json())["days"][0]
    assert day["exercises"] == ["Goblet Squat 3x8 RIR2 120s", "Push-Up 3x10 RIR2 60s"]
    parsed = parse_coach_answer(answer.to_json())
    squat = parsed.days[0].exercises[0]
    assert (squat.name, squat.sets, squat.reps, squat.rir, squat.rest_s) == ("Goblet Squat", 3, 8, 2, 120)
    # names with digits or hyphens survive: only the trailing dose is parsed
    odd = CoachAnswer.model_validate(_answer(days=[{"day": 1, "name": "A", "exercises": ["90/90 Hip-Switch 2x8 RIR3 0s"]}]))
    assert odd.days[0].exercises[0].name == "90/90 Hip-Switch" and odd.days[0].exercises[0].rest_s == 0


@pytest.mark.parametrize("exercise", ["Push-Up 3x10 60s", "Push-Up", "3x10 RIR2 60s", "Push-Up 3x10 RIR 2 60s"])
def test_malformed_prescription_is_named_by_path(exercise):
    bad = _answer()
    bad["days"][1]["exercises"][0] = exercise
    with pytest.raises(AnswerParseError, match=r"days\.1\.exercises\.0: .*<name> <sets>x<reps> RIR<rir> <rest>s"):
        parse_coach_answer(json.dumps(bad))


def test_out_of_range_prescription_is_rejected():
    bad = _answer()
    bad["days"][0]["exercises"][0] = "Goblet Squat 3x8 RIR9 120s"
    with pytest.raises(AnswerParseError, match=r"days\.0\.exercises\.0\.rir"):
        parse_coach_answer(json.dumps(bad))


# --------------------------------------------------------------------------- constraint checker


def test_adherent_answer_has_no_violations():
    assert check_answer(CoachAnswer.model_validate(_answer()), _constraints()) == []


@pytest.mark.parametrize("change, code", [
    (dict(days_per_week=3), "days_per_week"),
    (dict(max_exercises_per_day=1), "too_many_exercises"),
    (dict(session_minutes=10), "session_too_long"),
    (dict(available_equipment=["bodyweight"]), "equipment"),
    (dict(avoid_exercises=["Push-Up"]), "contraindicated"),
    (dict(rir_floor=3), "rir_floor"),
    (dict(referral_required=True), "referral_missing"),
])
def test_each_broken_constraint_is_reported(change, code):
    violations = check_answer(CoachAnswer.model_validate(_answer()), _constraints(**change))
    assert code in {violation_code(v) for v in violations}, violations


def test_unknown_exercise_and_unneeded_referral_are_reported():
    answer = _answer(safety={"flags": ["chest_pain"], "referral_required": True, "reason": "see a doctor"})
    answer["days"][0]["exercises"][0]["name"] = "Magic Squat"
    codes = {violation_code(v) for v in check_answer(CoachAnswer.model_validate(answer), _constraints())}
    assert {"unknown_exercise", "referral_unexpected"} <= codes


def test_catalogue_filters_by_equipment_and_contraindications():
    assert len(BY_NAME) == len(CATALOGUE)
    assert all(set(e.equipment) <= set(EQUIPMENT) for e in CATALOGUE)
    avoid = exercises_to_avoid(["knee"], ["osteoporosis"])
    assert "Barbell Back Squat" in avoid and "Barbell Deadlift" in avoid and "Crunch" in avoid
    usable = usable_exercises(["bodyweight"], avoid)
    assert usable and all(e.equipment == ("bodyweight",) and e.name not in avoid for e in usable)


# --------------------------------------------------------------------------- runs and resume


def test_atomic_open_leaves_old_file_when_writer_dies(tmp_path):
    target = tmp_path / "records.jsonl"
    write_jsonl(target, [{"a": 1}])
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write('{"a": 2}\n{"a": ')
            raise RuntimeError("killed")
    assert read_jsonl(target) == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]


def test_killed_writer_process_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "big.jsonl"
    code = (
        "import sys, time; from fitsense.runs import atomic_open\n"
        f"with atomic_open({str(target)!r}) as fh:\n"
        "    fh.write('x' * 1000); fh.flush(); print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists()


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"queries\.jsonl:2"):
        read_jsonl(path)


def test_jsonl_reads_what_the_json_module_reads(tmp_path):
    """Lines go through orjson where it can; what it refuses (NaN, integers beyond 64 bits, lone
    surrogates) the json module reads, and a bad line keeps the json module's message."""
    path = tmp_path / "records.jsonl"
    rows = [{"a": 1.5, "s": "é\u2028"}, {"x": float("nan"), "inf": float("inf")}, {"big": 2**70},
            {"lone": "\ud800"}, {"b": [1, {"c": None}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = read_jsonl(path)
    assert read[1]["x"] != read[1]["x"] and read[1]["inf"] == float("inf")
    assert [read[0], read[2], read[3], read[4]] == [rows[0], rows[2], rows[3], rows[4]]
    path.write_text('{"a": 1}\n{"a": 1,}\n')
    with pytest.raises(ValueError, match=r"records\.jsonl:2: invalid record: not valid JSON \(Expecting"):
        read_jsonl(path)


def test_bare_and_wrapped_answers_parse_alike():
    """A response that is only the JSON object takes the fast path; wrapped, fenced or with a reasoning
    block it takes the scan: the same answer either way."""
    text = CoachAnswer.model_validate(_answer()).to_json()
    bare = parse_coach_answer(text)
    assert parse_coach_answer(f"```json\n{text}\n```") == bare == parse_coach_answer(f" {text}\n")
    other = json.dumps(_answer(plan_name="Inner"))
    assert parse_coach_answer(f"<THINK>{other}</think>{text}") == bare
    with pytest.raises(AnswerParseError, match="invalid JSON"):
        parse_coach_answer('{"plan_name": "x",}')


def test_manifest_records_hashes_and_rows(tmp_path):
    ctx = RunContext.create(load_params(None, {"run.artifacts_dir": str(tmp_path)}), "r1")
    out = ctx.stage_dir("queries") / "queries.jsonl"
    write_jsonl(out, [{"q": 1}, {"q": 2}])
    manifest = write_manifest(ctx, "queries", {"queries": out}, rows={"queries": 2})
    assert manifest["outputs"]["queries"]["path"] == "queries.jsonl"
    assert len(manifest["outputs"]["queries"]["sha256"]) == 64
    assert ctx.manifest("queries")["rows"] == {"queries": 2}
    with pytest.raises(FileNotFoundError, match="run the 'teacher' stage"):
        ctx.require("teacher", "records.jsonl")


def test_fingerprint_changes_only_downstream_of_a_param(tmp_path):
    base = RunContext.create(load_params(None), "r")
    changed = RunContext.create(load_params(None, {"training.lora.r": 4}), "r")
    same = [s for s in STAGE_NAMES if fingerprint(base, s) == fingerprint(changed, s)]
    assert same == ["synthetic", "queries", "teacher", "dataset", "quality"]
    reseeded = RunContext.create(load_params(None, {"seed": 7}), "r")
    assert all(fingerprint(base, s) != fingerprint(reseeded, s) for s in STAGE_NAMES)
    with pytest.raises(KeyError, match="unknown stage"):
        get_stage("nope")


def test_jsonl_lines_are_byte_for_byte_what_the_json_module_writes():
    """orjson writes the fast path; exponent-form floats, inf/nan, big integers and plain dicts go the json
    module's way, so a line never depends on which path wrote it."""
    import json as std

    from pydantic import BaseModel

    from fitsense.runs import jsonl_line

    class Row(BaseModel):
        x: float
        n: int = 0
        d: dict = {}
        s: str = ""

    for v in (1e-05, 1e16, 1.5e-7, 1.2345678901234568e17, 0.1 + 0.2, 5e-324, 2.5, -0.0, 1e300, 1e-4, 172.3,
              float("inf"), float("nan"), -3.5e-9):
        for row in (Row(x=v), Row(x=v, d={"b": [v, 3], "a": {"z": 1, "y": "é\u2028"}}),
                    Row(x=v, s="0.00001 e5"), Row(x=1.0, n=2**70), {"x": v, "k": [1, "é"]}):
            data = row.model_dump(mode="json") if isinstance(row, BaseModel) else row
            expected = std.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"
            assert jsonl_line(row) == expected.encode(), (v, row)
