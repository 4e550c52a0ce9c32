"""The plan schema: the JSON every coach answer must follow.

This is the single contract between the teacher (which writes it), data
validation (which checks it), training (which teaches the student to write
it) and evaluation (which scores it). Plans carry no weights: load is set by
reps and RIR (reps in reserve), so a plan is safe for any strength level.

Each exercise prescribes ``sets`` working sets of ``reps`` target reps at
``rir`` target reps-in-reserve, with ``rest_s`` seconds rest between sets; the
SQL loader expands that into one ``plan_sets`` row per set. In JSON an exercise
is one prescription string, ``"Goblet Squat 3x10 RIR2 90s"`` (name, sets x
reps, RIR, rest), the notation coaches write; in Python it is a
``PlannedExercise`` with typed fields. The text is compact on purpose: the
student is trained on this exact text, and the string form takes a third fewer
tokens than an object per exercise (a CPU budget counts every token). The
object form ``{"name", "sets", "reps", "rir", "rest_s"}`` is still accepted on
input.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Annotated, Any

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

Name = Annotated[str, Field(min_length=1, max_length=80)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlannedExercise(_Strict):
    name: Name  # a catalogue name (checked against the catalogue by the constraint checker)
    sets: int = Field(ge=1, le=10)
    reps: int = Field(ge=1, le=50)
    rir: int = Field(ge=0, le=5)
    rest_s: int = Field(ge=0, le=600)

    def prescription(self) -> str:
        return f"{self.name} {self.sets}x{self.reps} RIR{self.rir} {self.rest_s}s"


PRESCRIPTION = re.compile(r"^(?P<name>\S.*?) (?P<sets>\d+)x(?P<reps>\d+) RIR(?P<rir>\d+) (?P<rest_s>\d+)s$")
PRESCRIPTION_FORMAT = "<name> <sets>x<reps> RIR<rir> <rest>s"


def _parse_prescription(value: Any) -> Any:
    """``"Push-Up 3x8 RIR2 90s"`` -> field dict; objects pass through to normal validation."""
    return _prescription_fields(value) if isinstance(value, str) else value


@lru_cache(maxsize=1 << 16)  # a few thousand distinct prescriptions recur across every answer parsed
def _prescription_fields(value: str) -> dict:
    match = PRESCRIPTION.match(value.strip())
    if match is None:
        raise ValueError(f"exercise {value[:60]!r} is not '{PRESCRIPTION_FORMAT}'")
    return {k: (v if k == "name" else int(v)) for k, v in match.groupdict().items()}


Exercise = Annotated[
    PlannedExercise,
    BeforeValidator(_parse_prescription),
    PlainSerializer(PlannedExercise.prescription, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\S.*? \d+x\d+ RIR\d+ \d+s$",
                    "description": f"'{PRESCRIPTION_FORMAT}', e.g. 'Goblet Squat 3x10 RIR2 90s'"}),
]


# The teacher's day vocabulary: a day is named "<kind> <letter>", the letter its position (day 1 is A).
DAY_KINDS = ("Full Body", "Upper", "Lower")


def day_letter(number: int) -> str:
    return chr(64 + number)


def day_name(kind: str, number: int) -> str:
    return f"{kind} {day_letter(number)}"


class PlanDay(_Strict):
    day: int = Field(ge=1, le=7)  # order within the week
    name: Name
    exercises: list[Exercise] = Field(min_length=1, max_length=12)


class SafetyBlock(_Strict):
    flags: list[str] = Field(default_factory=list)
    referral_required: bool = False
    reason: str | None = None


# Notes are "; "-joined clauses: what changed, then each pattern the week cannot train and why.
NOTE_CLAUSE_CHARS = 100
MAX_NOTE_CLAUSES = 12


class CoachAnswer(_Strict):
    plan_name: Name
    days: list[PlanDay] = Field(max_length=7)
    notes: str = Field(default="", max_length=MAX_NOTE_CLAUSES * (NOTE_CLAUSE_CHARS + 2))
    safety: SafetyBlock = Field(default_factory=SafetyBlock)

    @model_validator(mode="after")
    def _plan_or_referral(self) -> "CoachAnswer":
        if not self.days and not self.safety.referral_required:
            raise ValueError("a plan without days must set safety.referral_required with a reason")
        if self.safety.referral_required and not self.safety.reason:
            raise ValueError("safety.reason is required when referral_required is true")
        orders = [d.day for d in self.days]
        if len(set(orders)) != len(orders):
            raise ValueError(f"day numbers must be unique, got {orders}")
        return self

    def to_json(self) -> str:
        """The canonical compact text form (what the teacher emits and the student learns)."""
        return self.model_dump_json(exclude_none=True)


def plan_json_schema() -> dict:
    """JSON Schema of a coach answer, for prompts and for OpenAI structured output."""
    return CoachAnswer.model_json_schema()


class AnswerParseError(ValueError):
    """A response that is not a schema-valid coach answer; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


def extract_json_text(text: str) -> str:
    """Strip reasoning blocks and code fences, return the first balanced JSON object."""
    text = _THINK.sub("", text)
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    start = text.find("{")
    if start < 0:
        raise AnswerParseError("no JSON object in the response")
    depth, in_str, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    raise AnswerParseError("truncated JSON: unbalanced braces")


def _bare_object(text: str) -> dict | None:
    """The response parsed whole when it is nothing but one JSON object (a teacher's answer, a guided
    one): what ``extract_json_text`` would find, without its scan. None: take the general path."""
    if text[:1] != "{" or text[-1:] != "}" or "```" in text or "</think>" in text.lower():
        return None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def parse_coach_answer(text: str) -> CoachAnswer:
    """Parse a raw model response into a validated CoachAnswer or raise AnswerParseError."""
    data = _bare_object(text)
    if data is None:
        raw = extract_json_text(text)
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise AnswerParseError(f"invalid JSON: {exc.msg} at char {exc.pos}") from None
    try:
        return CoachAnswer.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise AnswerParseError(f"schema: {where}: {first['msg']}") from None
