"""The per-request plan grammar: the plan schema narrowed to what one request allows.

``constrained_plan_schema(constraints, referral)`` is a JSON Schema that a
structured-generation library (xgrammar, in ``fitsense.evaluation.inference``)
compiles into a grammar, so a guided student can only write answers that

- name catalogue exercises usable with the request's equipment and not on its avoid list;
- have exactly ``days_per_week`` days, numbered 1..n, named from the teacher's day vocabulary;
- have at most ``max_exercises_per_day`` exercises a day, sets/reps/rest within the plan
  schema's ranges and RIR at or above the floor;
- keep plan name, notes, flags and reason short plain text (no markup, no quotes or braces), notes
  at most ``MAX_NOTE_CLAUSES`` clauses of ``NOTE_CLAUSE_CHARS`` (a repeating student must stop);
- or, when ``referral`` is set (the safety screen fired or the request requires it), are a
  referral: no days, ``referral_required: true`` and a reason.

The schema is a contract: it is never stricter than the teacher (a property
test checks every teacher answer of a dataset against its own query's schema).

Session length is a sum over the day, which a JSON Schema cannot bound. With
``bound_session=True`` the schema bounds each exercise instead: a day of ``k``
exercises allows each one at most ``1/k`` of the session limit (the formula and
slack of ``fitsense.constraints``), ``anyOf`` over k, so no accepted day runs
long. That is stricter than the teacher on the ~1% of its days whose volume
top-ups make one exercise longer than its share, so inference uses it only to
regenerate an answer whose session ran long under the plain schema.
"""

from __future__ import annotations

import hashlib
import json
import re

from fitsense.catalogue import usable_exercises
from fitsense.constraints import max_rest_for, session_limit_seconds
from fitsense.errors import UserError
from fitsense.plan import DAY_KINDS, MAX_NOTE_CLAUSES, NOTE_CLAUSE_CHARS, PlanDay, PlannedExercise, day_letter
from fitsense.records import QueryConstraints

# Plain-text fields: letters, digits and light punctuation only, so no markup, JSON or code fits.
_TEXT = r"A-Za-z0-9 ,.;:'()+/%\-"
PLAN_NAME_PATTERN = r"^[A-Z0-9][A-Za-z0-9 /:\-]{2,59}$"
# Notes are bounded clause by clause, so a student that starts repeating itself must close them: xgrammar
# 0.2.8 accepts short bounded repeats in the plan schema but fails a grammar check on one like {0,599}.
_CLAUSE = rf"[{_TEXT.replace(';', '')}]{{0,{NOTE_CLAUSE_CHARS - 1}}}"
NOTES_PATTERN = rf"^([A-Z+]{_CLAUSE}(; [A-Za-z+]{_CLAUSE}){{0,{MAX_NOTE_CLAUSES - 1}}})?$"
REASON_PATTERN = rf"^['A-Z][{_TEXT}]+$"
FLAG_PATTERN = r"^[a-z][a-z0-9_:]{2,39}$"
MAX_FLAGS = 4
_REGEX_SPECIAL = re.compile(r"([.^$*+?()\[\]{}|\\])")


class NoSafeExerciseError(UserError, ValueError):
    """A request whose equipment and avoid list leave no catalogue exercise to prescribe."""


def _field_range(model, name: str) -> tuple[int, int]:
    """(ge, le) of an integer field of a plan model: the schema's own ranges, declared once in fitsense.plan."""
    meta = model.model_fields[name].metadata
    low = next(m.ge for m in meta if hasattr(m, "ge"))
    high = next(m.le for m in meta if hasattr(m, "le"))
    return low, high


def _same_length_range(low: str, high: str) -> list[str]:
    """Regex pieces for the decimal strings low..high, both of the same length."""
    if low == high:
        return [low]
    if len(low) == 1:
        return [f"[{low}-{high}]"]
    if low[0] == high[0]:
        return [low[0] + rest for rest in _same_length_range(low[1:], high[1:])]
    tail = len(low) - 1
    pieces, first, last = [], int(low[0]), int(high[0])
    if low[1:] != "0" * tail:
        pieces += [low[0] + rest for rest in _same_length_range(low[1:], "9" * tail)]
        first += 1
    if high[1:] != "9" * tail:
        last -= 1
    if first <= last:
        pieces.append((str(first) if first == last else f"[{first}-{last}]") + "[0-9]" * tail)
    if high[1:] != "9" * tail:
        pieces += [high[0] + rest for rest in _same_length_range("0" * tail, high[1:])]
    return pieces


def int_range_regex(low: int, high: int) -> str:
    """A compact regex for the decimal integers low..high (no leading zeros), e.g. 0..600 ->
    ``([0-9]|[1-9][0-9]|[1-5][0-9][0-9]|600)``: a few digit classes rather than 601 alternatives,
    which keeps the grammar matcher's per-token work small."""
    pieces = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        lo, hi = max(low, 10 ** (digits - 1) if digits > 1 else 0), min(high, 10 ** digits - 1)
        if lo <= hi:
            pieces += _same_length_range(str(lo), str(hi))
    return "(" + "|".join(pieces) + ")"


def _literal(text: str) -> str:
    return _REGEX_SPECIAL.sub(r"\\\1", text)


def allowed_exercise_names(constraints: QueryConstraints) -> list[str]:
    """Catalogue names usable with the request's equipment, minus its avoid list."""
    return [e.name for e in usable_exercises(constraints.available_equipment, constraints.avoid_exercises)]


def prescription_pattern(constraints: QueryConstraints, max_seconds: float | None = None) -> str:
    """``<name> <sets>x<reps> RIR<rir> <rest>s`` with the request's names and RIR floor; with ``max_seconds``,
    only the sets and rest whose estimated time (``fitsense.constraints.session_seconds``) fits in it."""
    names = allowed_exercise_names(constraints)
    if not names:
        raise NoSafeExerciseError("no safe exercise for this equipment and avoid list "
                                  f"(equipment {constraints.available_equipment}, "
                                  f"avoiding {len(constraints.avoid_exercises)} exercises)")
    sets_min, sets_max = _field_range(PlannedExercise, "sets")
    rest_min, rest_max = _field_range(PlannedExercise, "rest_s")
    reps = int_range_regex(*_field_range(PlannedExercise, "reps"))
    _, rir_max = _field_range(PlannedExercise, "rir")
    rir = int_range_regex(constraints.rir_floor, rir_max)
    if max_seconds is None:
        volume = f"{int_range_regex(sets_min, sets_max)}x{reps} RIR{rir} {int_range_regex(rest_min, rest_max)}s"
    else:
        by_sets = [(n, min(rest_max, max_rest_for(n, max_seconds))) for n in range(sets_min, sets_max + 1)]
        options = [f"{n}x{reps} RIR{rir} {int_range_regex(rest_min, top)}s" for n, top in by_sets if top >= rest_min]
        if not options:
            raise NoSafeExerciseError(f"no exercise fits {max_seconds / 60:.0f} min")
        volume = "(" + "|".join(options) + ")"
    alternatives = "|".join(_literal(n) for n in names)
    return f"^({alternatives}) {volume}$"


def _string(pattern: str) -> dict:
    return {"type": "string", "pattern": pattern}


def _object(properties: dict) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _exercises_schema(constraints: QueryConstraints, max_exercises: int, bound_session: bool) -> dict:
    """1..max_exercises exercises; with ``bound_session``, k of them take at most 1/k of the session limit each."""
    if not bound_session:
        item = _string(prescription_pattern(constraints))
        return {"type": "array", "items": item, "minItems": 1, "maxItems": max_exercises}
    limit = session_limit_seconds(constraints.session_minutes)
    options = []
    for k in range(1, max_exercises + 1):
        try:
            item = _string(prescription_pattern(constraints, limit / k))
        except NoSafeExerciseError:
            if k == 1:
                raise  # nothing usable, or no exercise fits the whole session
            break  # more exercises only leave each one less time
        options.append({"type": "array", "items": item, "minItems": k, "maxItems": k})
    return options[0] if len(options) == 1 else {"anyOf": options}


def _day_schema(number: int, exercises: dict) -> dict:
    kinds = "|".join(_literal(k) for k in DAY_KINDS)
    return _object({
        "day": {"const": number},
        "name": _string(f"^({kinds}) {day_letter(number)}$"),
        "exercises": exercises,
    })


def _safety_schema(referral: bool) -> dict:
    properties = {
        "flags": {"type": "array", "items": _string(FLAG_PATTERN), "maxItems": MAX_FLAGS},
        "referral_required": {"const": referral},
    }
    if referral:
        properties["reason"] = _string(REASON_PATTERN)
    return _object(properties)


def constrained_plan_schema(constraints: QueryConstraints, referral: bool = False, *,
                            bound_session: bool = False) -> dict:
    """The JSON Schema of every answer this request allows (see the module docstring).

    ``referral`` (the safety screen's verdict) or ``constraints.referral_required`` selects the
    referral branch; ``bound_session`` the per-exercise session bound. Raises ``NoSafeExerciseError``
    when a plan is needed but no exercise is usable.
    """
    if referral or constraints.referral_required:
        days: dict = {"type": "array", "maxItems": 0}
        safety = _safety_schema(True)
    else:
        n = constraints.days_per_week
        max_per_day = min(constraints.max_exercises_per_day, PlanDay.model_fields["exercises"].metadata[-1].max_length)
        exercises = _exercises_schema(constraints, max_per_day, bound_session)
        days = {"type": "array", "prefixItems": [_day_schema(i, exercises) for i in range(1, n + 1)],
                "items": False, "minItems": n, "maxItems": n}
        safety = _safety_schema(False)
    return _object({"plan_name": _string(PLAN_NAME_PATTERN), "days": days,
                    "notes": _string(NOTES_PATTERN), "safety": safety})


def grammar_key(constraints: QueryConstraints, referral: bool = False, *, bound_session: bool = False) -> str:
    """A cache key for the compiled grammar: the constraint fields the schema depends on."""
    referral = referral or constraints.referral_required
    fields = {"referral": referral}
    if not referral:
        if bound_session:
            fields["session_minutes"] = constraints.session_minutes
        fields.update(days=constraints.days_per_week, max_exercises=constraints.max_exercises_per_day,
                      rir_floor=constraints.rir_floor, names=allowed_exercise_names(constraints))
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]

