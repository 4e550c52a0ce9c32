"""Coaching rules shared by the synthetic generator and the query builder.

- How a profile turns into the constraints a plan must honour (RIR floor,
  exercises per session, equipment tier).
- A small rule-based planner that writes each synthetic user's current plan.
  It is deterministic for its inputs (cached, so 100k users cost a few
  thousand plan builds) and always respects the constraints it was given.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from fitsense import audit
from fitsense.catalogue import BY_NAME, CONDITIONS, EQUIPMENT_TIERS, usable_exercises
from fitsense.constraints import session_seconds

EXPERIENCE_RIR_FLOOR = {"beginner": 2, "intermediate": 1, "advanced": 0}
GOALS = ("fat_loss", "muscle_gain", "strength", "endurance", "general_health")
ACTIVITY_LEVELS = ("sedentary", "light", "moderate", "active", "very_active")
EXPERIENCE_LEVELS = ("beginner", "intermediate", "advanced")
SESSION_MINUTES = (20, 30, 45, 60, 75, 90)
# Minutes one exercise takes on average (about 3 sets with rest); bounds exercises per session.
MINUTES_PER_EXERCISE = 7


def rir_floor(experience: str, conditions: list[str] | tuple[str, ...]) -> int:
    """The lowest RIR any set may target: the experience floor raised by each condition's floor."""
    floors = [EXPERIENCE_RIR_FLOOR[experience]] + [CONDITIONS[c]["rir_floor"] for c in conditions]
    return max(floors)


def max_exercises_per_day(session_minutes: int) -> int:
    return max(2, min(8, session_minutes // MINUTES_PER_EXERCISE))


def equipment_tier(equipment: list[str] | tuple[str, ...] | set[str]) -> str:
    """bodyweight / home / full_gym: the smallest tier that holds all of the equipment."""
    have = set(equipment) | {"bodyweight"}
    if have <= set(EQUIPMENT_TIERS["bodyweight"]):
        return "bodyweight"
    if have <= set(EQUIPMENT_TIERS["home"]):
        return "home"
    return "full_gym"


# Pattern slots per kind of day, most important first.
_DAY_SLOTS = {
    "Full Body": ("squat", "push_h", "pull_h", "hinge", "push_v", "pull_v", "core", "lunge", "isolation", "carry"),
    "Upper": ("push_h", "pull_h", "push_v", "pull_v", "iso_upper", "iso_upper", "core", "carry"),
    "Lower": ("squat", "hinge", "lunge", "core", "iso_lower", "hinge", "squat", "carry"),
}
# How many leading slots of each day kind are its main patterns (rotated across the week).
_MAIN_SLOTS = {"Full Body": 6, "Upper": 4, "Lower": 3}
_SAME_SIDE = {"push_v": "push_h", "push_h": "push_v", "pull_v": "pull_h", "pull_h": "pull_v"}
_SPLITS = {
    1: ("Full Body",),
    2: ("Full Body", "Full Body"),
    3: ("Full Body", "Full Body", "Full Body"),
    4: ("Upper", "Lower", "Upper", "Lower"),
    5: ("Upper", "Lower", "Full Body", "Upper", "Lower"),
    6: ("Upper", "Lower", "Upper", "Lower", "Upper", "Lower"),
    7: ("Upper", "Lower", "Full Body", "Upper", "Lower", "Upper", "Lower"),
}
# (compound reps, isolation reps, default RIR, rest seconds) per goal.
_GOAL_DOSE = {
    "strength": (5, 8, 2, 150),
    "muscle_gain": (10, 12, 1, 90),
    "fat_loss": (12, 15, 2, 60),
    "endurance": (15, 20, 2, 45),
    "general_health": (10, 12, 2, 75),
}
_SETS = {"beginner": 2, "intermediate": 3, "advanced": 4}
_EXERCISES = {"beginner": 4, "intermediate": 5, "advanced": 6}
_GOAL_TITLE = {g: g.replace("_", " ").title() for g in GOALS}


def _session_seconds(exercises: list[list]) -> int:
    return session_seconds((sets, rest) for _, sets, _, _, rest in exercises)


def _pick(candidates: list[str], salt: str) -> str:
    """A deterministic pseudo-random choice (stable across processes, unlike hash())."""
    digest = hashlib.blake2b(salt.encode(), digest_size=4).digest()
    return candidates[int.from_bytes(digest, "little") % len(candidates)]


@lru_cache(maxsize=200_000)
def build_plan(
    equipment: tuple[str, ...],
    avoid: tuple[str, ...],
    days: int,
    session_minutes: int,
    goal: str,
    experience: str,
    floor: int,
    variant: int = 0,
) -> tuple[str, tuple]:
    """A plan as (plan_name, ((day, day_name, ((name, sets, reps, rir, rest_s), ...)), ...)).

    Honours the equipment, avoid list, RIR floor, exercises-per-day limit and
    session length (estimated the way fitsense.constraints does, without slack).
    """
    usable = usable_exercises(list(equipment), list(avoid))
    by_pattern: dict[str, list[str]] = {}
    for ex in usable:
        by_pattern.setdefault(ex.pattern, []).append(ex.name)
        if ex.pattern == "isolation":
            lower = ex.primary_muscle in ("quads", "hamstrings", "glutes", "calves")
            by_pattern.setdefault("iso_lower" if lower else "iso_upper", []).append(ex.name)
    # Fewer exercises than the limit for novices: the limit is what fits, not what is wise.
    # A one-day week gets room for every major pattern.
    wanted = max(_EXERCISES[experience] + (session_minutes >= 75), -(-len(audit.PATTERN_GROUPS) // days))
    limit = min(max_exercises_per_day(session_minutes), wanted)
    week_cap = audit.WEEKLY_HARD_SETS[goal][1]
    week_sets: dict[str, int] = {}
    comp_reps, iso_reps, goal_rir, rest = _GOAL_DOSE[goal]
    rir = min(5, max(floor, goal_rir))
    sets = _SETS[experience]
    conditioning = [n for n in by_pattern.get("conditioning", []) if n != "Burpee" or experience != "beginner"]

    out_days = []
    seen_of_kind: dict[str, int] = {}
    for day_no, kind in enumerate(_SPLITS[days], start=1):
        chosen: list[str] = []
        # Each further day of a kind starts where the last one stopped in the main slots, so a
        # short day still leaves every main pattern (and push and pull alike) in the week.
        main = _MAIN_SLOTS[kind]
        offset = (seen_of_kind.get(kind, 0) * min(limit, main)) % main
        seen_of_kind[kind] = seen_of_kind.get(kind, 0) + 1
        slots = _DAY_SLOTS[kind]
        slots = slots[offset:main] + slots[:offset] + slots[main:]
        for slot_i, pattern in enumerate(slots):
            if len(chosen) >= limit:
                break
            # no such exercise: the other push (or pull) direction keeps the push/pull balance
            options = [n for n in by_pattern.get(pattern, by_pattern.get(_SAME_SIDE.get(pattern), []))
                       if n not in chosen and week_sets.get(audit.muscle_group(n), 0) + sets <= week_cap]
            if options:
                chosen.append(_pick(options, f"{variant}|{day_no}|{slot_i}|{pattern}"))
                group = audit.muscle_group(chosen[-1])
                week_sets[group] = week_sets.get(group, 0) + sets
        if goal in ("fat_loss", "endurance") and conditioning and len(chosen) < limit:
            chosen.append(_pick(conditioning, f"{variant}|{day_no}|cond"))
        for ex in usable:  # top up from anything usable when the slots ran dry
            if len(chosen) >= min(limit, 3):
                break
            group = audit.muscle_group(ex.name)
            if ex.name not in chosen and week_sets.get(group, 0) + sets <= week_cap:
                chosen.append(ex.name)
                week_sets[group] = week_sets.get(group, 0) + sets
        if not chosen:  # every group is at its weekly cap: a non-major exercise, else any
            chosen.append(next((e.name for e in usable if audit.muscle_group(e.name) is None), usable[0].name))
        exercises = []
        for name in chosen:
            ex = BY_NAME[name]
            reps = comp_reps if ex.compound else iso_reps
            n_sets = sets
            if ex.pattern == "conditioning":
                reps, n_sets = (10 if name == "Burpee" else 20), 1 if experience == "beginner" else 2
            exercises.append([name, n_sets, reps, rir, rest])
        budget = session_minutes * 60
        # Fit the session: shorten rests, then drop a set per exercise, then drop exercises.
        while _session_seconds(exercises) > budget:
            if exercises[0][4] > 45:
                for e in exercises:
                    e[4] = max(45, e[4] - 15)
            elif any(e[1] > 2 for e in exercises):
                for e in exercises:
                    e[1] = max(2, e[1] - 1) if e[1] > 2 else e[1]
            elif len(exercises) > 1:
                exercises.pop()
            elif exercises[0][1] > 1:
                exercises[0][1] -= 1
            else:
                exercises[0][4] = 0
                break
        out_days.append((day_no, f"{kind} {chr(64 + day_no)}", tuple(tuple(e) for e in exercises)))
    name = f"{days}-Day {_SPLITS[days][0] if days <= 3 else 'Upper/Lower'} {_GOAL_TITLE[goal]}"
    return name, tuple(out_days)


def plan_to_answer(plan_name: str, days) -> dict:
    """A built plan as a CoachAnswer dict."""
    return {
        "plan_name": plan_name,
        "days": [
            {"day": d, "name": n,
             "exercises": [{"name": e[0], "sets": e[1], "reps": e[2], "rir": e[3], "rest_s": e[4]} for e in exs]}
            for d, n, exs in days
        ],
        "notes": "",
        "safety": {"flags": [], "referral_required": False},
    }
