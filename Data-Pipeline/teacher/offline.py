"""The offline expert teacher: a deterministic rule-based coach.

It writes a ``CoachAnswer`` from a query's structured ``context`` and
``constraints`` (not from the prompt text), so its answers are the quality bar
the student is distilled towards:

- plan creation (and safety adjustments without a current plan): a fresh plan
  from the shared planner (``fitsense.data.planning.build_plan``): equipment,
  avoid list, days, exercises per day, session length, dose by goal and
  experience, RIR floor;
- plan modification: the current plan conformed to the changed constraints
  (swaps keep the movement pattern, shorter sessions lose rest, sets, then
  exercises; a new day count gets a new split);
- progress adaptation: per logged trend, progressing -> +reps (or +1 set at the
  top of the range), stalled -> a new rep range or a variation of the same
  pattern, regressing -> deload (one set fewer, +1 RIR);
- safety: newly contraindicated exercises are removed and flagged; red-flag
  symptoms get a clinician referral and no plan.

Answers are compact (2-5 days in practice, at most ``max_exercises_per_day``)
because the student is trained on CPU.
"""

from __future__ import annotations

import hashlib

from fitsense.catalogue import BY_NAME, usable_exercises
from fitsense.constraints import session_seconds
from fitsense.data import planning
from fitsense.errors import InputDataError
from fitsense.plan import CoachAnswer, PlanDay, PlannedExercise, SafetyBlock
from fitsense.records import CoachingQuery, QueryConstraints

MIN_REST_S = 30
# Rep ranges by goal (low, high); progress adaptation moves within them.
REP_RANGE = {
    "strength": (3, 6),
    "muscle_gain": (6, 12),
    "fat_loss": (10, 15),
    "endurance": (12, 20),
    "general_health": (8, 12),
}
MAX_SETS = 5


def _variant(query: CoachingQuery) -> int:
    """A stable per-user plan variant, so users with equal facts still get varied (but fixed) plans."""
    return int.from_bytes(hashlib.blake2b(str(query.user_id).encode(), digest_size=2).digest(), "little") % 4


def _fresh_plan(query: CoachingQuery, days: int | None = None) -> CoachAnswer:
    c, ctx = query.constraints, query.context
    name, built = planning.build_plan(
        tuple(c.available_equipment), tuple(c.avoid_exercises), days or c.days_per_week, c.session_minutes,
        ctx.primary_goal, ctx.profile.experience, c.rir_floor, _variant(query),
    )
    answer = CoachAnswer.model_validate(planning.plan_to_answer(name, built))
    return _conform(answer, c)


def _seconds(exercises: list[PlannedExercise]) -> int:
    return session_seconds((e.sets, e.rest_s) for e in exercises)


def _substitute(name: str, usable: dict[str, object], taken: set[str]) -> str | None:
    """A usable exercise of the same movement pattern (then the same muscle) not already in the day."""
    old = BY_NAME.get(name)
    if old is None:
        return None
    for same in (lambda e: e.pattern == old.pattern, lambda e: e.primary_muscle == old.primary_muscle):
        options = sorted(n for n, e in usable.items() if same(e) and n not in taken and n != name)
        if options:
            return options[0]
    return None


def _conform(answer: CoachAnswer, c: QueryConstraints) -> CoachAnswer:
    """Make a plan honour the constraints: substitute unusable exercises, RIR floor, limits, session length."""
    usable = {e.name: e for e in usable_exercises(c.available_equipment, c.avoid_exercises)}
    days = []
    for day in answer.days:
        exercises: list[PlannedExercise] = []
        taken = {e.name for e in day.exercises if e.name in usable}
        for ex in day.exercises:
            name = ex.name
            if name not in usable:
                name = _substitute(name, usable, taken)
                if name is None:
                    continue
                taken.add(name)
            if any(e.name == name for e in exercises):
                continue
            exercises.append(ex.model_copy(update={"name": name, "rir": min(5, max(ex.rir, c.rir_floor))}))
        exercises = exercises[: c.max_exercises_per_day]
        budget = c.session_minutes * 60
        # Fit the session: shorten rests, then drop sets, then drop exercises.
        while exercises and _seconds(exercises) > budget:
            if max(e.rest_s for e in exercises) > MIN_REST_S:
                exercises = [e.model_copy(update={"rest_s": max(MIN_REST_S, e.rest_s - 15)}) for e in exercises]
            elif max(e.sets for e in exercises) > 2:
                exercises = [e.model_copy(update={"sets": max(2, e.sets - 1)}) for e in exercises]
            elif len(exercises) > 1:
                exercises.pop()
            elif exercises[0].sets > 1:
                exercises[0] = exercises[0].model_copy(update={"sets": exercises[0].sets - 1})
            else:
                break
        if not exercises:  # everything was unusable: fall back to anything safe for this person
            fallback = sorted(usable)[:1]
            exercises = [PlannedExercise(name=n, sets=2, reps=10, rir=max(2, c.rir_floor), rest_s=60) for n in fallback]
        days.append(PlanDay(day=day.day, name=day.name, exercises=exercises))
    return answer.model_copy(update={"days": days})


def _notes_join(parts: list[str], fallback: str) -> str:
    text = "; ".join(p for p in parts if p) or fallback
    return (text[0].upper() + text[1:]).rstrip(".")[:590] + "."


def _changed_names(before: dict, after: CoachAnswer) -> list[tuple[str, str]]:
    """(old, new) exercise swaps, position by position, for the notes."""
    swaps = []
    for old_day, new_day in zip(before["days"], after.days):
        for old, new in zip(old_day["exercises"], new_day.exercises):
            if old["name"] != new.name and (old["name"], new.name) not in swaps:
                swaps.append((old["name"], new.name))
    return swaps


def _modify(query: CoachingQuery) -> CoachAnswer:
    c, current = query.constraints, query.context.current_plan
    if not current or len(current["days"]) != c.days_per_week:
        answer = _fresh_plan(query)
        note = f"Rebuilt as a {c.days_per_week}-day plan to match your new schedule"
        return answer.model_copy(update={"notes": _notes_join([note], "")})
    before = CoachAnswer.model_validate(current)
    answer = _conform(before, c)
    parts = [f"swapped {old} for {new}" for old, new in _changed_names(current, answer)[:3]]
    if any(_seconds(d.exercises) < _seconds(b.exercises) for d, b in zip(answer.days, before.days)):
        parts.append(f"trimmed sessions to fit {c.session_minutes} minutes")
    return answer.model_copy(update={"notes": _notes_join(parts, "Plan kept; it already fits your request")})


def _adapt(query: CoachingQuery) -> CoachAnswer:
    """Progress adaptation: adjust each trended exercise, then conform to the constraints."""
    c, ctx = query.constraints, query.context
    if not ctx.current_plan:
        return _fresh_plan(query)
    plan = CoachAnswer.model_validate(ctx.current_plan)
    usable = {e.name: e for e in usable_exercises(c.available_equipment, c.avoid_exercises)}
    low, high = REP_RANGE[ctx.primary_goal]
    trends = {t.name: t.trend for t in ctx.recent_trends}
    done: dict[str, str] = {}
    days = []
    for day in plan.days:
        names = {e.name for e in day.exercises}
        exercises = []
        for ex in day.exercises:
            trend = trends.get(ex.name)
            if trend == "progressing":
                if ex.reps + 2 <= max(high, ex.reps):
                    ex = ex.model_copy(update={"reps": ex.reps + 2})
                    done.setdefault(ex.name, f"+2 reps on {ex.name}")
                else:
                    ex = ex.model_copy(update={"sets": min(MAX_SETS, ex.sets + 1)})
                    done.setdefault(ex.name, f"+1 set on {ex.name}")
            elif trend == "stalled":
                swap = _substitute(ex.name, usable, names)
                if swap and BY_NAME[ex.name].compound:
                    done.setdefault(ex.name, f"{ex.name} stalled, switched to {swap}")
                    names.add(swap)
                    ex = ex.model_copy(update={"name": swap})
                else:
                    reps = low if ex.reps > (low + high) // 2 else high
                    done.setdefault(ex.name, f"new rep target {reps} on {ex.name}")
                    ex = ex.model_copy(update={"reps": reps})
            elif trend == "regressing":
                ex = ex.model_copy(update={"sets": max(1, ex.sets - 1), "rir": min(5, ex.rir + 1)})
                done.setdefault(ex.name, f"deload on {ex.name} (fewer sets, more RIR)")
            exercises.append(ex)
        days.append(day.model_copy(update={"exercises": exercises}))
    answer = _conform(plan.model_copy(update={"days": days}), c)
    return answer.model_copy(update={"notes": _notes_join(list(done.values())[:3], "Keep going as planned")})


def _referral(query: CoachingQuery) -> CoachAnswer:
    symptom = query.context.new_symptom
    what = symptom.text if symptom else "a red-flag symptom"
    return CoachAnswer(
        plan_name="Pause Training: See a Clinician",
        days=[],
        notes="Stop training and get medical clearance before we resume.",
        safety=SafetyBlock(flags=["red_flag_symptom"], referral_required=True,
                           reason=f"'{what}' needs a medical assessment before any training."),
    )


def _safety(query: CoachingQuery) -> CoachAnswer:
    ctx = query.context
    flags, parts = [], []
    if ctx.new_injury is not None:
        flags.append(f"new_injury:{ctx.new_injury.site}")
        parts.append(f"{ctx.new_injury.site.replace('_', ' ')} injury: affected exercises removed")
    if ctx.new_condition is not None:
        flags.append(f"new_condition:{ctx.new_condition}")
        parts.append(f"{ctx.new_condition.replace('_', ' ')}: contraindicated exercises removed, "
                     f"all sets RIR {query.constraints.rir_floor}+")
    if ctx.new_symptom is not None:
        flags.append("monitor_symptom")
        parts.append("mild symptom: train as planned, stop if it worsens")
    if ctx.current_plan and len(ctx.current_plan["days"]) == query.constraints.days_per_week:
        answer = _conform(CoachAnswer.model_validate(ctx.current_plan), query.constraints)
    else:
        answer = _fresh_plan(query)
    return answer.model_copy(update={"notes": _notes_join(parts, "Adjusted for safety"),
                                     "safety": SafetyBlock(flags=flags)})


def answer_query(query: CoachingQuery) -> CoachAnswer:
    """The expert answer to one query (deterministic)."""
    if query.constraints.referral_required:
        return _referral(query)
    if query.kind == "plan_creation":
        answer = _fresh_plan(query)
        goal = query.context.primary_goal.replace("_", " ")
        return answer.model_copy(update={"notes": f"Built for {goal} within your schedule and equipment."})
    if query.kind == "plan_modification":
        return _modify(query)
    if query.kind == "safety_adjustment":
        return _safety(query)
    if query.kind == "progress_adaptation":
        return _adapt(query)
    raise InputDataError(f"query {query.query_id}: unknown kind {query.kind!r}")
