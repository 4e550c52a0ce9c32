"""Check a coach answer against the constraints of the query it answers.

Used by teacher capture (to reject and repair bad answers), the dataset build
(to keep only adherent answers) and evaluation (constraint adherence). Each
violation is a short machine-readable code followed by a human detail, e.g.
``equipment: 'Barbell Back Squat' needs barbell, squat_rack``.
"""

from __future__ import annotations

from typing import Iterable

from fitsense.catalogue import BY_NAME
from fitsense.plan import CoachAnswer
from fitsense.records import QueryConstraints

# Seconds of work per set when estimating session length (rest comes from the plan).
WORK_SECONDS_PER_SET = 40
# Warm-up and transitions are not in the plan; allow this much slack on the session length.
SESSION_SLACK = 1.15

VIOLATION_CODES = (
    "referral_missing",
    "referral_unexpected",
    "days_per_week",
    "too_many_exercises",
    "session_too_long",
    "unknown_exercise",
    "equipment",
    "contraindicated",
    "rir_floor",
)


def session_seconds(sets_and_rests: Iterable[tuple[int, int]]) -> int:
    """Estimated length of a session from each exercise's (sets, rest seconds): the one formula for it."""
    return sum(sets * (WORK_SECONDS_PER_SET + rest_s) for sets, rest_s in sets_and_rests)


def session_limit_seconds(session_minutes: int) -> float:
    """The longest a day may take before it breaks the session constraint (slack included)."""
    return session_minutes * 60 * SESSION_SLACK


def max_rest_for(sets: int, seconds: float) -> int:
    """The longest rest (s) an exercise of ``sets`` sets may have to take at most ``seconds``; < 0: none fits."""
    return int(seconds // sets) - WORK_SECONDS_PER_SET


def exercises_seconds(exercises) -> int:
    """Estimated length of a day's exercises (``PlannedExercise`` objects)."""
    return session_seconds((ex.sets, ex.rest_s) for ex in exercises)


def check_answer(answer: CoachAnswer, constraints: QueryConstraints) -> list[str]:
    """Every way ``answer`` breaks ``constraints``; an empty list means adherent."""
    c = constraints
    violations: list[str] = []
    if c.referral_required:
        if not answer.safety.referral_required:
            violations.append("referral_missing: the query needs a clinician referral")
        # A referral may still carry a gentle plan, so the plan is checked below too.
    elif answer.safety.referral_required:
        violations.append("referral_unexpected: referral given where none is required")

    if answer.days and len(answer.days) != c.days_per_week:
        violations.append(f"days_per_week: {len(answer.days)} days, asked for {c.days_per_week}")
    elif not answer.days and not c.referral_required:
        violations.append(f"days_per_week: no training days, asked for {c.days_per_week}")

    have = set(c.available_equipment) | {"bodyweight"}
    avoid = set(c.avoid_exercises)
    for day in answer.days:
        if len(day.exercises) > c.max_exercises_per_day:
            violations.append(
                f"too_many_exercises: day {day.day} has {len(day.exercises)}, limit {c.max_exercises_per_day}"
            )
        seconds = exercises_seconds(day.exercises)
        if seconds > session_limit_seconds(c.session_minutes):
            minutes = seconds / 60
            violations.append(f"session_too_long: day {day.day} takes ~{minutes:.0f} min, limit {c.session_minutes}")
        for ex in day.exercises:
            known = BY_NAME.get(ex.name)
            if known is None:
                violations.append(f"unknown_exercise: {ex.name!r} is not in the catalogue")
                continue
            missing = [e for e in known.equipment if e not in have]
            if missing:
                violations.append(f"equipment: {ex.name!r} needs {', '.join(missing)}")
            if ex.name in avoid:
                violations.append(f"contraindicated: {ex.name!r} must be avoided")
            if ex.rir < c.rir_floor:
                violations.append(f"rir_floor: {ex.name!r} at RIR {ex.rir}, floor {c.rir_floor}")
    return violations


def violation_code(violation: str) -> str:
    return violation.split(":", 1)[0]
