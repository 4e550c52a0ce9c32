"""Small factories for dataset and data-quality tests: queries and teacher records in a tmp run.

They write the same files the query and teacher stages write
(``queries/queries.jsonl``, ``teacher/records.jsonl``), so the dataset and
quality stages run on them exactly as on real upstream output.
"""

from __future__ import annotations

import random
from pathlib import Path

from fitsense.catalogue import EQUIPMENT_TIERS, exercises_to_avoid, usable_exercises
from fitsense.config import load_params
from fitsense.constraints import check_answer
from fitsense.plan import CoachAnswer
from fitsense.records import CoachingQuery, TeacherRecord
from fitsense.runs import RunContext, write_jsonl

KINDS = ("plan_creation", "plan_modification", "safety_adjustment", "progress_adaptation")
AGE_BANDS = {"18-29": 24, "30-44": 37, "45-59": 52, "60+": 66}
GOALS = ("fat_loss", "muscle_gain", "strength", "endurance", "general_health")
WORDS = ("tired", "busy", "travel", "motivated", "evening", "morning", "garage", "park", "knees", "back",
         "shift", "kids", "stairs", "marathon", "wedding", "summer", "office", "sleep", "stress", "desk")


def make_ctx(tmp_path: Path, run_id: str = "r1", **overrides) -> RunContext:
    # The factory's random plans are not coached: the audit gate is tested on its own (test_audit.py).
    overrides = {"quality.min_audit_pass_rate": 0.0, **overrides}
    params = load_params(None, {"run.artifacts_dir": str(tmp_path / "artifacts"), **overrides})
    return RunContext.create(params, run_id)


def _user(rng: random.Random, user_id: int, starve: dict[str, str] | None = None) -> dict:
    band = rng.choice(list(AGE_BANDS))
    has_condition = rng.random() < 0.3
    tier = rng.choice(list(EQUIPMENT_TIERS))
    if starve and user_id != 1 and tier == starve.get("equipment_tier"):
        tier = "home"  # only user 1 may hold the starved slice value
    return {
        "user_id": user_id,
        "age": AGE_BANDS[band] + rng.randint(-3, 3),
        "slices": {
            "age_band": band,
            "sex": rng.choice(["female", "male"]),
            "activity_level": rng.choice(["sedentary", "light", "moderate", "active", "very_active"]),
            "experience": rng.choice(["beginner", "intermediate", "advanced"]),
            "primary_goal": rng.choice(GOALS),
            "has_condition": "yes" if has_condition else "no",
            "has_injury": rng.choice(["yes", "no"]),
            "equipment_tier": tier,
        },
        "conditions": ["hypertension"] if has_condition else [],
        "injuries": ["knee"] if rng.random() < 0.3 else [],
    }


def _answer(rng: random.Random, q: CoachingQuery) -> CoachAnswer:
    c = q.constraints
    if c.referral_required:
        return CoachAnswer.model_validate({
            "plan_name": "Pause and see a clinician", "days": [],
            "notes": "Stop training until cleared.",
            "safety": {"flags": ["red_flag_symptom"], "referral_required": True, "reason": "chest pain on exertion"},
        })
    pool = usable_exercises(c.available_equipment, c.avoid_exercises)
    days = []
    for d in range(1, c.days_per_week + 1):
        picks = rng.sample(pool, k=min(3, c.max_exercises_per_day))
        days.append({
            "day": d, "name": f"Day {d}",
            "exercises": [{"name": e.name, "sets": rng.randint(2, 4), "reps": rng.randint(6, 15),
                           "rir": max(c.rir_floor, rng.randint(1, 3)), "rest_s": 60} for e in picks],
        })
    return CoachAnswer.model_validate({"plan_name": f"{q.kind} plan {q.query_id}", "days": days,
                                       "notes": " ".join(rng.sample(WORDS, 4))})


def make_query(rng: random.Random, user: dict, idx: int, kind: str) -> CoachingQuery:
    tier = user["slices"]["equipment_tier"]
    equipment = list(EQUIPMENT_TIERS[tier])
    referral = kind == "safety_adjustment" and rng.random() < 0.35
    constraints = {
        "days_per_week": rng.randint(2, 5), "session_minutes": rng.choice([30, 45, 60]),
        "max_exercises_per_day": rng.randint(3, 6), "available_equipment": equipment,
        "avoid_exercises": exercises_to_avoid(user["injuries"], user["conditions"]),
        "rir_floor": 3 if user["conditions"] else 1, "referral_required": referral,
    }
    s = user["slices"]
    text = (f"I'm {user['age']} ({s['sex']}), {s['experience']}, goal {s['primary_goal']}. "
            f"Request {idx} ({kind}): " + " ".join(rng.sample(WORDS, 6)) + f" {rng.randint(1, 10**6)}")
    return CoachingQuery.model_validate({
        "query_id": f"q{idx:05d}", "user_id": user["user_id"], "kind": kind,
        "messages": [{"role": "system", "content": "You are FitSense, a careful strength coach. Answer in JSON."},
                     {"role": "user", "content": text}],
        "slices": s, "constraints": constraints,
        "context": {
            "profile": {"age": user["age"], "sex": s["sex"], "height_cm": 170.0, "weight_kg": 70.0,
                        "activity_level": s["activity_level"], "experience": s["experience"]},
            "primary_goal": s["primary_goal"], "goals": [s["primary_goal"]],
            "conditions": user["conditions"], "injuries": [{"site": i, "status": "active"} for i in user["injuries"]],
            "equipment": equipment,
        },
    })


def make_record(rng: random.Random, q: CoachingQuery, fail: bool = False, latency_scale: float = 1.0) -> TeacherRecord:
    answer = _answer(rng, q)
    text = answer.to_json()
    base = {"query_id": q.query_id, "user_id": q.user_id, "kind": q.kind, "teacher_model": "fitsense-expert-v1",
            "attempts": 1, "latency_s": round(rng.uniform(0.2, 1.5) * latency_scale, 4),
            "prompt_tokens": len(q.messages[1].content) // 4 + 200, "completion_tokens": len(text) // 4}
    if fail:
        return TeacherRecord.model_validate({**base, "status": "failed", "failure_reason": "http_500",
                                             "attempts": 7, "completion_tokens": 0})
    violations = check_answer(answer, q.constraints)
    return TeacherRecord.model_validate({
        **base, "status": "ok", "response_text": text, "answer": answer.model_dump(mode="json", exclude_none=True),
        "schema_valid": True, "constraint_violations": violations,
        "referral_required": answer.safety.referral_required,
    })


def write_inputs(ctx: RunContext, n_users: int = 40, per_user: int = 3, seed: int = 0, fail_share: float = 0.05,
                 latency_scale: float = 1.0, kind_weights: tuple[float, ...] = (0.3, 0.25, 0.2, 0.25),
                 starve: dict[str, str] | None = None) -> tuple[list[CoachingQuery], list[TeacherRecord]]:
    """Write queries and teacher records for ``n_users`` users into ``ctx``'s run folder."""
    rng = random.Random(seed)
    users = [_user(rng, uid, starve) for uid in range(1, n_users + 1)]
    queries, records = [], []
    idx = 0
    for user in users:
        for _ in range(per_user):
            idx += 1
            kind = rng.choices(KINDS, weights=kind_weights)[0]
            q = make_query(rng, user, idx, kind)
            queries.append(q)
            records.append(make_record(rng, q, fail=rng.random() < fail_share, latency_scale=latency_scale))
    write_jsonl(ctx.stage_dir("queries") / "queries.jsonl", queries)
    write_jsonl(ctx.stage_dir("teacher") / "records.jsonl", records)
    return queries, records


REAL_CHAIN = {"synthetic.n_users": 40, "queries.n_queries": 90}


def build_real_chain(root: Path, run_id: str) -> tuple[RunContext, dict]:
    """The real upstream stages on a small world (synthetic -> queries -> offline teacher -> dataset):
    the context and the dataset stage's summary, ready for the quality stage."""
    from fitsense.data.dataset import build_distillation_dataset
    from fitsense.data.queries import build_queries
    from fitsense.data.synthetic import generate_synthetic_data
    from fitsense.data.teacher.capture import capture_teacher_responses

    ctx = make_ctx(root, run_id=run_id, **REAL_CHAIN, **{"teacher.cache_dir": str(root / "teacher-cache")})
    generate_synthetic_data(ctx)
    build_queries(ctx)
    capture_teacher_responses(ctx)
    return ctx, build_distillation_dataset(ctx)
