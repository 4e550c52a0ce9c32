"""Prompt text for coaching queries: the system prompt and the user message.

The system prompt is short on purpose (the student is trained and served on a
CPU budget); the teacher and evaluation reuse ``SYSTEM_PROMPT`` as is. The
user message states, the way a user would, everything a correct answer
depends on: profile, goals, conditions, injuries, medications, equipment,
schedule, the RIR floor and exercise limit, the exercises to avoid, and the
kind-specific part (current plan, requested change, trends or symptom).

``render_request`` words a structured query in one of many phrasings drawn
from the phrasing bank (``fitsense.data.phrasings``): register (terse, plain,
chatty), order of the fact lines, kg or lb, cm or ft-in, a paraphrase of the
request (seen or held-out templates) and, rarely, a typo in a template word.
The draw comes from the caller's generator, so a seed fixes the wording.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
from pydantic import BaseModel

from fitsense.catalogue import BY_NAME, EQUIPMENT
from fitsense.data import phrasings as bank
from fitsense.records import Phrasing, QueryConstraints, QueryContext

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


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _a_an(age: int) -> str:
    return "an" if str(age).startswith("8") or age in (11, 18) else "a"


def _height(cm: float, unit: str) -> str:
    if unit == "cm":
        return f"{cm:g} cm"
    inches = round(cm / 2.54)
    return f"{inches // 12} ft {inches % 12} in"


def _weight(kg: float, unit: str) -> str:
    return f"{kg:g} kg" if unit == "kg" else f"{round(kg * 2.20462)} lb"


def with_typo(template: str, rng: np.random.Generator) -> str:
    """Swap two inner letters of one template word (slots, numbers and short words are left alone)."""
    outside = re.split(r"(\{[^}]*\})", template)
    words = [(i, m) for i, part in enumerate(outside) if not part.startswith("{")
             for m in re.finditer(r"[A-Za-z]{5,}", part)]
    if not words:
        return template
    i, m = _pick(rng, words)
    w = m.group()
    k = int(rng.integers(1, len(w) - 2))
    w = w[:k] + w[k + 1] + w[k] + w[k + 2:]
    outside[i] = outside[i][: m.start()] + w + outside[i][m.end():]
    return "".join(outside)


def _fact_lines(context: dict, c: dict, register: str, units: tuple[str, str],
                rng: np.random.Generator | None) -> list[str]:
    """Profile, health, equipment, schedule and avoid lines; the first template of each when ``rng`` is None."""
    choose = (lambda options: options[0]) if rng is None else (lambda options: _pick(rng, options))
    p = context["profile"]
    sex = "woman" if p["sex"] == "female" else "man"
    goals = ", then ".join(_words(g) for g in context["goals"])
    lines = [choose(bank.PROFILE[register]).format(
        age=p["age"], a_an=_a_an(p["age"]), sex=sex, sex_letter="F" if p["sex"] == "female" else "M",
        height=_height(p["height_cm"], units[1]), weight=_weight(p["weight_kg"], units[0]),
        activity=ACTIVITY_WORDS[p["activity_level"]], experience=p["experience"], goals=goals)]
    cond_t, inj_t, med_t = bank.HEALTH[register]
    health = []
    if context["conditions"]:
        health.append(cond_t.format(conditions=", ".join(_words(x) for x in context["conditions"])))
    if context["injuries"]:
        health.append(inj_t.format(injuries=", ".join(f"{_words(i['site'])} ({i['status']})"
                                                      for i in context["injuries"])))
    if context["medications"]:
        health.append(med_t.format(medications=", ".join(context["medications"])))
    lines.append(" ".join(health) or choose(bank.HEALTH_NONE[register]))
    return lines + _constraint_lines(c, register, choose)


def _constraint_lines(c: dict, register: str, choose) -> list[str]:
    """The equipment, schedule and avoid lines of a query's constraints."""
    lines = []
    have = set(c["available_equipment"]) | {"bodyweight"}
    kit = choose(bank.FULL_GYM) if have == set(EQUIPMENT) else ", ".join(_words(e) for e in c["available_equipment"])
    lines.append(choose(bank.EQUIPMENT_LINE[register]).format(kit=kit))
    lines.append(choose(bank.SCHEDULE[register]).format(days=c["days_per_week"], minutes=c["session_minutes"],
                                                        max_ex=c["max_exercises_per_day"], rir=c["rir_floor"]))
    # Only avoided exercises the user could otherwise do are worth naming; the rest need missing kit.
    avoid = [n for n in c["avoid_exercises"] if n in BY_NAME and set(BY_NAME[n].equipment) <= have]
    if avoid:
        lines.append(choose(bank.AVOID[register]).format(avoid=", ".join(avoid)))
    return lines


def profile_text(constraints: QueryConstraints, context: QueryContext | None = None) -> str:
    """The facts a free-text request is asked with (``fitsense ask``), in the fixed terse wording: the user's
    profile and health lines when their query context is known, then the constraints' equipment, schedule
    and avoid lines. The student is trained on requests that state these facts, and a teacher asked later
    (``teacher capture --from-inference-log``) needs them in the prompt to honour the constraints."""
    if context is not None:
        return "\n".join(_fact_lines(_fields(context), _fields(constraints), "terse", ("kg", "cm"), None))
    return "\n".join(_constraint_lines(_fields(constraints), "terse", lambda options: options[0]))


def _trends_line(context: dict) -> str:
    trends = context["recent_trends"]
    weeks = max((len(t["weekly_top_reps"]) for t in trends), default=0)
    rirs = {round(t["weekly_avg_rir"][-1]) for t in trends}
    shared = len(rirs) == 1
    text = "; ".join(f"{t['name']} {','.join(map(str, t['weekly_top_reps']))}"
                     + ("" if shared else f" @RIR~{round(t['weekly_avg_rir'][-1])}") for t in trends)
    tail = f" (at RIR~{rirs.pop()})" if shared else ""
    return f"Top reps per week, last {weeks} weeks{tail}: {text}."


def _assemble(kind: str, context: dict, facts: list[str], request: str, request_first: bool) -> list[str]:
    if kind == "plan_modification":
        return facts + [compact_plan(context["current_plan"]), request]
    if kind == "progress_adaptation":
        return facts + [compact_plan(context["current_plan"]), _trends_line(context) + " " + request]
    if kind not in ("plan_creation", "safety_adjustment"):
        raise ValueError(f"unknown query kind {kind!r}")
    return [request] + facts if request_first else facts + [request]


def _fields(record: BaseModel | dict) -> dict:
    """A record's fields as plain data (what the query stage builds and writes): the one form the wording reads."""
    return record.model_dump() if isinstance(record, BaseModel) else record


def render_request(kind: str, context: QueryContext, constraints: QueryConstraints, intent: str,
                   slots: dict[str, str | int], rng: np.random.Generator, *, held_out: bool = False
                   ) -> tuple[str, Phrasing]:
    """The user message in a phrasing drawn from ``rng``, and the record of which phrasing it is.

    ``held_out`` draws the request from the intent's held-out templates (the challenge split).
    """
    text, phrasing = word_request(kind, _fields(context), _fields(constraints), intent, slots, rng, held_out=held_out)
    return text, Phrasing(**phrasing)


def word_request(kind: str, context: dict, constraints: dict, intent: str, slots: dict[str, str | int],
                 rng: np.random.Generator, *, held_out: bool = False) -> tuple[str, dict]:
    """``render_request`` on a query's fields as plain data (the query stage's records): the same draws and
    text, with the phrasing as its JSON fields."""
    templates = bank.INTENTS[intent].held_out if held_out else bank.INTENTS[intent].seen
    index = int(rng.integers(len(templates)))
    template_id = f"{intent}.{'h' if held_out else 's'}{index:02d}"
    register = _pick(rng, bank.REGISTERS)
    units = (_pick(rng, ("kg", "lb")), _pick(rng, ("cm", "ft-in")))
    facts = _fact_lines(context, constraints, register, units, rng)
    order = rng.permutation(len(facts)).tolist()
    facts = [facts[i] for i in order]
    typo = bool(rng.random() < bank.TYPO_RATE)
    template = with_typo(templates[index], rng) if typo else templates[index]
    request = template.format(**{k: _words(v) if isinstance(v, str) and k != "exercise" else v
                                 for k, v in slots.items()})
    lines = _assemble(kind, context, facts, request, request_first=bool(rng.random() < 0.3))
    opener, closer = _pick(rng, bank.OPENERS[register]), _pick(rng, bank.CLOSERS[register])
    text = "\n".join(line for line in (opener, *lines, closer) if line)
    phrasing = {"intent": intent, "template": template_id, "held_out": held_out, "slots": slots, "style": register,
                "units": "/".join(units), "fact_order": order, "typo": typo}
    return text, phrasing


def render_user_message(kind: str, context: QueryContext, constraints: QueryConstraints) -> str:
    """The plain, fixed wording of a query (hand-made queries in tests); the query stage uses ``render_request``."""
    if kind == "plan_modification":
        request = f"Change: {context.modification}"
    elif kind == "safety_adjustment" and context.new_symptom is not None:
        request = f"New: {context.new_symptom.text}. How should I train now?"
    elif kind == "safety_adjustment" and context.new_injury is not None:
        request = f"New: I injured my {_words(context.new_injury.site)} this week. Please adjust my plan."
    elif kind == "safety_adjustment":
        request = f"New: I was just diagnosed with {_words(context.new_condition)}. Please adjust my plan."
    else:
        request = bank.INTENTS["plan.create" if kind == "plan_creation" else "progress.adapt"].canonical
    context, constraints = _fields(context), _fields(constraints)
    facts = _fact_lines(context, constraints, "terse", ("kg", "cm"), None)
    return "\n".join(_assemble(kind, context, facts, request, request_first=False))
