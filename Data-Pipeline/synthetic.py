"""Synthetic data stage: users, profiles, plans, logged workouts and daily logs.

One Parquet file per table of ``database/schema.sql`` (same table and column
names). Users are drawn ``CHUNK_USERS`` at a time, each chunk from its own numpy
Generator seeded by ``params.seed`` and the chunk number, and streamed to the
files, so memory follows the chunk, not the run; surrogate ids continue across
chunks. Everything is dated relative to ``synthetic.anchor_date``, so the same
params give byte-identical files. Attributes are drawn jointly, not independently:
activity falls with age, BMI falls with activity, experience follows
activity, equipment follows experience, conditions rise with age and BMI,
injuries with age and experience, goals follow BMI, age and experience.
Each user's current plan comes from ``planning.build_plan`` under the user's
own constraints; logged workouts follow that plan and progress, stall or
regress per user; daily calories balance the body-weight trend of the goal.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from fitsense.catalogue import (
    CATALOGUE,
    CONDITIONS,
    EQUIPMENT,
    EQUIPMENT_TIERS,
    INJURY_SITES,
    exercises_to_avoid,
)
from fitsense.constraints import session_seconds
from fitsense.data import planning
from fitsense.data.planning import ACTIVITY_LEVELS, EXPERIENCE_LEVELS, GOALS, SESSION_MINUTES
from fitsense.runs import RunContext, atomic_path, write_manifest

log = logging.getLogger(__name__)

STAGE = "synthetic"
# Users generated and written at a time (~40 KB each while a chunk is in memory).
CHUNK_USERS = 25_000
CONDITION_NAMES = tuple(CONDITIONS)
SEVERITIES = ("mild", "moderate", "severe")
INJURY_STATUSES = ("active", "recovering", "resolved")
# One typical medication per condition and the share of people with it who take one.
MEDICATIONS = {
    "hypertension": ("lisinopril", 0.7),
    "type2_diabetes": ("metformin", 0.8),
    "asthma": ("salbutamol inhaler", 0.75),
    "osteoarthritis": ("ibuprofen as needed", 0.4),
    "osteoporosis": ("alendronate", 0.6),
    "coronary_artery_disease": ("atorvastatin", 0.9),
    "pregnancy": ("prenatal vitamins", 0.85),
}
# Working load of an exercise as a share of body weight, for an untrained man (0: bodyweight or band).
LOAD_FACTOR = {
    "Barbell Back Squat": 0.8, "Goblet Squat": 0.25, "Leg Press": 1.4, "Dumbbell Reverse Lunge": 0.15,
    "Barbell Deadlift": 1.0, "Romanian Deadlift": 0.7, "Dumbbell Romanian Deadlift": 0.25,
    "Kettlebell Swing": 0.2, "Hip Thrust": 0.8, "Cable Pull-Through": 0.3, "Barbell Bench Press": 0.6,
    "Dumbbell Bench Press": 0.22, "Cable Chest Fly": 0.12, "Barbell Overhead Press": 0.4,
    "Seated Dumbbell Shoulder Press": 0.15, "Dumbbell Lateral Raise": 0.06, "Barbell Bent-Over Row": 0.5,
    "One-Arm Dumbbell Row": 0.25, "Seated Cable Row": 0.5, "Lat Pulldown": 0.5, "Dumbbell Biceps Curl": 0.1,
    "Cable Triceps Pushdown": 0.2, "Farmer's Carry": 0.3,
}
# Weekday offsets of the training days for each number of days per week.
DAY_OFFSETS = {1: [0], 2: [0, 3], 3: [0, 2, 4], 4: [0, 1, 3, 4], 5: [0, 1, 2, 3, 4], 6: [0, 1, 2, 3, 4, 5],
               7: [0, 1, 2, 3, 4, 5, 6]}
ACTIVITY_FACTOR = np.array([1.2, 1.375, 1.55, 1.725, 1.9])


def _ragged(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ranges [start, start+len) for each group, and the position within each group."""
    lengths = lengths.astype(np.int64)
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    pos = np.arange(int(lengths.sum()), dtype=np.int64) - offsets
    return np.repeat(starts.astype(np.int64), lengths) + pos, pos


def _categorical(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """One draw per row from softmax(logits) (Gumbel-max trick, vectorised)."""
    return np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)


def _ranked(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """A random ranking per row, sampled without replacement in proportion to softmax(logits)."""
    return np.argsort(-(logits + rng.gumbel(size=logits.shape)), axis=1, kind="stable")


def _date(days: np.ndarray) -> pa.Array:
    return pa.array(days.astype("datetime64[D]"), type=pa.date32())


def _strings(values: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(values, dtype=object)[codes], type=pa.string())


@dataclass
class _Users:
    n: int
    age: np.ndarray
    female: np.ndarray
    height: np.ndarray
    weight: np.ndarray
    bmi: np.ndarray
    activity: np.ndarray
    experience: np.ndarray
    goal_rank: np.ndarray  # (n, 5) goal indices by priority
    n_goals: np.ndarray
    cond: np.ndarray  # (n, 7) bool
    equip: np.ndarray  # (n, 11) bool
    days: np.ndarray
    minutes_idx: np.ndarray


def _draw_users(rng: np.random.Generator, n: int) -> _Users:
    age = np.floor(18 + rng.beta(1.6, 2.6, n) * 62).astype(np.int64)
    female = rng.random(n) < 0.5
    height = np.where(female, rng.normal(163, 7, n), rng.normal(177, 7.5, n)).clip(145, 205).round(1)
    activity = np.digitize(rng.normal(0, 1, n) - 0.025 * (age - 40), [-1.0, -0.3, 0.4, 1.1])
    bmi = rng.normal(27.5 - 1.2 * activity + 0.04 * (age - 40), 3.8, n).clip(17, 48)
    weight = (bmi * (height / 100) ** 2).round(1)
    experience = np.digitize(0.55 * activity + rng.normal(0, 1, n), [1.2, 2.4])

    # goals: fat loss follows BMI, general health age, strength experience, muscle gain young men
    g = {name: i for i, name in enumerate(GOALS)}
    logits = np.zeros((n, len(GOALS)))
    logits[:, g["fat_loss"]] += 1.6 * (bmi >= 30) + 0.8 * (bmi >= 25) - 1.5 * (bmi < 21)
    logits[:, g["muscle_gain"]] += 0.9 * ~female + 0.6 * (age < 35) + 0.5 * (bmi < 23)
    logits[:, g["strength"]] += 1.0 * (experience == 2) + 0.4 * (experience == 1) - 0.5
    logits[:, g["endurance"]] += 0.6 * (activity >= 3) - 0.3
    logits[:, g["general_health"]] += 1.3 * (age >= 55) + 0.5 * (activity == 0)
    goal_rank = _ranked(rng, logits)
    n_goals = rng.choice([1, 2, 3], size=n, p=[0.4, 0.4, 0.2])

    # conditions: logistic in age, BMI, sex and activity
    x_age, x_bmi, male = age - 18, bmi - 25, (~female).astype(float)
    lin = {
        "hypertension": -4.0 + 0.065 * x_age + 0.08 * x_bmi + 0.3 * male - 0.15 * activity,
        "type2_diabetes": -5.3 + 0.05 * x_age + 0.15 * x_bmi - 0.15 * activity,
        "asthma": np.full(n, -2.7),
        "osteoarthritis": -6.2 + 0.08 * x_age + 0.08 * x_bmi,
        "osteoporosis": -7.8 + 0.085 * x_age + 1.2 * female,
        "coronary_artery_disease": -8.2 + 0.085 * x_age + 0.8 * male + 0.05 * x_bmi - 0.1 * activity,
        "pregnancy": np.where(female & (age <= 45), -3.0, -np.inf),
    }
    p = 1 / (1 + np.exp(-np.stack([lin[c] for c in CONDITION_NAMES], axis=1)))
    cond = rng.random(p.shape) < p

    # equipment: the tier follows experience; home users own a random subset of home kit
    tier_p = np.array([[0.45, 0.35, 0.20], [0.20, 0.35, 0.45], [0.08, 0.22, 0.70]])
    tier = _categorical(rng, np.log(tier_p[experience]))
    e_idx = {name: i for i, name in enumerate(EQUIPMENT)}
    equip = np.zeros((n, len(EQUIPMENT)), dtype=bool)
    equip[:, e_idx["bodyweight"]] = True
    equip[tier == 2] = True
    home_items = [e for e in EQUIPMENT_TIERS["home"] if e != "bodyweight"]
    own_p = np.array([0.75, 0.7, 0.4, 0.35])
    home = tier == 1
    owned = rng.random((n, len(home_items))) < own_p
    owned[~owned.any(axis=1), 1] = True  # a home tier user owns at least resistance bands
    for j, item in enumerate(home_items):
        equip[home, e_idx[item]] = owned[home, j]

    # availability: more active people train more days; longer sessions with experience
    days = np.rint(rng.normal(2.3 + 0.55 * activity, 0.7, n)).clip(1, 6).astype(np.int64)
    strength_like = np.isin(goal_rank[:, 0], [g["strength"], g["muscle_gain"]])
    minutes_idx = np.rint(rng.normal(1.5 + 0.5 * experience + 0.3 * strength_like, 0.9, n)).clip(0, 5).astype(np.int64)
    return _Users(n, age, female, height, weight, bmi, activity, experience, goal_rank, n_goals, cond, equip,
                  days, minutes_idx)


def _bits(mask: np.ndarray) -> np.ndarray:
    return (mask.astype(np.int64) << np.arange(mask.shape[1], dtype=np.int64)).sum(axis=1)


def _unbits(code: int, names: tuple[str, ...]) -> list[str]:
    return [name for i, name in enumerate(names) if code >> i & 1]


def _ids(before: dict[str, int], table: str, count: int) -> np.ndarray:
    """The next ``count`` surrogate ids of ``table``, after the rows earlier chunks wrote."""
    first = before.get(table, 0) + 1
    return np.arange(first, first + count, dtype=np.int64)


def generate_chunks(seed: int, n_users: int, anchor: np.datetime64, weeks: int) -> Iterator[dict[str, pa.Table]]:
    """The tables of ``CHUNK_USERS`` users at a time, keyed by SQL table name (parents first).

    The catalogue tables come with the first chunk only. Chunk 0 draws from stream
    ``[seed, 1]`` (the query stage uses stream 2), the stream a single-chunk run always
    had, so a run of at most ``CHUNK_USERS`` users keeps its bytes; chunk k draws from ``[seed, 1, k]``.
    """
    before: dict[str, int] = {}
    for chunk, first in enumerate(range(0, n_users, CHUNK_USERS)):
        rng = np.random.default_rng([seed, 1] if chunk == 0 else [seed, 1, chunk])
        n = min(CHUNK_USERS, n_users - first)
        if n_users > CHUNK_USERS:
            log.info("synthetic: users %d-%d of %d", first + 1, first + n, n_users)
        tables = _chunk_tables(rng, n, before, anchor, weeks, catalogue=chunk == 0)
        for name, table in tables.items():
            before[name] = before.get(name, 0) + table.num_rows
        yield tables
        del tables  # the consumer holds the only reference: the chunk is freed before the next one is drawn


def generate_tables(seed: int, n_users: int, anchor: np.datetime64, weeks: int) -> dict[str, pa.Table]:
    """All tables in memory, keyed by SQL table name (parents first); the stage streams the chunks instead."""
    chunks = list(generate_chunks(seed, n_users, anchor, weeks))
    if len(chunks) == 1:
        return chunks[0]
    return {name: pa.concat_tables([c[name] for c in chunks if name in c]) for name in chunks[0]}


def _chunk_tables(rng: np.random.Generator, n: int, before: dict[str, int], anchor: np.datetime64, weeks: int,
                  catalogue: bool) -> dict[str, pa.Table]:
    u = _draw_users(rng, n)
    user_id = _ids(before, "users", n)
    start = anchor - np.timedelta64(7 * weeks, "D")  # first day of the logged history
    tables: dict[str, pa.Table] = {}

    tables["users"] = pa.table({
        "user_id": user_id,
        "created_on": _date(start - rng.integers(0, 700, n)),
    })
    birth = anchor - (u.age * 365.25 + rng.integers(1, 364, n)).astype(np.int64)
    tables["profiles"] = pa.table({
        "user_id": user_id,
        "birth_date": _date(birth),
        "sex": _strings(("male", "female"), u.female.astype(np.int64)),
        "height_cm": u.height,
        "weight_kg": u.weight,
        "activity_level": _strings(ACTIVITY_LEVELS, u.activity),
        "experience": _strings(EXPERIENCE_LEVELS, u.experience),
        "days_available": u.days,
        "session_minutes": np.asarray(SESSION_MINUTES)[u.minutes_idx],
    })

    g_user = np.repeat(user_id, u.n_goals)
    _, g_pos = _ragged(np.zeros(n), u.n_goals)
    g_code = u.goal_rank[np.repeat(np.arange(n), u.n_goals), g_pos]
    tables["goals"] = pa.table({
        "goal_id": _ids(before, "goals", len(g_user)),
        "user_id": g_user,
        "goal": _strings(GOALS, g_code),
        "priority": g_pos + 1,
    })

    c_row, c_code = np.nonzero(u.cond)
    sev = np.digitize(rng.random(len(c_row)) + 0.004 * (u.age[c_row] - 40), [0.55, 0.9]).clip(0, 2)
    pregnant = np.asarray(CONDITION_NAMES)[c_code] == "pregnancy"
    diag_days = np.where(pregnant, rng.integers(14, 200, len(c_row)), rng.integers(30, 3650, len(c_row)))
    tables["medical_conditions"] = pa.table({
        "condition_id": _ids(before, "medical_conditions", len(c_row)),
        "user_id": user_id[c_row],
        "condition": _strings(CONDITION_NAMES, c_code),
        "severity": _strings(SEVERITIES, np.where(pregnant, 0, sev)),
        "diagnosed_on": _date(anchor - diag_days),
    })

    # injuries: more likely with age and training experience; distinct sites per user
    lam = 0.12 + 0.008 * (u.age - 18) + 0.15 * u.experience
    n_inj = rng.poisson(lam).clip(0, 2)
    site_logits = np.log(np.array([0.25, 0.25, 0.18, 0.08, 0.10, 0.08, 0.06]))
    site_rank = _ranked(rng, np.broadcast_to(site_logits, (n, len(INJURY_SITES))).copy())
    i_row = np.repeat(np.arange(n), n_inj)
    _, i_pos = _ragged(np.zeros(n), n_inj)
    i_site = site_rank[i_row, i_pos]
    i_status = _categorical(rng, np.log(np.broadcast_to([0.3, 0.35, 0.35], (len(i_row), 3))))
    occurred = np.choose(i_status, [rng.integers(3, 60, len(i_row)), rng.integers(30, 180, len(i_row)),
                                    rng.integers(180, 1500, len(i_row))])
    tables["injuries"] = pa.table({
        "injury_id": _ids(before, "injuries", len(i_row)),
        "user_id": user_id[i_row],
        "site": _strings(INJURY_SITES, i_site),
        "status": _strings(INJURY_STATUSES, i_status),
        "occurred_on": _date(anchor - occurred),
    })

    med_p = np.array([MEDICATIONS[c][1] for c in CONDITION_NAMES])
    takes = rng.random(len(c_row)) < med_p[c_code]
    vit_d = np.nonzero(rng.random(n) < 0.05)[0]  # a supplement not tied to a condition
    m_user = np.concatenate([user_id[c_row[takes]], user_id[vit_d]])
    m_name = np.concatenate([np.asarray([MEDICATIONS[c][0] for c in CONDITION_NAMES], dtype=object)[c_code[takes]],
                             np.full(len(vit_d), "vitamin D", dtype=object)])
    m_for = np.concatenate([np.asarray(CONDITION_NAMES, dtype=object)[c_code[takes]],
                            np.full(len(vit_d), None, dtype=object)])
    order = np.argsort(m_user, kind="stable")
    tables["medications"] = pa.table({
        "medication_id": _ids(before, "medications", len(m_user)),
        "user_id": m_user[order],
        "name": pa.array(m_name[order], type=pa.string()),
        "for_condition": pa.array(m_for[order], type=pa.string()),
    })

    if catalogue:
        tables["equipment"] = _equipment_table()
    ue_row, ue_eq = np.nonzero(u.equip)
    tables["user_equipment"] = pa.table({"user_id": user_id[ue_row], "equipment_id": ue_eq + 1})
    if catalogue:
        tables.update(_exercise_tables())

    ex_id = {e.name: i + 1 for i, e in enumerate(CATALOGUE)}
    tables.update(_plans_and_workouts(rng, u, user_id, before, i_row, i_site, i_status, ex_id, start, anchor, weeks))
    return tables


def _equipment_table() -> pa.Table:
    tier_of = {e: planning.equipment_tier([e]) for e in EQUIPMENT}
    return pa.table({
        "equipment_id": np.arange(1, len(EQUIPMENT) + 1, dtype=np.int64),
        "name": pa.array(list(EQUIPMENT)),
        "tier": pa.array([tier_of[e] for e in EQUIPMENT]),
    })


def _exercise_tables() -> dict[str, pa.Table]:
    ex_id = {e.name: i + 1 for i, e in enumerate(CATALOGUE)}
    eq_id = {e: i + 1 for i, e in enumerate(EQUIPMENT)}
    tables = {}
    tables["exercises"] = pa.table({
        "exercise_id": np.arange(1, len(CATALOGUE) + 1, dtype=np.int64),
        "name": pa.array([e.name for e in CATALOGUE]),
        "primary_muscle": pa.array([e.primary_muscle for e in CATALOGUE]),
        "pattern": pa.array([e.pattern for e in CATALOGUE]),
        "is_compound": np.array([int(e.compound) for e in CATALOGUE], dtype=np.int64),
    })
    pairs = [(ex_id[e.name], eq_id[q]) for e in CATALOGUE for q in e.equipment]
    tables["exercise_equipment"] = pa.table({
        "exercise_id": np.array([a for a, _ in pairs], dtype=np.int64),
        "equipment_id": np.array([b for _, b in pairs], dtype=np.int64),
    })
    tags = [(ex_id[e.name], t) for e in CATALOGUE for t in sorted(set(e.contraindications))]
    tables["exercise_contraindications"] = pa.table({
        "exercise_id": np.array([a for a, _ in tags], dtype=np.int64),
        "tag": pa.array([t for _, t in tags]),
    })
    return tables


def _plans_and_workouts(rng, u: _Users, user_id, before, i_row, i_site, i_status, ex_id, start, anchor, weeks):
    n = u.n
    # --- one plan per user from the rule-based planner, under the user's own constraints
    live = i_status < 2  # active or recovering injuries are avoided; resolved ones are not
    inj_mask = np.zeros((n, len(INJURY_SITES)), dtype=bool)
    inj_mask[i_row[live], i_site[live]] = True
    floors = np.array([planning.EXPERIENCE_RIR_FLOOR[e] for e in EXPERIENCE_LEVELS])[u.experience]
    cond_floor = np.array([CONDITIONS[c]["rir_floor"] for c in CONDITION_NAMES])
    floor = np.maximum(floors, (u.cond * cond_floor).max(axis=1))
    variant = rng.integers(0, 3, n)
    key = np.stack([_bits(u.equip), _bits(inj_mask), _bits(u.cond), u.days, u.minutes_idx, u.goal_rank[:, 0],
                    u.experience, floor, variant], axis=1)
    keys, tid = np.unique(key, axis=0, return_inverse=True)
    tid = tid.ravel()

    t_name, td_len, td_num, td_name, te_len = [], [], [], [], []
    te_ex, te_sets, te_reps, te_rir, te_rest, td_minutes = [], [], [], [], [], []
    log.info("synthetic: building %d distinct plans for %d users", len(keys), n)
    for eq, inj, cnd, days, m_idx, goal, exp, flr, var in tqdm(keys.tolist(), desc="plans", unit="plan",
                                                                 disable=len(keys) < 5000, leave=False):
        equipment = tuple(_unbits(eq, EQUIPMENT))
        conditions = _unbits(cnd, CONDITION_NAMES)
        avoid = tuple(exercises_to_avoid(_unbits(inj, INJURY_SITES), conditions))
        name, plan_days = planning.build_plan(equipment, avoid, days, SESSION_MINUTES[m_idx], GOALS[goal],
                                              EXPERIENCE_LEVELS[exp], flr, var)
        t_name.append(name)
        td_len.append(len(plan_days))
        for day_no, day_name, exercises in plan_days:
            td_num.append(day_no)
            td_name.append(day_name)
            te_len.append(len(exercises))
            td_minutes.append(session_seconds((s, r) for _, s, _, _, r in exercises) / 60)
            for ex_name, sets, reps, rir, rest in exercises:
                te_ex.append(ex_id[ex_name]); te_sets.append(sets); te_reps.append(reps)
                te_rir.append(rir); te_rest.append(rest)
    td_len, te_len = np.array(td_len), np.array(te_len)
    td_start = np.cumsum(td_len) - td_len
    te_start = np.cumsum(te_len) - te_len
    td_num, td_minutes = np.array(td_num), np.array(td_minutes)
    te_ex, te_sets, te_reps = np.array(te_ex), np.array(te_sets), np.array(te_reps)
    te_rir, te_rest = np.array(te_rir), np.array(te_rest)

    out: dict[str, pa.Table] = {}
    out["workout_plans"] = pa.table({
        "plan_id": user_id,
        "user_id": user_id,
        "name": pa.array(np.asarray(t_name, dtype=object)[tid], type=pa.string()),
        "created_on": _date(np.full(n, start)),
        "is_current": np.ones(n, dtype=np.int64),
    })
    # plan days: the template's days, per user
    pd_src, _ = _ragged(td_start[tid], td_len[tid])
    pd_user = np.repeat(np.arange(n), td_len[tid])
    pd_id = _ids(before, "plan_days", len(pd_src))
    out["plan_days"] = pa.table({
        "plan_day_id": pd_id,
        "plan_id": user_id[pd_user],
        "day_number": td_num[pd_src],
        "name": pa.array(np.asarray(td_name, dtype=object)[pd_src], type=pa.string()),
    })
    pe_src, pe_pos = _ragged(te_start[pd_src], te_len[pd_src])
    pe_day = np.repeat(np.arange(len(pd_src)), te_len[pd_src])
    pe_id = _ids(before, "plan_exercises", len(pe_src))
    out["plan_exercises"] = pa.table({
        "plan_exercise_id": pe_id,
        "plan_day_id": pd_id[pe_day],
        "exercise_id": te_ex[pe_src],
        "position": pe_pos + 1,
    })
    _, ps_pos = _ragged(np.zeros(len(pe_src)), te_sets[pe_src])
    ps_pe = np.repeat(np.arange(len(pe_src)), te_sets[pe_src])
    ps_src = pe_src[ps_pe]
    out["plan_sets"] = pa.table({
        "plan_set_id": _ids(before, "plan_sets", len(ps_src)),
        "plan_exercise_id": pe_id[ps_pe],
        "set_number": ps_pos + 1,
        "target_reps": te_reps[ps_src],
        "target_rir": te_rir[ps_src],
        "rest_s": te_rest[ps_src],
    })

    log.info("synthetic: logging %d weeks of workouts", weeks)
    # --- logged workouts: each plan day in each week, attended with the user's adherence
    adherence = rng.beta(2 + u.activity, 1.5, n)
    attend = rng.random((len(pd_src), weeks)) < adherence[pd_user][:, None]
    w_day, w_week = np.nonzero(attend)
    w_user = pd_user[w_day]
    offsets = np.zeros((8, 7), dtype=np.int64)
    for k, offs in DAY_OFFSETS.items():
        offsets[k, : len(offs)] = offs
    w_date = start + (7 * w_week + offsets[u.days[w_user], td_num[pd_src[w_day]] - 1]).astype("timedelta64[D]")
    order = np.lexsort((w_date, w_user))
    w_day, w_week, w_user, w_date = w_day[order], w_week[order], w_user[order], w_date[order]
    n_w = len(w_day)
    w_id = _ids(before, "workouts", n_w)
    duration = np.rint(td_minutes[pd_src[w_day]] + 5 + rng.normal(0, 4, n_w)).clip(5, 300).astype(np.int64)
    out["workouts"] = pa.table({
        "workout_id": w_id,
        "user_id": user_id[w_user],
        "plan_day_id": pd_id[w_day],
        "performed_on": _date(w_date),
        "duration_min": duration,
    })
    pe_first = np.cumsum(te_len[pd_src]) - te_len[pd_src]  # first plan_exercise row of each plan day row
    we_pe, we_pos = _ragged(pe_first[w_day], te_len[pd_src[w_day]])
    we_w = np.repeat(np.arange(n_w), te_len[pd_src[w_day]])
    we_id = _ids(before, "workout_exercises", len(we_pe))
    out["workout_exercises"] = pa.table({
        "workout_exercise_id": we_id,
        "workout_id": w_id[we_w],
        "exercise_id": te_ex[pe_src[we_pe]],
        "position": we_pos + 1,
    })

    # --- performance: per user a trend (progressing / stalled / regressing), per plan exercise a slope
    trend_p = np.array([[0.65, 0.25, 0.10], [0.45, 0.40, 0.15], [0.30, 0.50, 0.20]])[u.experience]
    trend_p = np.where((adherence < 0.6)[:, None], [[0.25, 0.45, 0.30]], trend_p)
    trend = _categorical(rng, np.log(trend_p))
    pe_user = pd_user[pe_day]
    t = trend[pe_user]
    slope = np.choose(t, [rng.uniform(0.4, 1.0, len(pe_src)), rng.normal(0, 0.08, len(pe_src)),
                          -rng.uniform(0.3, 0.8, len(pe_src))])
    base_offset = np.choose(t, [-2.0, 0.0, 1.0])
    load = np.array([LOAD_FACTOR.get(e.name, 0.0) for e in CATALOGUE])[te_ex[pe_src] - 1]
    strength = u.weight * np.where(u.female, 0.7, 1.0) * np.array([1.0, 1.35, 1.7])[u.experience]
    pe_weight = load * strength[pe_user] * rng.normal(1, 0.1, len(pe_src)).clip(0.7, 1.3)
    barbell = np.array(["barbell" in e.equipment or "leg_press" in e.equipment for e in CATALOGUE])[te_ex[pe_src] - 1]
    step = np.where(barbell, 2.5, 1.0)
    pe_weight = np.round(pe_weight / step) * step

    n_sets = te_sets[pe_src[we_pe]]
    _, ws_pos = _ragged(np.zeros(len(we_pe)), n_sets)
    ws_we = np.repeat(np.arange(len(we_pe)), n_sets)
    ws_pe = we_pe[ws_we]
    ws_week = w_week[we_w[ws_we]]
    target = te_reps[pe_src[ws_pe]]
    reps = np.rint(target + base_offset[ws_pe] + slope[ws_pe] * ws_week - 0.4 * ws_pos
                   + rng.normal(0, 0.5, len(ws_pe))).clip(1, 60).astype(np.int64)
    rir = np.rint(te_rir[pe_src[ws_pe]] + rng.normal(0, 0.45, len(ws_pe))).clip(0, 10).astype(np.int64)
    out["workout_sets"] = pa.table({
        "workout_set_id": _ids(before, "workout_sets", len(ws_pe)),
        "workout_exercise_id": we_id[ws_we],
        "set_number": ws_pos + 1,
        "reps": reps,
        "weight_kg": pe_weight[ws_pe].round(1),
        "rir": rir,
    })

    # --- daily logs: energy balance ties calories to the goal's body-weight trend
    goal = u.goal_rank[:, 0]
    kg_per_week = np.choose(goal, [rng.normal(-0.45, 0.2, n), rng.normal(0.2, 0.1, n), rng.normal(0.05, 0.1, n),
                                   rng.normal(-0.05, 0.1, n), rng.normal(0.0, 0.1, n)])
    kg_per_week *= 0.5 + 0.5 * adherence
    n_days = 7 * weeks
    logged = rng.random((n, n_days)) < rng.beta(8, 2, n)[:, None]
    d_user, d_day = np.nonzero(logged)
    body = u.weight[d_user] + kg_per_week[d_user] * d_day / 7 + rng.normal(0, 0.4, len(d_user))
    bmr = 10 * body + 6.25 * u.height[d_user] - 5 * u.age[d_user] + np.where(u.female[d_user], -161, 5)
    tdee = bmr * ACTIVITY_FACTOR[u.activity[d_user]]
    calories = np.rint(tdee + kg_per_week[d_user] * 7700 / 7 + rng.normal(0, 250, len(d_user))).clip(900, 6000)
    sleep_mean = rng.normal(7.1 - 0.01 * (u.age - 40), 0.5, n)
    sleep = (sleep_mean[d_user] + rng.normal(0, 0.8, len(d_user))).clip(3, 11).round(1)
    out["daily_logs"] = pa.table({
        "user_id": user_id[d_user],
        "log_date": _date(start + d_day.astype("timedelta64[D]")),
        "calories": calories.astype(np.int64),
        "sleep_hours": sleep,
        "body_weight_kg": body.clip(30, 300).round(1),
    })
    return out


def write_tables(chunks: Iterable[dict[str, pa.Table]], out_dir) -> tuple[dict[str, str], dict[str, int], float]:
    """Stream each table to its Parquet file, a row group or more per chunk, deterministically (no pandas
    metadata); every file is renamed into place only once all are written. Returns the paths, the rows
    per table and the seconds spent writing."""
    paths: dict[str, str] = {}
    rows: dict[str, int] = {}
    writers: dict[str, pq.ParquetWriter] = {}
    write_s = 0.0
    with contextlib.ExitStack() as files:  # closes the writers, then renames (or on error removes) the files
        for tables in chunks:
            started = time.perf_counter()
            for name, table in tables.items():
                if name not in writers:
                    paths[name], rows[name] = str(out_dir / f"{name}.parquet"), 0
                    tmp = files.enter_context(atomic_path(paths[name]))
                    writers[name] = files.enter_context(pq.ParquetWriter(tmp, table.schema, compression="zstd"))
                writers[name].write_table(table, row_group_size=1 << 20)
                rows[name] += table.num_rows
            del tables  # let the chunk go before the next one is drawn
            write_s += time.perf_counter() - started
    return paths, rows, write_s


def generate_synthetic_data(ctx: RunContext) -> dict:
    """Stage entry: generate every table for ``synthetic.n_users`` users and write Parquet + manifest."""
    cfg = ctx.params.synthetic
    started = time.perf_counter()
    anchor = np.datetime64(cfg.anchor_date.isoformat(), "D")
    chunks = generate_chunks(ctx.params.seed, cfg.n_users, anchor, cfg.history_weeks)
    paths, rows, write_s = write_tables(chunks, ctx.stage_dir(STAGE))
    wall = time.perf_counter() - started
    log.info("synthetic: %d users, %d tables (%d rows), %d workout sets in %.1fs", cfg.n_users, len(rows),
             sum(rows.values()), rows["workout_sets"], wall)
    write_manifest(ctx, STAGE, paths, rows=rows,
                   extra={"n_users": cfg.n_users, "anchor_date": cfg.anchor_date.isoformat()})
    return {"users": cfg.n_users, "rows": rows, "generate_s": round(wall - write_s, 2), "wall_s": round(wall, 2)}
