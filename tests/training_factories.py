"""Small synthetic distillation datasets in the dataset stage's file contract.

Used by the training tests and ``benchmarks/bench_training.py`` to exercise
training without running the upstream stages. The examples have the real
shape and length (a ~250-token prompt, a compact ``CoachAnswer`` JSON answer)
and the answer follows from the prompt (days, equipment, RIR floor), so a
student can measurably learn them.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from fitsense.catalogue import CATALOGUE, EQUIPMENT_TIERS
from fitsense.plan import CoachAnswer, PlanDay, PlannedExercise, SafetyBlock
from fitsense.records import ChatMessage, DistillRecord, QueryConstraints
from fitsense.runs import file_sha256, write_json, write_jsonl

SYSTEM = (
    "You are FitSense, a certified strength coach. Answer with one JSON object that follows the plan schema: "
    "plan_name, days (day, name, exercises with name, sets, reps, rir, rest_s), notes, safety "
    "(flags, referral_required, reason). Use only catalogue exercises the user has equipment for, never "
    "exceed the requested days or exercises per day, keep rir at or above the user's floor, and refer the "
    "user to a clinician when a symptom is a red flag."
)
GOALS = ("fat_loss", "muscle_gain", "strength", "endurance", "general_health")
REPS = {"fat_loss": 12, "muscle_gain": 10, "strength": 5, "endurance": 15, "general_health": 10}
DAY_NAMES = ("Full Body A", "Full Body B", "Upper", "Lower", "Push", "Pull", "Conditioning")


def _record(i: int, rng: random.Random) -> DistillRecord:
    tier = rng.choice(list(EQUIPMENT_TIERS))
    equipment = list(EQUIPMENT_TIERS[tier])
    goal = rng.choice(GOALS)
    days_per_week = rng.randint(2, 3)
    per_day = rng.randint(2, 4)
    rir_floor = rng.choice([1, 2, 3])
    age, minutes = rng.randint(18, 70), rng.choice([30, 45, 60])
    usable = [e for e in CATALOGUE if set(e.equipment) <= set(equipment)]
    days = []
    for d in range(days_per_week):
        picks = rng.sample(usable, k=min(per_day, len(usable)))
        days.append(PlanDay(day=d + 1, name=DAY_NAMES[d], exercises=[
            PlannedExercise(name=e.name, sets=3, reps=REPS[goal], rir=rir_floor, rest_s=90 if goal != "strength" else 180)
            for e in picks
        ]))
    answer = CoachAnswer(
        plan_name=f"{days_per_week}-Day {goal.replace('_', ' ').title()} Plan",
        days=days,
        notes=f"Keep every set at RIR {rir_floor} or more; add reps before load.",
        safety=SafetyBlock(),
    )
    user = (
        f"Profile: {age}-year-old, {rng.choice(['female', 'male'])}, {rng.randint(150, 195)} cm, "
        f"{rng.randint(50, 110)} kg, activity {rng.choice(['light', 'moderate', 'active'])}, "
        f"experience {rng.choice(['beginner', 'intermediate'])}.\n"
        f"Primary goal: {goal}. Other goals: consistency, better sleep.\n"
        f"Equipment available: {', '.join(equipment)}.\n"
        f"Conditions: none. Injuries: none. Medications: none.\n"
        f"Schedule: {days_per_week} days per week, {minutes} minutes per session, at most {per_day} exercises "
        f"per day. Keep at least {rir_floor} reps in reserve on every set.\n"
        "Request: write me a new weekly training plan that fits all of the above, and explain briefly how to "
        "progress it over the next four weeks."
    )
    slices = {
        "age_band": "18-29" if age < 30 else "30-49" if age < 50 else "50+",
        "sex": "female", "activity_level": "moderate", "experience": "beginner", "primary_goal": goal,
        "has_condition": "no", "has_injury": "no", "equipment_tier": tier,
    }
    return DistillRecord(
        messages=[ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=user),
                  ChatMessage(role="assistant", content=answer.to_json())],
        query_id=f"q{i:05d}", user_id=1000 + i, kind="plan_creation", slices=slices,
        constraints=QueryConstraints(days_per_week=days_per_week, session_minutes=minutes,
                                     max_exercises_per_day=per_day, available_equipment=equipment,
                                     rir_floor=rir_floor),
        teacher_model="synthetic-examples",
    )


def make_records(n: int, seed: int = 0, start: int = 0) -> list[DistillRecord]:
    rng = random.Random(seed)
    return [_record(start + i, rng) for i in range(n)]


def write_dataset_stage(stage_dir: str | Path, n_train: int, n_val: int, n_test: int = 4, seed: int = 0,
                        source_run_id: str = "synthetic") -> dict:
    """Write ``{train,val,test}.jsonl`` + ``dataset_info.json`` like the dataset stage does; return the info."""
    stage_dir = Path(stage_dir)
    records = make_records(n_train + n_val + n_test, seed)
    splits = {"train": records[:n_train], "val": records[n_train:n_train + n_val], "test": records[n_train + n_val:]}
    for name, recs in splits.items():
        write_jsonl(stage_dir / f"{name}.jsonl", recs)
    digest = hashlib.sha256("".join(file_sha256(stage_dir / f"{s}.jsonl") for s in splits).encode()).hexdigest()
    info = {"dataset_run_id": f"ds-synthetic-{digest[:8]}", "digest": digest, "source_run_id": source_run_id,
            "rows": {s: len(r) for s, r in splits.items()}}
    write_json(stage_dir / "dataset_info.json", info)
    return info
