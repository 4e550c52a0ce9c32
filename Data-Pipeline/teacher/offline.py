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
  pattern, regressing -> deload (one set fewer, never below two, +1 RIR);
- safety: newly contraindicated exercises are removed and flagged; red-flag
  symptoms get a clinician referral and no plan.

Conforming also keeps the week sound by the coaching rules of ``fitsense.audit``:
a missing major pattern is added where a day has room, push and pull sets stay
within the audit's ratio, and a major muscle group below the goal's weekly sets
gets a set more where the session has time. The notes say what changed, in the
audit's phrases: each swap and drop as it was made, slot by slot (a drop with
its reason, "dropped Box Squat to Bench: no knee-safe squat without a bench"),
progressions as the actual difference between the old and new plan, and each
major pattern the week cannot train, with why.

Answers are compact (2-5 days in practice, at most ``max_exercises_per_day``)
because the student is trained on CPU.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from fitsense import audit
from fitsense.catalogue import BY_NAME, CATALOGUE, CONDITIONS, usable_exercises
from fitsense.constraints import WORK_SECONDS_PER_SET, exercises_seconds
from fitsense.data import planning
from fitsense.errors import InputDataError
from fitsense.plan import CoachAnswer, PlanDay, PlannedExercise, SafetyBlock
from fitsense.records import CoachingQuery

MIN_REST_S = 30
MAX_SETS = 5
NOTES_BUDGET = 420  # characters of change notes, leaving room for the pattern notes (600 in all)
# How the notes name what a dropped exercise was for, and the kit it needs.
_PATTERN_WORD = {"squat": "squat", "lunge": "lunge", "hinge": "hinge", "push_h": "horizontal push",
                 "push_v": "vertical push", "pull_h": "horizontal pull", "pull_v": "vertical pull",
                 "core": "core exercise", "carry": "carry", "conditioning": "conditioning exercise"}
_KIT = {"dumbbells": "dumbbells", "resistance_bands": "bands", "pullup_bar": "a pull-up bar",
        "kettlebell": "a kettlebell", "bench": "a bench", "barbell": "a barbell", "squat_rack": "a squat rack",
        "cable_machine": "a cable machine", "leg_press": "a leg press", "stationary_bike": "a bike"}


def _variant(query: CoachingQuery) -> int:
    """A stable per-user plan variant, so users with equal facts still get varied (but fixed) plans."""
    return int.from_bytes(hashlib.blake2b(str(query.user_id).encode(), digest_size=2).digest(), "little") % 4


@dataclass
class _Changes:
    """What conforming a plan did, slot by slot, in the order it happened (for faithful notes)."""

    swaps: list[tuple[str, str]] = field(default_factory=list)
    drops: list[tuple[str, str]] = field(default_factory=list)
    added: list[tuple[str, str]] = field(default_factory=list)  # (exercise, the pattern it brings back)
    more_sets: dict[tuple[int, str], int] = field(default_factory=dict)  # (day, exercise) -> sets added
    trimmed: bool = False

    def swap(self, old: str, new: str) -> None:
        if (old, new) not in self.swaps:
            self.swaps.append((old, new))

    def drop(self, name: str, reason: str) -> None:
        if (name, reason) not in self.drops:
            self.drops.append((name, reason))

    def notes(self, minutes: int, before: CoachAnswer, after: CoachAnswer) -> list[str]:
        """The notes for these changes; extra sets are stated as the difference from ``before``."""
        parts = [audit.note("swap", old=o, new=n) for o, n in self.swaps]
        parts += [audit.note("drop", name=n, why=r) for n, r in self.drops]
        parts += [audit.note("add", new=n, why=g) for n, g in self.added]
        old = {(d.day, e.name): e.sets for d in before.days for e in d.exercises}
        new = {(d.day, e.name): e.sets for d in after.days for e in d.exercises}
        stated = set()
        for key in self.more_sets:
            if key[1] not in stated and key in old and new.get(key, 0) > old[key]:
                parts.append(audit.note("sets", n=new[key] - old[key], name=key[1]))
                stated.add(key[1])
        return parts + ([audit.note("trim", n=minutes)] if self.trimmed else [])


def _fresh_plan(query: CoachingQuery, days: int | None = None) -> CoachAnswer:
    c, ctx = query.constraints, query.context
    name, built = planning.build_plan(
        tuple(c.available_equipment), tuple(c.avoid_exercises), days or c.days_per_week, c.session_minutes,
        ctx.primary_goal, ctx.profile.experience, c.rir_floor, _variant(query),
    )
    answer = CoachAnswer.model_validate(planning.plan_to_answer(name, built))
    return _conform(answer, query)[0]


def _substitute(name: str, usable: dict[str, object], taken: set[str], same_pattern: bool = False) -> str | None:
    """A usable exercise not already in the day: the same pattern and muscle, else the same pattern
    (for compound patterns), else the same major pattern group (squat or lunge), else, unless
    ``same_pattern``, the same primary muscle."""
    old = BY_NAME.get(name)
    if old is None:
        return None
    group = audit.pattern_group(name)
    tests = [lambda e: e.pattern == old.pattern and e.primary_muscle == old.primary_muscle,
             lambda e: e.pattern == old.pattern and old.pattern != "isolation",
             lambda e: group is not None and audit.pattern_group(e.name) == group]
    if not same_pattern:
        tests.append(lambda e: e.primary_muscle == old.primary_muscle)
    for same in tests:
        options = sorted(n for n, e in usable.items() if same(e) and n not in taken and n != name)
        if options:
            return options[0]
    return None


def _no_substitute_reason(name: str, query: CoachingQuery) -> str:
    """Why nothing can stand in for ``name``: e.g. "no knee-safe squat without a bench"."""
    ex = BY_NAME.get(name)
    if ex is None:
        return "not a catalogue exercise"
    c, ctx = query.constraints, query.context
    have, avoid = set(c.available_equipment) | {"bodyweight"}, set(c.avoid_exercises)
    causes = [i.site for i in ctx.injuries] + list(ctx.conditions)
    # what rules out the alternatives the equipment would allow
    blocked = set()
    for alt in CATALOGUE:
        if alt.pattern == ex.pattern and alt.name in avoid and set(alt.equipment) <= have:
            tags = set(alt.contraindications)
            blocked.update(x for x in causes if x in tags or tags & set(CONDITIONS.get(x, {}).get("tags", ())))
    safe = "/".join(x.replace("_", " ") for x in causes if x in blocked)
    word = _PATTERN_WORD.get(ex.pattern, f"{ex.primary_muscle} exercise")
    missing = [e for e in ex.equipment if e not in have]
    where = f"without {_KIT.get(missing[0], missing[0])}" if missing else "with your equipment"
    return f"no {safe + '-safe ' if safe else ''}{word} {where}"


def _pop_index(exercises: list[PlannedExercise], week: Counter, push_pull: list[int]) -> int:
    """The exercise a too-long or too-full session loses first: accessories, then a pattern the week
    trains elsewhere (the side of push/pull that is ahead first), then the later one."""
    def key(i: int):
        group = audit.pattern_group(exercises[i].name)
        pattern = BY_NAME[exercises[i].name].pattern if exercises[i].name in BY_NAME else ""
        ahead = (pattern in audit.PUSH_PATTERNS and push_pull[0] > push_pull[1]) or (
            pattern in audit.PULL_PATTERNS and push_pull[1] > push_pull[0])
        return (group is None, group is not None and week[group] > 1, ahead, i)
    return max(range(len(exercises)), key=key)


def _fill_gaps(days: list[list[PlannedExercise]], usable: dict, query: CoachingQuery, changes: _Changes) -> None:
    """Add an exercise for each major pattern the week misses although one fits, to the emptiest day
    with room, dosed like that day's other work."""
    c, goal = query.constraints, query.context.primary_goal
    present = {audit.pattern_group(e.name) for d in days for e in d}
    possible = audit.possible_groups(c)
    if len(days) * c.max_exercises_per_day < len(possible):
        return
    for group in audit.PATTERN_GROUPS:
        if group in present or group not in possible:
            continue
        roomy = [i for i, d in enumerate(days) if d and len(d) < c.max_exercises_per_day]
        if not roomy:
            return
        i = min(roomy, key=lambda i: (len(days[i]), i))
        day = days[i]
        in_day = {x.name for x in day}
        name = sorted((n for n in usable if audit.pattern_group(n) == group and n not in in_day),
                      key=lambda n: (not usable[n].compound, n))[0]
        low, high = audit.rep_range(goal, name) or (10, 10)
        reps = min(max(sorted(e.reps for e in day)[len(day) // 2], low), high)
        day.append(PlannedExercise(name=name, sets=max(2, min(e.sets for e in day)), reps=reps,
                                   rir=min(5, max(c.rir_floor, min(e.rir for e in day))),
                                   rest_s=max(e.rest_s for e in day)))
        changes.added.append((name, group))
        present.add(group)


def _conform(answer: CoachAnswer, query: CoachingQuery,
             origins: dict[tuple[int, str], str] | None = None) -> tuple[CoachAnswer, _Changes]:
    """Make a plan honour the constraints (substitute unusable exercises, RIR floor, limits, session
    length) and record each swap and drop as it is made, slot by slot. ``origins`` names what an
    exercise stood for in the plan the notes compare with, (day, name) -> name, where a caller already
    changed it (progress adaptation's stall switches)."""
    c, goal = query.constraints, query.context.primary_goal
    usable = {e.name: e for e in usable_exercises(c.available_equipment, c.avoid_exercises)}
    changes = _Changes()
    origin: dict[tuple[int, str], str | None] = {}  # (day, name now) -> its name in the compared plan
    days: list[list[PlannedExercise]] = []
    for day in answer.days:
        exercises: list[PlannedExercise] = []
        taken = {e.name for e in day.exercises if e.name in usable}
        for ex in day.exercises:
            was = (origins or {}).get((day.day, ex.name), ex.name)
            name, update = ex.name, {"rir": min(5, max(ex.rir, c.rir_floor))}
            if name not in usable:
                name = _substitute(ex.name, usable, taken)
                if name is None:
                    changes.drop(was, _no_substitute_reason(ex.name, query))
                    continue
                taken.add(name)
                rng = audit.rep_range(goal, name)
                update.update(name=name, reps=min(max(ex.reps, rng[0]), rng[1]) if rng else ex.reps)
            if any(e.name == name for e in exercises):
                changes.drop(was, "already in the session")
                continue
            if name != ex.name:
                changes.swap(was, name)
            origin[(day.day, name)] = was
            # most exercises keep every field: the exercise itself (the plans' models are never changed in place)
            unchanged = all(getattr(ex, k) == v for k, v in update.items())
            exercises.append(ex if unchanged else ex.model_copy(update=update))
        days.append(exercises)

    _fill_gaps(days, usable, query, changes)
    week = Counter(audit.pattern_group(e.name) for d in days for e in d)
    push_pull = [sum(e.sets for d in days for e in d if BY_NAME[e.name].pattern in pats)
                 for pats in (audit.PUSH_PATTERNS, audit.PULL_PATTERNS)]

    def pop(day_no: int, exercises: list[PlannedExercise], why: str, index: int | None = None) -> None:
        gone = exercises.pop(_pop_index(exercises, week, push_pull) if index is None else index)
        week[audit.pattern_group(gone.name)] -= 1
        for side, pats in enumerate((audit.PUSH_PATTERNS, audit.PULL_PATTERNS)):
            push_pull[side] -= gone.sets if BY_NAME[gone.name].pattern in pats else 0
        was = origin.get((day_no, gone.name))
        if was is None:  # added here, so never in the compared plan: it just is not added after all
            changes.added = [a for a in changes.added if a[0] != gone.name or any(
                e.name == gone.name for d in days for e in d)]
        else:
            changes.drop(was, why)

    # The week's push and pull sets within the audit's ratio: drop from the heavier side what the
    # week trains elsewhere too, from the day heaviest on that side.
    while push_pull[0] and push_pull[1] and max(push_pull) > audit.MAX_PUSH_PULL_RATIO * min(push_pull):
        heavy = audit.PUSH_PATTERNS if push_pull[0] > push_pull[1] else audit.PULL_PATTERNS
        spare = [(sum(x.sets for x in d if BY_NAME[x.name].pattern in heavy), i, j) for i, d in enumerate(days)
                 for j, e in enumerate(d) if BY_NAME[e.name].pattern in heavy and week[audit.pattern_group(e.name)] > 1
                 and len(d) > 1]
        if spare:
            _, i, j = max(spare)
            pop(answer.days[i].day, days[i], "to balance pushing and pulling", index=j)
            continue
        # nothing to spare on the heavy side: a set more on the light side, where the session has time
        light = audit.PULL_PATTERNS if heavy == audit.PUSH_PATTERNS else audit.PUSH_PATTERNS
        room = [(i, j) for i, d in enumerate(days) for j, e in enumerate(d) if BY_NAME[e.name].pattern in light
                and e.sets < MAX_SETS and exercises_seconds(d) + WORK_SECONDS_PER_SET + e.rest_s <= c.session_minutes * 60]
        if not room:
            break
        i, j = room[0]
        days[i][j] = days[i][j].model_copy(update={"sets": days[i][j].sets + 1})
        push_pull[0 if light == audit.PUSH_PATTERNS else 1] += 1
        key = (answer.days[i].day, days[i][j].name)
        changes.more_sets[key] = changes.more_sets.get(key, 0) + 1

    out = []
    for day, exercises in zip(answer.days, days):
        while len(exercises) > c.max_exercises_per_day:
            pop(day.day, exercises, f"to fit {c.max_exercises_per_day} exercises a session")
        budget = c.session_minutes * 60
        # Fit the session: shorten rests, then drop sets, then drop exercises.
        while exercises and exercises_seconds(exercises) > budget:
            changes.trimmed = True
            if max(e.rest_s for e in exercises) > MIN_REST_S:
                exercises = [e.model_copy(update={"rest_s": max(MIN_REST_S, e.rest_s - 15)}) for e in exercises]
            elif max(e.sets for e in exercises) > 2:
                exercises = [e.model_copy(update={"sets": max(2, e.sets - 1)}) for e in exercises]
            elif len(exercises) > 1:
                pop(day.day, exercises, f"to fit {c.session_minutes} minutes")
            elif exercises[0].sets > 1:
                exercises[0] = exercises[0].model_copy(update={"sets": exercises[0].sets - 1})
            else:
                break
        if not exercises:  # everything was unusable: fall back to anything safe for this person
            fallback = sorted(usable)[:1]
            exercises = [PlannedExercise(name=n, sets=2, reps=10, rir=max(2, c.rir_floor), rest_s=60) for n in fallback]
            changes.added += [(n, "the one safe option left") for n in fallback]
        out.append(PlanDay(day=day.day, name=day.name, exercises=exercises))
    _top_up_volume(out, {n for n, _ in changes.added}, query, changes)
    return answer.model_copy(update={"days": out}), changes


def _top_up_volume(days: list[PlanDay], added: set[str], query: CoachingQuery, changes: _Changes) -> None:
    """A set more on a group's exercises, where the session has time, until every trainable major
    muscle group reaches the goal's weekly minimum."""
    c, ctx = query.constraints, query.context
    low = audit.weekly_set_range(ctx.primary_goal, ctx.profile.experience)[0]
    have = audit.weekly_hard_sets(CoachAnswer(plan_name="-", days=days))
    sides = (audit.PUSH_PATTERNS, audit.PULL_PATTERNS)
    push_pull = [sum(e.sets for d in days for e in d.exercises if BY_NAME[e.name].pattern in p) for p in sides]
    budget = c.session_minutes * 60
    for group in audit.trainable_groups(c):
        for day in days:
            if have[group] >= low:
                break
            seconds = exercises_seconds(day.exercises)  # kept up to date below: a set more adds its work and rest
            for i, e in enumerate(day.exercises):
                if not (have[group] < low and audit.muscle_group(e.name) == group
                        and e.rir <= audit.HARD_SET_MAX_RIR and e.sets < MAX_SETS):
                    continue
                fits = seconds + WORK_SECONDS_PER_SET + e.rest_s <= budget
                side = next((k for k, p in enumerate(sides) if BY_NAME[e.name].pattern in p), None)
                balanced = side is None or push_pull[side] + 1 <= audit.MAX_PUSH_PULL_RATIO * push_pull[1 - side]
                if fits and balanced:
                    day.exercises[i] = e.model_copy(update={"sets": e.sets + 1})
                    seconds += WORK_SECONDS_PER_SET + e.rest_s
                    have[group] += 1
                    if side is not None:
                        push_pull[side] += 1
                    if e.name not in added:
                        changes.more_sets[(day.day, e.name)] = changes.more_sets.get((day.day, e.name), 0) + 1


def _notes_join(parts: list[str], fallback: str) -> str:
    text = "; ".join(p for p in parts if p) or fallback
    return (text[0].upper() + text[1:]).rstrip(".")[:590] + "."


def _with_notes(answer: CoachAnswer, query: CoachingQuery, parts: list[str], fallback: str) -> CoachAnswer:
    """The answer with its notes: what changed, then each major pattern the week cannot train and why."""
    gaps = [audit.note("gap", group=g, why=audit.GAP_REASONS[why])
            for g, why in audit.uncovered_groups(answer, query.constraints).items() if why != "possible"]
    return answer.model_copy(update={"notes": _notes_join(parts + gaps if parts else [fallback] + gaps, fallback)})


def _modify(query: CoachingQuery) -> CoachAnswer:
    c, current = query.constraints, query.context.current_plan
    rebuilt = lambda why: _with_notes(_fresh_plan(query), query,  # noqa: E731
                                      [audit.note("rebuilt", n=c.days_per_week, why=why)], "")
    if not current or len(current["days"]) != c.days_per_week:
        return rebuilt("your new schedule")
    before = CoachAnswer.model_validate(current)
    answer, changes = _conform(before, query)
    notes = changes.notes(c.session_minutes, before, answer)
    if len("; ".join(notes)) > NOTES_BUDGET:  # too much changed to list: a fresh plan serves better
        return rebuilt("your new limits")
    return _with_notes(answer, query, notes, f"{audit.note('kept')}; it already fits your request")


def _progress_note(trend: str, name: str, old: PlannedExercise, new: PlannedExercise) -> str | None:
    """The note for one trended exercise, from what actually changed between the old and new plan."""
    if trend == "progressing":
        if new.reps > old.reps:
            return audit.note("reps", n=new.reps - old.reps, name=name)
        if new.sets > old.sets:
            return audit.note("sets", n=new.sets - old.sets, name=name)
    elif trend == "stalled" and new.reps != old.reps:
        return audit.note("target", n=new.reps, name=name)
    elif trend == "regressing" and (new.sets < old.sets or new.rir > old.rir):
        what = ", ".join(w for w, on in (("fewer sets", new.sets < old.sets), ("more RIR", new.rir > old.rir)) if on)
        return audit.note("deload", name=name, what=what)
    return None


def _adapt(query: CoachingQuery) -> CoachAnswer:
    """Progress adaptation: adjust each trended exercise, conform to the constraints, then describe the
    difference between the old and the new plan."""
    c, ctx = query.constraints, query.context
    if not ctx.current_plan:
        return _with_notes(_fresh_plan(query), query, [], "Keep going as planned")
    plan = CoachAnswer.model_validate(ctx.current_plan)
    usable = {e.name: e for e in usable_exercises(c.available_equipment, c.avoid_exercises)}
    trends = {t.name: t.trend for t in ctx.recent_trends}
    stall_swaps: list[tuple[str, str]] = []  # (stalled, its variation), each distinct pair once
    low_high = audit.weekly_set_range(ctx.primary_goal, ctx.profile.experience)
    week_sets = audit.weekly_hard_sets(plan)
    origins: dict[tuple[int, str], str] = {}
    days = []
    for day in plan.days:
        names = {e.name for e in day.exercises}
        exercises = []
        for ex in day.exercises:
            trend = trends.get(ex.name)
            low, high = audit.rep_range(ctx.primary_goal, ex.name) or (ex.reps, ex.reps)
            if trend == "progressing":
                if ex.reps + 2 <= max(high, ex.reps):
                    ex = ex.model_copy(update={"reps": ex.reps + 2})
                elif week_sets.get(audit.muscle_group(ex.name), 0) < low_high[1]:  # within the weekly cap
                    ex = ex.model_copy(update={"sets": min(MAX_SETS, ex.sets + 1)})
                    if audit.muscle_group(ex.name):
                        week_sets[audit.muscle_group(ex.name)] += 1
            elif trend == "stalled":
                swap = _substitute(ex.name, usable, names, same_pattern=True)
                if swap and BY_NAME[ex.name].compound:
                    if (ex.name, swap) not in stall_swaps:
                        stall_swaps.append((ex.name, swap))
                    origins[(day.day, swap)] = ex.name
                    names.add(swap)
                    rng = audit.rep_range(ctx.primary_goal, swap)
                    ex = ex.model_copy(update={"name": swap,
                                               "reps": min(max(ex.reps, rng[0]), rng[1]) if rng else ex.reps})
                else:
                    ex = ex.model_copy(update={"reps": low if ex.reps > (low + high) // 2 else high})
            elif trend == "regressing":
                # one set fewer, never below two (a single set loses the muscle's weekly dose), and +1 RIR
                ex = ex.model_copy(update={"sets": max(min(2, ex.sets), ex.sets - 1), "rir": min(5, ex.rir + 1)})
            exercises.append(ex)
        days.append(day.model_copy(update={"exercises": exercises}))
    answer, changes = _conform(plan.model_copy(update={"days": days}), query, origins)
    parts = []
    before = {(d.day, e.name): e for d in plan.days for e in d.exercises}
    after = {(d.day, e.name): e for d in answer.days for e in d.exercises}
    for t in ctx.recent_trends:
        switched = [audit.note("stall_swap", old=old, new=new) for old, new in stall_swaps
                    if old == t.name and any(k[1] == new for k in after)]
        if switched:
            parts += switched
            continue
        pairs = [(before[k], after[k]) for k in before if k[1] == t.name and k in after]
        note = next((n for n in (_progress_note(t.trend, t.name, a, b) for a, b in pairs) if n), None)
        if note:
            parts.append(note)
    return _with_notes(answer, query, parts + changes.notes(c.session_minutes, plan, answer), "Keep going as planned")


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
        before = CoachAnswer.model_validate(ctx.current_plan)
        answer, changes = _conform(before, query)
        parts += changes.notes(query.constraints.session_minutes, before, answer)
    else:
        answer = _fresh_plan(query)
    answer = _with_notes(answer, query, parts, "Adjusted for safety")
    return answer.model_copy(update={"safety": SafetyBlock(flags=flags)})


def answer_query(query: CoachingQuery) -> CoachAnswer:
    """The expert answer to one query (deterministic)."""
    if query.constraints.referral_required:
        return _referral(query)
    if query.kind == "plan_creation":
        goal = query.context.primary_goal.replace("_", " ")
        return _with_notes(_fresh_plan(query), query, [f"Built for {goal} within your schedule and equipment"], "")
    if query.kind == "plan_modification":
        return _modify(query)
    if query.kind == "safety_adjustment":
        return _safety(query)
    if query.kind == "progress_adaptation":
        return _adapt(query)
    raise InputDataError(f"query {query.query_id}: unknown kind {query.kind!r}")
