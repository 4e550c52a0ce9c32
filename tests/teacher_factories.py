"""Hand-made coaching queries for the teacher tests (independent of the query stage)."""

from __future__ import annotations

from fitsense.catalogue import CONDITIONS, exercises_to_avoid
from fitsense.data.prompts import SYSTEM_PROMPT, render_user_message
from fitsense.records import ChatMessage, CoachingQuery, ExerciseTrend, Injury, Profile, QueryConstraints, QueryContext, Symptom

EXPERIENCE_FLOOR = {"beginner": 2, "intermediate": 1, "advanced": 0}

CURRENT_PLAN = {
    "plan_name": "3-Day Full Body",
    "days": [
        {"day": d, "name": f"Full Body {d}", "exercises": [
            {"name": "Goblet Squat", "sets": 3, "reps": 10, "rir": 2, "rest_s": 90},
            {"name": "Dumbbell Bench Press", "sets": 3, "reps": 10, "rir": 2, "rest_s": 90},
            {"name": "One-Arm Dumbbell Row", "sets": 3, "reps": 10, "rir": 2, "rest_s": 90},
            {"name": "Dumbbell Romanian Deadlift", "sets": 3, "reps": 10, "rir": 2, "rest_s": 90},
            {"name": "Plank", "sets": 2, "reps": 12, "rir": 2, "rest_s": 60},
        ]}
        for d in (1, 2, 3)
    ],
    "notes": "",
    "safety": {"flags": [], "referral_required": False},
}


def make_query(kind: str = "plan_creation", qid: str = "t000001", user_id: int = 1, goal: str = "muscle_gain",
               experience: str = "intermediate", equipment=("bodyweight", "dumbbells", "bench"), conditions=(),
               injury_sites=(), days: int = 3, minutes: int = 45, current_plan: dict | None = None,
               modification: str | None = None, trends=(), symptom: tuple[str, bool] | None = None,
               new_injury: str | None = None, new_condition: str | None = None, extra_avoid=(), age: int = 35):
    conditions = list(conditions) + ([new_condition] if new_condition else [])
    sites = sorted(set(injury_sites) | ({new_injury} if new_injury else set()))
    injuries = [Injury(site=s, status="active") for s in sites]
    constraints = QueryConstraints(
        days_per_week=days, session_minutes=minutes, max_exercises_per_day=max(2, min(8, minutes // 7)),
        available_equipment=list(equipment),
        avoid_exercises=sorted(set(exercises_to_avoid(sites, conditions)) | set(extra_avoid)),
        rir_floor=max([EXPERIENCE_FLOOR[experience]] + [CONDITIONS[c]["rir_floor"] for c in conditions]),
        referral_required=bool(symptom and symptom[1]),
    )
    if kind in ("plan_modification", "progress_adaptation") and current_plan is None:
        current_plan = CURRENT_PLAN
    context = QueryContext(
        profile=Profile(age=age, sex="female", height_cm=168, weight_kg=64, activity_level="moderate",
                        experience=experience),
        primary_goal=goal, goals=[goal], conditions=conditions, injuries=injuries, equipment=list(equipment),
        current_plan=current_plan, modification=modification,
        recent_trends=[ExerciseTrend(name=n, weekly_top_reps=r, weekly_avg_rir=[2.0] * len(r), trend=t)
                       for n, r, t in trends],
        new_symptom=Symptom(text=symptom[0], red_flag=symptom[1]) if symptom else None,
        new_injury=Injury(site=new_injury, status="active") if new_injury else None,
        new_condition=new_condition,
    )
    if kind == "safety_adjustment" and not (symptom or new_injury or new_condition):
        raise ValueError("a safety query needs a symptom, injury or condition")
    messages = [ChatMessage(role="system", content=SYSTEM_PROMPT),
                ChatMessage(role="user", content=render_user_message(kind, context, constraints))]
    slices = {"age_band": "30-44", "sex": "female", "activity_level": "moderate", "experience": experience,
              "primary_goal": goal, "has_condition": "yes" if conditions else "no",
              "has_injury": "yes" if sites else "no", "equipment_tier": "home"}
    return CoachingQuery(query_id=qid, user_id=user_id, kind=kind, messages=messages, slices=slices,
                         constraints=constraints, context=context)


def query_set(n: int = 12) -> list[CoachingQuery]:
    """n distinct queries covering every kind (distinct users, so distinct messages)."""
    makers = [
        lambda i: make_query("plan_creation", goal=("strength", "fat_loss", "muscle_gain")[i % 3], days=2 + i % 4),
        lambda i: make_query("plan_modification", modification="I don't like Goblet Squat; please swap it.",
                             extra_avoid=("Goblet Squat",)),
        lambda i: make_query("safety_adjustment", new_injury=("knee", "shoulder", "lower_back")[i % 3]),
        lambda i: make_query("progress_adaptation", trends=[("Goblet Squat", [8, 9, 10, 11], "progressing")]),
        lambda i: make_query("safety_adjustment", symptom=("chest pain when I exert myself", True)),
    ]
    out = []
    for i in range(n):
        q = makers[i % len(makers)](i)
        out.append(q.model_copy(update={"query_id": f"t{i + 1:06d}", "user_id": 100 + i,
                                        "context": q.context.model_copy(update={"profile": q.context.profile.model_copy(
                                            update={"age": 20 + i})})}))
    # re-render the prompt so each query's messages are distinct (age is in the text)
    return [q.model_copy(update={"messages": [q.messages[0], ChatMessage(role="user", content=render_user_message(
        q.kind, q.context, q.constraints))]}) for q in out]
