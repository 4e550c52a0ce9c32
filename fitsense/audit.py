"""The coaching-rule audit: is an answer good coaching, and do its notes tell the truth?

Pure functions over a ``CoachAnswer`` and the ``CoachingQuery`` it answers, shared by
the data-quality stage (teacher answers), the dataset filter (``dataset.require_audit``)
and evaluation (student answers). ``RULES`` is the registry: each named rule returns a
``RuleResult`` with ``passed`` True or False and the reason, or None where the rule does
not apply (a referral has no plan; a rebuilt plan has no "before" to compare with).

Notes are read through a small phrase grammar (``PHRASES``, written with ``note``). The
offline teacher writes its notes from the same templates, so a phrase is declared once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

from fitsense.catalogue import BY_NAME, usable_exercises
from fitsense.constraints import WORK_SECONDS_PER_SET
from fitsense.plan import CoachAnswer, PlanDay, PlannedExercise
from fitsense.records import CoachingQuery, QueryConstraints

# --------------------------------------------------------------------------- coaching facts

# The major movement patterns a week should train (label -> catalogue patterns).
PATTERN_GROUPS: dict[str, tuple[str, ...]] = {
    "squat or lunge": ("squat", "lunge"),
    "hinge": ("hinge",),
    "horizontal push": ("push_h",),
    "vertical push": ("push_v",),
    "horizontal pull": ("pull_h",),
    "vertical pull": ("pull_v",),
}
PUSH_PATTERNS, PULL_PATTERNS = ("push_h", "push_v"), ("pull_h", "pull_v")
# Weekly push sets : pull sets must lie within 1/ratio .. ratio (shoulder health needs pulling at least
# as often as pressing; 1.5 leaves room for a lone extra pressing exercise).
MAX_PUSH_PULL_RATIO = 1.5

# Compound-lift reps per goal, following the loading ranges of the ACSM position stand on
# resistance training (Ratamess et al. 2009, "Progression models in resistance training for
# healthy adults", MSSE 41:687-708): strength heavy (<= 6), hypertrophy moderate (6-12),
# muscular endurance light (>= 10-15); general health 8-12 (ACSM/Garber et al. 2011).
GOAL_REP_RANGE: dict[str, tuple[int, int]] = {
    "strength": (3, 6),
    "muscle_gain": (6, 12),
    "fat_loss": (10, 15),
    "endurance": (12, 20),
    "general_health": (8, 12),
}
# Isolation and core work is lighter by nature: a wider, higher range per goal.
ACCESSORY_REP_RANGE: dict[str, tuple[int, int]] = {
    "strength": (6, 12),
    "muscle_gain": (8, 15),
    "fat_loss": (10, 20),
    "endurance": (12, 25),
    "general_health": (8, 15),
}

# Major muscle groups (label -> catalogue primary muscles) and weekly hard sets per group.
MAJOR_MUSCLES: dict[str, tuple[str, ...]] = {
    "chest": ("chest",),
    "back": ("back",),
    "shoulders": ("shoulders",),
    "quads": ("quads",),
    "posterior chain": ("hamstrings", "glutes"),
}
# ACSM 2009 (above): novices 1-3 sets per exercise, 2-3 sessions a week per muscle group; more
# for hypertrophy and strength (graded dose-response up to ~10+ weekly sets, Schoenfeld et al. 2017,
# J Sports Sci 35:1073-82); beyond ~20 weekly sets per group adds fatigue, not progress.
WEEKLY_HARD_SETS: dict[str, tuple[int, int]] = {
    "strength": (3, 20),
    "muscle_gain": (4, 20),
    "fat_loss": (2, 20),
    "endurance": (2, 20),
    "general_health": (2, 16),
}
# ACSM 2009 for novices: 1-3 sets per exercise, each muscle group 2-3 days a week, so 2 weekly sets
# already train a group whatever the goal.
NOVICE_MIN_WEEKLY_SETS = 2
HARD_SET_MAX_RIR = 4  # a set ending 5+ reps short of failure is not a hard set
MIN_SET_SECONDS = WORK_SECONDS_PER_SET + 30  # the shortest set a plan can hold (30 s rest)
BUDGET_SETS_PER_EXERCISE = 3  # what "the budget allows" assumes per exercise (ACSM: multiple sets, 1-3 novice)


@lru_cache(maxsize=None)
def rep_range(goal: str, exercise_name: str) -> tuple[int, int] | None:
    """The reps the goal calls for on this exercise; None for conditioning (timed work, not reps)."""
    ex = BY_NAME.get(exercise_name)
    if ex is None or ex.pattern == "conditioning":
        return None
    return (GOAL_REP_RANGE if ex.compound else ACCESSORY_REP_RANGE)[goal]


@lru_cache(maxsize=None)
def pattern_group(exercise_name: str) -> str | None:
    ex = BY_NAME.get(exercise_name)
    return next((g for g, pats in PATTERN_GROUPS.items() if ex and ex.pattern in pats), None)


def possible_groups(constraints: QueryConstraints) -> set[str]:
    """Pattern groups with at least one exercise the constraints allow."""
    usable = usable_exercises(constraints.available_equipment, constraints.avoid_exercises)
    return {g for g in (pattern_group(e.name) for e in usable) if g}


def uncovered_groups(answer: CoachAnswer, constraints: QueryConstraints) -> dict[str, str]:
    """Pattern groups missing from the week, each with why: ``ruled_out`` (nothing usable) or ``no_room``."""
    present = {pattern_group(e.name) for d in answer.days for e in d.exercises}
    possible = possible_groups(constraints)
    room = len(answer.days) * constraints.max_exercises_per_day >= len(possible)
    out = {}
    for group in PATTERN_GROUPS:
        if group not in present:
            out[group] = "ruled_out" if group not in possible else "possible" if room else "no_room"
    return out


# --------------------------------------------------------------------------- the notes grammar

# One template per kind of statement: the teacher writes notes with ``note`` and the audit reads them
# back with a pattern made from the same template. A trailing "(...)" or ": ..." may be left out.
PHRASES: dict[str, str] = {
    "swap": "swapped {old} for {new}",
    "stall_swap": "{old} stalled, switched to {new}",
    "drop": "dropped {name}: {why}",
    "add": "added {new} ({why})",
    "reps": "+{n} reps on {name}",
    "sets": "+{n} sets on {name}",
    "target": "new rep target {n} on {name}",
    "deload": "deload on {name} ({what})",
    "trim": "trimmed sessions to fit {n} minutes",
    "kept": "plan kept",
    "rebuilt": "rebuilt as a {n}-day plan to match {why}",
    "gap": "no {group}: {why}",
}
GAP_REASONS = {"ruled_out": "nothing fits your equipment and restrictions", "no_room": "no room in your week"}


def note(kind: str, **fields) -> str:
    """One statement for a plan's notes, e.g. ``note("swap", old="Goblet Squat", new="Box Squat to Bench")``."""
    text = PHRASES[kind].format(**fields)
    return text.replace(" sets on ", " set on ") if kind == "sets" and fields["n"] == 1 else text


def _claim_pattern(template: str) -> re.Pattern:
    pattern = ""
    for part in re.split(r"(\{\w+\})", template):
        field = re.fullmatch(r"\{(\w+)\}", part)
        if field:
            pattern += rf"(?P<n>\d+)" if field[1] == "n" else rf"(?P<{field[1]}>.+?)"
        else:
            pattern += re.escape(part)
    pattern = pattern.replace("reps\\ on", "reps?\\ on").replace("sets\\ on", "sets?\\ on")
    for tail in (r"\ \((?P<why>.+?)\)", r"\ \((?P<what>.+?)\)", r":\ (?P<why>.+?)", r"\ to\ match\ (?P<why>.+?)"):
        if pattern.endswith(tail):
            pattern = pattern[: -len(tail)] + f"(?:{tail})?"
    return re.compile(pattern + (r"\b.*" if template == PHRASES["kept"] else ""), re.I)


_CLAIMS: dict[str, re.Pattern] = {kind: _claim_pattern(t) for kind, t in PHRASES.items()}


@dataclass(frozen=True)
class Claim:
    kind: str
    fields: dict


def parse_claims(notes: str) -> list[Claim]:
    """The checkable statements in a plan's notes; other text is free commentary."""
    claims = []
    for part in re.split(r"[;.]", notes):
        part = part.strip()
        for kind, pattern in _CLAIMS.items():
            m = pattern.fullmatch(part)
            if m:
                claims.append(Claim(kind, {k: v for k, v in m.groupdict().items() if v is not None}))
                break
    return claims


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class RuleResult:
    rule: str
    passed: bool | None  # None: the rule does not apply to this answer
    reason: str


@dataclass(frozen=True)
class Rule:
    name: str
    summary: str
    check: Callable[[CoachAnswer, CoachingQuery], tuple[bool | None, str]]


Days = dict[int, dict[str, PlannedExercise]]  # day number -> exercise name -> prescription


def _by_day(days: Iterable[PlanDay]) -> Days:
    return {d.day: {e.name: e for e in d.exercises} for d in days}


def _both(name: str, old: Days, new: Days) -> list[tuple[PlannedExercise, PlannedExercise]]:
    """(before, after) of ``name`` on each day that has it in both plans."""
    return [(old[d][name], new[d][name]) for d in old if name in old[d] and name in new.get(d, {})]


def _swap_holds(f: dict, old: Days, new: Days, c: QueryConstraints) -> str | None:
    a, b = f["old"], f["new"]
    if not any(a in old[d] and a not in new.get(d, {}) and b in new.get(d, {}) and b not in old[d] for d in old):
        return f"claims {a} was swapped for {b}, but no day replaces one with the other"
    ea, eb = BY_NAME.get(a), BY_NAME.get(b)
    same_pattern = ea and eb and ea.pattern == eb.pattern != "isolation"  # "isolation" alone says little
    if ea and eb and not same_pattern and ea.primary_muscle != eb.primary_muscle:
        return f"swap {a} -> {b} keeps neither the movement pattern nor the primary muscle"
    return None


def _add_holds(f: dict, old: Days, new: Days, c: QueryConstraints) -> str | None:
    ok = any(f["new"] in new.get(d, {}) and f["new"] not in old[d] for d in old)
    return None if ok else f"claims {f['new']} was added, but no day gained it"


def _drop_holds(f: dict, old: Days, new: Days, c: QueryConstraints) -> str | None:
    ok = any(f["name"] in old[d] and f["name"] not in new.get(d, {}) for d in old)
    return None if ok else f"claims {f['name']} was dropped, but no day lost it"


def _more_holds(field: str) -> Callable:
    def check(f: dict, old: Days, new: Days, c: QueryConstraints) -> str | None:
        n = int(f["n"])
        ok = any(getattr(b, field) - getattr(a, field) == n for a, b in _both(f["name"], old, new))
        return None if ok else f"claims +{n} {field} on {f['name']}, but no day shows that change"
    return check


def _target_holds(f: dict, old: Days, new: Days, c: QueryConstraints) -> str | None:
    ok = any(b.reps == int(f["n"]) != a.reps for a, b in _both(f["name"], old, new))
    return None if ok else f"claims a new rep target {f['n']} on {f['name']}, not in the plan"


def _deload_holds(f: dict, old: Days, new: Days, c: QueryConstraints) -> str | None:
    what = f.get("what", "").lower()
    fewer, more = "fewer sets" in what, "more rir" in what

    def fits(a: PlannedExercise, b: PlannedExercise) -> bool:
        if fewer or more:
            return (not fewer or b.sets < a.sets) and (not more or b.rir > a.rir)
        return b.sets < a.sets or b.rir > a.rir

    ok = any(fits(a, b) for a, b in _both(f["name"], old, new))
    return None if ok else f"claims a deload on {f['name']} ({what or 'any'}), not in the plan"


def _trim_holds(f: dict, old: Days, new: Days, c: QueryConstraints) -> str | None:
    if int(f["n"]) != c.session_minutes:
        return f"claims sessions fit {f['n']} minutes, the limit is {c.session_minutes}"
    for d in old:
        kept = [(old[d][n], new[d][n]) for n in old[d] if n in new.get(d, {})]
        if len(kept) < len(old[d]) or any(b.sets < a.sets or b.rest_s < a.rest_s for a, b in kept):
            return None
    return "claims sessions were trimmed, but no session lost sets, rest or exercises"


def _kept_holds(f: dict, old: Days, new: Days, c: QueryConstraints) -> str | None:
    same = set(old) == set(new) and all(set(old[d]) == set(new[d]) for d in old)
    return None if same else "claims the plan was kept, but its exercises changed"


# How each kind of claim is checked against the change from the old plan to the new one.
_CLAIM_CHECKS: dict[str, Callable[[dict, Days, Days, QueryConstraints], str | None]] = {
    "swap": _swap_holds, "stall_swap": _swap_holds, "add": _add_holds, "drop": _drop_holds,
    "reps": _more_holds("reps"), "sets": _more_holds("sets"), "target": _target_holds,
    "deload": _deload_holds, "trim": _trim_holds, "kept": _kept_holds,
}


def _notes_match_change(answer: CoachAnswer, query: CoachingQuery) -> tuple[bool | None, str]:
    claims = parse_claims(answer.notes)
    current = query.context.current_plan
    if not answer.days:
        return None, "no plan"
    rebuilt = [cl for cl in claims if cl.kind == "rebuilt"]
    claims = [cl for cl in claims if cl.kind != "gap"]  # the pattern rule reads those
    for cl in rebuilt:
        if int(cl.fields["n"]) != len(answer.days):
            return False, f"claims a {cl.fields['n']}-day plan, the plan has {len(answer.days)} days"
    change_claims = [cl for cl in claims if cl.kind != "rebuilt"]
    if not current or rebuilt or len(current.get("days", [])) != len(answer.days):
        if change_claims:
            return False, f"claims changes ({change_claims[0].kind}) to a plan that has no comparable before"
        return (True, "rebuilt as stated") if rebuilt else (None, "a new plan: no before to compare")
    try:
        old = _by_day(CoachAnswer.model_validate(current).days)
    except ValueError:
        return None, "the current plan does not parse"
    new = _by_day(answer.days)
    for cl in change_claims:
        why = _CLAIM_CHECKS[cl.kind](cl.fields, old, new, query.constraints) if cl.kind in _CLAIM_CHECKS else None
        if why:
            return False, why
    removed_named = {cl.fields.get("old") or cl.fields.get("name") for cl in change_claims
                     if cl.kind in ("swap", "stall_swap", "drop")}
    added_named = {cl.fields["new"] for cl in change_claims if cl.kind in ("swap", "stall_swap", "add")}
    for d in old:
        for name in old[d]:
            if name not in new.get(d, {}) and name not in removed_named:
                return False, f"{name} left day {d} but the notes do not say so"
        for name in new.get(d, {}):
            if name not in old[d] and name not in added_named:
                return False, f"{name} joined day {d} but the notes do not say so"
    return True, f"{len(change_claims)} claims, all match the plan"


def _major_patterns(answer: CoachAnswer, query: CoachingQuery) -> tuple[bool | None, str]:
    if not answer.days:
        return None, "no plan"
    notes = answer.notes.lower()
    missing = uncovered_groups(answer, query.constraints)
    for group, why in missing.items():
        if why == "possible":
            return False, f"no {group} in the week although one fits the constraints"
        if not re.search(rf"\bno {group}\b", notes):
            return False, f"no {group} in the week ({why.replace('_', ' ')}) and the notes do not say so"
    return True, "every major pattern trained" if not missing else f"missing {', '.join(missing)}: noted"


def _weekly_sets(answer: CoachAnswer, patterns: tuple[str, ...]) -> int:
    return sum(e.sets for d in answer.days for e in d.exercises if BY_NAME.get(e.name)
               and BY_NAME[e.name].pattern in patterns)


def _push_pull_balance(answer: CoachAnswer, query: CoachingQuery) -> tuple[bool | None, str]:
    if not answer.days:
        return None, "no plan"
    c, possible = query.constraints, possible_groups(query.constraints)
    if not ({"horizontal push", "vertical push"} & possible and {"horizontal pull", "vertical pull"} & possible):
        return None, "the constraints rule out pushing or pulling"
    if len(answer.days) * c.max_exercises_per_day < len(possible):
        return None, "the week has too few exercise slots to balance"
    push, pull = _weekly_sets(answer, PUSH_PATTERNS), _weekly_sets(answer, PULL_PATTERNS)
    if push == pull == 0:
        return False, "no pushing or pulling sets in the week"
    ok = pull > 0 and push > 0 and 1 / MAX_PUSH_PULL_RATIO <= push / pull <= MAX_PUSH_PULL_RATIO
    return ok, f"push {push} : pull {pull} weekly sets (limit {MAX_PUSH_PULL_RATIO}:1 either way)"


@lru_cache(maxsize=None)
def muscle_group(exercise_name: str) -> str | None:
    """The major muscle group an exercise's primary muscle belongs to, if any (conditioning: none)."""
    ex = BY_NAME.get(exercise_name)
    if ex is None or ex.pattern == "conditioning":
        return None
    return next((g for g, ms in MAJOR_MUSCLES.items() if ex and ex.primary_muscle in ms), None)


def weekly_hard_sets(answer: CoachAnswer) -> dict[str, int]:
    """Hard sets (RIR <= HARD_SET_MAX_RIR) per major muscle group in the week."""
    out = dict.fromkeys(MAJOR_MUSCLES, 0)
    for day in answer.days:
        for e in day.exercises:
            group = muscle_group(e.name)
            if group and e.rir <= HARD_SET_MAX_RIR:
                out[group] += e.sets
    return out


def weekly_set_range(goal: str, experience: str) -> tuple[int, int]:
    lo, hi = WEEKLY_HARD_SETS[goal]
    return (min(lo, NOVICE_MIN_WEEKLY_SETS) if experience == "beginner" else lo), hi


def trainable_groups(constraints: QueryConstraints) -> list[str]:
    """Major muscle groups some usable compound lift trains (accessories add sets but create no duty)."""
    usable = usable_exercises(constraints.available_equipment, constraints.avoid_exercises)
    return [g for g, ms in MAJOR_MUSCLES.items() if any(e.primary_muscle in ms and e.compound for e in usable)]


def _weekly_volume(answer: CoachAnswer, query: CoachingQuery) -> tuple[bool | None, str]:
    if not answer.days:
        return None, "no plan"
    c, goal = query.constraints, query.context.primary_goal
    lo, hi = weekly_set_range(goal, query.context.profile.experience)
    trainable = trainable_groups(c)
    per_session = min(c.max_exercises_per_day * BUDGET_SETS_PER_EXERCISE, c.session_minutes * 60 // MIN_SET_SECONDS)
    capacity = len(answer.days) * per_session
    if capacity < lo * len(trainable) or len(answer.days) * c.max_exercises_per_day < len(trainable):
        return None, f"the session budget holds ~{capacity} sets a week, under {lo} per trainable group"
    sets = weekly_hard_sets(answer)
    off = [f"{g} {sets[g]}" for g in trainable if not lo <= sets[g] <= hi]
    if off:
        return False, f"weekly hard sets outside {lo}-{hi} for {goal}: {', '.join(off)}"
    return True, f"{lo}-{hi} weekly hard sets for every trainable group"


def _no_repeat_in_day(answer: CoachAnswer, query: CoachingQuery) -> tuple[bool | None, str]:
    if not answer.days:
        return None, "no plan"
    for day in answer.days:
        names = [e.name for e in day.exercises]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            return False, f"{dup} appears twice on day {day.day}"
    return True, "no exercise repeated within a day"


def _rep_range_goal(answer: CoachAnswer, query: CoachingQuery) -> tuple[bool | None, str]:
    if not answer.days:
        return None, "no plan"
    goal = query.context.primary_goal
    for day in answer.days:
        for e in day.exercises:
            rng = rep_range(goal, e.name)
            if rng and not rng[0] <= e.reps <= rng[1]:
                return False, f"{e.name} at {e.reps} reps, {goal} calls for {rng[0]}-{rng[1]}"
    return True, f"reps fit {goal}"


RULES: tuple[Rule, ...] = (
    Rule("notes_match_change", "every swap, drop and progression the notes claim is in the plan, and "
         "every change in the plan is in the notes", _notes_match_change),
    Rule("major_patterns", "squat/lunge, hinge, horizontal and vertical push and pull each in the week, "
         "unless ruled out and noted", _major_patterns),
    Rule("push_pull_balance", f"weekly push:pull sets within {MAX_PUSH_PULL_RATIO}:1", _push_pull_balance),
    Rule("weekly_volume", "weekly hard sets per major muscle group in the goal's range, where the budget allows",
         _weekly_volume),
    Rule("no_repeat_in_day", "no exercise twice in one day", _no_repeat_in_day),
    Rule("rep_range_goal", "reps in the goal's range (compound and accessory)", _rep_range_goal),
)
RULE_NAMES: tuple[str, ...] = tuple(r.name for r in RULES)


def audit_answer(answer: CoachAnswer, query: CoachingQuery) -> list[RuleResult]:
    """Every rule's verdict on one answer to ``query``."""
    return [RuleResult(rule.name, *rule.check(answer, query)) for rule in RULES]


def audit_verdicts(answer: CoachAnswer, query: CoachingQuery) -> dict[str, bool | None]:
    """Rule name -> passed (None: not applicable): one row of an audit table."""
    return {r.rule: r.passed for r in audit_answer(answer, query)}


def audit_passed(results: list[RuleResult]) -> bool:
    """No rule failed (rules that do not apply count as passed)."""
    return all(r.passed is not False for r in results)


def pass_rates(audits: Iterable[list[RuleResult]]) -> dict[str, dict]:
    """Per rule: answers it applied to, how many passed, and the pass rate (None when it never applied)."""
    counts = {name: [0, 0] for name in RULE_NAMES}
    for results in audits:
        for r in results:
            if r.passed is not None:
                counts[r.rule][0] += 1
                counts[r.rule][1] += bool(r.passed)
    return {name: {"applicable": n, "passed": p, "rate": round(p / n, 4) if n else None}
            for name, (n, p) in counts.items()}
