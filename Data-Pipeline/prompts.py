"""Prompt text for coaching queries: the system prompt and the user message.

The system prompt is short on purpose (the student is trained and served on a
CPU budget); the teacher and evaluation reuse ``SYSTEM_PROMPT`` as is. The
user message states, the way a user would, everything a correct answer
depends on: profile, goals, conditions, injuries, medications, equipment,
schedule, the RIR floor and exercise limit, the exercises to avoid, and the
kind-specific part (current plan, requested change, trends or symptom).
"""

from __future__ import annotations

from collections import Counter

from fitsense.catalogue import BY_NAME, EQUIPMENT
from fitsense.records import QueryConstraints, QueryContext

SYSTEM_PROMPT = (
    "You are FitSense, a careful strength coach. Reply with one JSON object only, keys: plan_name, "
    "days[{day,name,exercises[\"<name> <sets>x<reps> RIR<n> <rest>s\"]}], notes, safety{flags,referral_required,reason}. "
    "Catalogue exercise names only, no weights. Obey the days, minutes, exercise limit, equipment, "
    "RIR floor and avoid list. Red-flag symptom: referral_required true with a reason."
)

ACTIVITY_WORDS = {
    "sedentary": "sedentary",
    "light": "lightly active",
    "moderate": "moderately active",
    "active": "active",
    "very_active": "very active",
}


def _words(code: str) -> str:
    return code.replace("_", " ")


def _modal(values: list):
    return Counter(values).most_common(1)[0][0]


def compact_plan(plan: dict) -> str:
    """A plan in few tokens, exactly: the usual dose once, exceptions per exercise, repeated days referenced.

    'Current plan (3x10 at RIR 2, rest 90s unless noted):' then 'D1 Upper A: Push-Up, Plank 3x15, ...'.
    """
    exercises = [e for d in plan["days"] for e in d["exercises"]]
    if not exercises:
        return "Current plan: none."
    dose = _modal([(e["sets"], e["reps"]) for e in exercises])
    rir = _modal([e["rir"] for e in exercises])
    rest = _modal([e["rest_s"] for e in exercises])
    lines, seen = [f"Current plan ({dose[0]}x{dose[1]} at RIR {rir}, rest {rest}s unless noted):"], {}
    for day in plan["days"]:
        parts = []
        for e in day["exercises"]:
            part = e["name"]
            if (e["sets"], e["reps"]) != dose:
                part += f" {e['sets']}x{e['reps']}"
            if e["rir"] != rir:
                part += f" RIR {e['rir']}"
            if e["rest_s"] != rest:
                part += f" {e['rest_s']}s"
            parts.append(part)
        body = ", ".join(parts)
        if body in seen:
            lines.append(f"D{day['day']} {day['name']}: as D{seen[body]}")
        else:
            seen[body] = day["day"]
            lines.append(f"D{day['day']} {day['name']}: {body}")
    return "\n".join(lines)


def render_user_message(kind: str, context: QueryContext, constraints: QueryConstraints) -> str:
    p, c = context.profile, constraints
    sex = "woman" if p.sex == "female" else "man"
    goals = ", then ".join(_words(g) for g in context.goals)
    health = []
    if context.conditions:
        health.append("Conditions: " + ", ".join(_words(x) for x in context.conditions) + ".")
    if context.injuries:
        health.append("Injuries: " + ", ".join(f"{_words(i.site)} ({i.status})" for i in context.injuries) + ".")
    if context.medications:
        health.append("Meds: " + ", ".join(context.medications) + ".")
    have = set(c.available_equipment) | {"bodyweight"}
    kit = "full gym" if have == set(EQUIPMENT) else ", ".join(_words(e) for e in c.available_equipment)
    # Only avoided exercises the user could otherwise do are worth naming; the rest need missing kit.
    avoid = [n for n in c.avoid_exercises if n in BY_NAME and set(BY_NAME[n].equipment) <= have]
    lines = [
        f"I'm {'an' if str(p.age).startswith('8') or p.age in (11, 18) else 'a'} {p.age}-year-old {sex}, {p.height_cm:g} cm, {p.weight_kg:g} kg, "
        f"{ACTIVITY_WORDS[p.activity_level]}, {p.experience}. Goal: {goals}.",
        " ".join(health) or "No conditions or injuries.",
        f"Equipment: {kit}.",
        f"{c.days_per_week} days/week, {c.session_minutes} min/session, max {c.max_exercises_per_day} "
        f"exercises/day, all sets RIR {c.rir_floor}+.",
    ]
    if avoid:
        lines.append(f"Avoid: {', '.join(avoid)}.")
    if kind == "plan_creation":
        lines.append("Please write my weekly plan.")
    elif kind == "plan_modification":
        lines.append(compact_plan(context.current_plan))
        lines.append(f"Change: {context.modification}")
    elif kind == "safety_adjustment":
        if context.new_symptom is not None:
            lines.append(f"New: {context.new_symptom.text}. How should I train now?")
        elif context.new_injury is not None:
            lines.append(f"New: I injured my {_words(context.new_injury.site)} this week. Please adjust my plan.")
        else:
            lines.append(f"New: I was just diagnosed with {_words(context.new_condition)}. Please adjust my plan.")
    elif kind == "progress_adaptation":
        lines.append(compact_plan(context.current_plan))
        trends = context.recent_trends
        weeks = max((len(t.weekly_top_reps) for t in trends), default=0)
        rirs = {round(t.weekly_avg_rir[-1]) for t in trends}
        shared = len(rirs) == 1
        text = "; ".join(f"{t.name} {','.join(map(str, t.weekly_top_reps))}"
                         + ("" if shared else f" @RIR~{round(t.weekly_avg_rir[-1])}") for t in trends)
        tail = f" (at RIR~{rirs.pop()})" if shared else ""
        lines.append(f"Top reps per week, last {weeks} weeks{tail}: {text}. Please adapt my plan.")
    else:
        raise ValueError(f"unknown query kind {kind!r}")
    return "\n".join(lines)
