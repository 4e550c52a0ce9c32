"""Query stage: coaching requests built from the synthetic users.

Four kinds (``queries.kind_mix``): plan creation, plan modification (a change
in words, reflected in the constraints), safety adjustment (a new injury,
condition or symptom; red-flag symptoms require a referral) and progress
adaptation (trends from the last weeks of logged workouts). Each query carries
the constraints its answer must honour, derived from the profile, and the
slice tags bias analysis and evaluation group by. Its user message is worded
from the phrasing bank's seen templates (``prompts.render_request``, from a
generator of its own per query, so wording never shifts the structure) and
records which wording (``CoachingQuery.phrasing``). Deterministic for the seed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import TypeAdapter, ValidationError

from fitsense.catalogue import CONDITIONS, EQUIPMENT, INJURY_SITES, exercises_to_avoid, usable_exercises
from fitsense.data import phrasings, planning
from fitsense.data.prompts import SYSTEM_PROMPT, word_request
from fitsense.errors import InputDataError, StageError
from fitsense.records import QUERY_KINDS, SLICE_TAGS, CoachingQuery
from fitsense.runs import RunContext, atomic_open, available_cpus, jsonl_line, write_manifest

log = logging.getLogger(__name__)

STAGE = "queries"
TREND_WEEKS = 4  # weeks of logged workouts summarised for progress adaptation
TREND_SLOPE = 0.4  # top reps per week beyond which an exercise counts as progressing / regressing

RED_FLAG_SYMPTOMS = tuple(i.canonical for i in phrasings.RED_FLAG.values())
BENIGN_SYMPTOMS = tuple(i.canonical for i in phrasings.BENIGN.values())
SYMPTOM_INTENT = {i.canonical: name for name, i in {**phrasings.RED_FLAG, **phrasings.BENIGN}.items()}
HOME_ONLY = ("bodyweight", "dumbbells", "resistance_bands")
PHRASING_STREAM = 3  # per-query generators [seed, 3, i] word the queries; the dataset's challenge uses stream 4


def age_band(age: int) -> str:
    return "18-29" if age < 30 else "30-44" if age < 45 else "45-59" if age < 60 else "60+"


def _age(birth: date, anchor: date) -> int:
    return anchor.year - birth.year - ((anchor.month, anchor.day) < (birth.month, birth.day))


def kind_counts(n: int, mix: dict[str, float]) -> dict[str, int]:
    """Split n queries over kinds in proportion to the weights (largest remainder)."""
    kinds = [k for k in QUERY_KINDS if mix.get(k, 0) > 0]
    total = sum(mix[k] for k in kinds)
    exact = {k: n * mix[k] / total for k in kinds}
    counts = {k: int(np.floor(v)) for k, v in exact.items()}
    for k in sorted(kinds, key=lambda k: (counts[k] - exact[k], QUERY_KINDS.index(k)))[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def constraints_for(experience: str, conditions: list[str], injuries: list[dict], equipment: list[str],
                    days: int, minutes: int, referral: bool = False, extra_avoid: tuple[str, ...] = ()) -> dict:
    """What any answer for this person must honour (see the module docstring): ``QueryConstraints`` fields."""
    avoid = sorted(set(exercises_to_avoid([i["site"] for i in injuries], conditions)) | set(extra_avoid))
    if not usable_exercises(equipment, avoid):
        raise StageError(f"unsatisfiable constraints: nothing usable with {equipment} avoiding {avoid}")
    return {
        "days_per_week": days,
        "session_minutes": minutes,
        "max_exercises_per_day": planning.max_exercises_per_day(minutes),
        "available_equipment": equipment,
        "avoid_exercises": avoid,
        "rir_floor": planning.rir_floor(experience, conditions),
        "referral_required": referral,
    }


def selection(key: str, ids) -> pc.Expression:
    """A Parquet filter for the rows whose ``key`` is one of ``ids``, with their range, by which a reader
    skips the row groups outside it (their min/max statistics) before it tests membership row by row."""
    ids = np.asarray(ids, dtype=np.int64)
    member = pc.field(key).isin(pa.array(ids))
    if len(ids) == 0:
        return member
    return (pc.field(key) >= int(ids.min())) & (pc.field(key) <= int(ids.max())) & member


class _World:
    """The synthetic tables a query needs, indexed by user, as plain data (the records' JSON fields)."""

    def __init__(self, ctx: RunContext):
        self.src = ctx.require("synthetic", "manifest.json").parent
        self.anchor = ctx.params.synthetic.anchor_date
        self.all_users = self.read("profiles", columns=["user_id"])["user_id"].to_numpy()
        self.exercise_names = self.read("exercises").set_index("exercise_id")["name"]

    def read(self, table: str, **kw) -> pd.DataFrame:
        return pq.read_table(self.src / f"{table}.parquet", **kw).to_pandas()

    def rows(self, table: str, key: str, ids, columns: list[str] | None = None,
             where: pc.Expression | None = None) -> pd.DataFrame:
        """The rows of ``table`` whose ``key`` is one of ``ids``, in file order. The tables are sorted by user
        and a child's ids rise with its parent's, so a batch of users reads about its own row groups."""
        rows = selection(key, ids)
        return self.read(table, columns=columns, filters=rows if where is None else rows & where)

    def load_users(self, users: list[int]) -> "_World":
        """Read the profile-level tables for these users only, into per-user plain Python facts (one
        dictionary lookup per query instead of pandas indexing, which cost ~0.2 ms a query)."""
        def read(table, **kw):
            return self.rows(table, "user_id", users, **kw)

        def lists(frame: pd.DataFrame, value) -> dict[int, list]:
            out: dict[int, list] = {}
            for user, v in zip(frame["user_id"].tolist(), value(frame)):
                out.setdefault(user, []).append(v)
            return out

        prof = read("profiles")
        weights = read("daily_logs", columns=["user_id", "log_date", "body_weight_kg"])
        latest = weights.sort_values(["user_id", "log_date"]).groupby("user_id")["body_weight_kg"].last()
        weight = dict(zip(latest.index.tolist(), latest.tolist()))
        self.facts = {
            user: (birth, sex, float(height), float(weight.get(user, kg)), activity, experience, int(days), int(minutes))
            for user, birth, sex, height, kg, activity, experience, days, minutes in zip(*(prof[c].tolist() for c in (
                "user_id", "birth_date", "sex", "height_cm", "weight_kg", "activity_level", "experience",
                "days_available", "session_minutes")))
        }
        self.profiles: dict[int, dict] = {}
        self.goals = lists(read("goals").sort_values(["user_id", "priority"], kind="stable"), lambda f: f["goal"].tolist())
        cond = read("medical_conditions")
        order = {c: i for i, c in enumerate(CONDITIONS)}
        cond = cond.assign(rank=cond["condition"].map(order)).sort_values(["user_id", "rank"], kind="stable")
        self.conditions = lists(cond, lambda f: f["condition"].tolist())
        inj = read("injuries")
        inj = inj[inj["status"] != "resolved"].sort_values(["user_id", "site"], kind="stable")
        self.injuries = lists(inj, lambda f: list(zip(f["site"].tolist(), f["status"].tolist())))
        meds = read("medications")[["user_id", "name"]].drop_duplicates().sort_values(["user_id", "name"])
        self.medications = lists(meds, lambda f: f["name"].tolist())
        ue = read("user_equipment").merge(self.read("equipment"), on="equipment_id")
        ue = ue.assign(rank=ue["name"].map({e: i for i, e in enumerate(EQUIPMENT)})).sort_values(
            ["user_id", "rank"], kind="stable")
        self.equipment = lists(ue, lambda f: f["name"].tolist())
        return self

    def base(self, user: int) -> dict:
        """The facts a query about this user starts from (fresh lists: a query may change them)."""
        birth, sex, height, weight, activity, experience, days, minutes = self.facts[user]
        profile = self.profiles.get(user)
        if profile is None:  # queries share their user's (never changed) profile
            profile = self.profiles[user] = {"age": _age(birth, self.anchor), "sex": sex, "height_cm": height,
                                             "weight_kg": weight, "activity_level": activity, "experience": experience}
        return {
            "profile": profile,
            "goals": list(self.goals[user]),
            "conditions": list(self.conditions.get(user, ())),
            "injuries": [{"site": s, "status": st} for s, st in self.injuries.get(user, ())],
            "medications": list(self.medications.get(user, ())),
            "equipment": list(self.equipment[user]),
            "days": days,
            "minutes": minutes,
        }

    def user_ids(self) -> np.ndarray:
        return self.all_users

    def current_plans(self, users: list[int]) -> dict[int, dict]:
        plans = self.rows("workout_plans", "user_id", users, where=pc.field("is_current") == 1)
        days = self.rows("plan_days", "plan_id", plans["plan_id"])
        pex = self.rows("plan_exercises", "plan_day_id", days["plan_day_id"])
        sets = self.rows("plan_sets", "plan_exercise_id", pex["plan_exercise_id"],
                         columns=["plan_exercise_id", "set_number", "target_reps", "target_rir", "rest_s"])
        per_ex = sets.sort_values(["plan_exercise_id", "set_number"]).groupby("plan_exercise_id").agg(
            sets=("set_number", "size"), reps=("target_reps", "first"), rir=("target_rir", "first"),
            rest_s=("rest_s", "first"))
        pex = pex.join(per_ex, on="plan_exercise_id").sort_values(["plan_day_id", "position"])
        pex["name"] = pex["exercise_id"].map(self.exercise_names)
        exercises_by_day: dict[int, list[dict]] = {}
        for day_id, name, n_sets, reps, rir, rest in zip(*(pex[c].tolist() for c in (
                "plan_day_id", "name", "sets", "reps", "rir", "rest_s"))):
            exercises_by_day.setdefault(day_id, []).append(
                {"name": name, "sets": int(n_sets), "reps": int(reps), "rir": int(rir), "rest_s": int(rest)})
        days_by_plan: dict[int, list[dict]] = {}
        for plan_id, day_id, number, name in zip(*(days.sort_values(["plan_id", "day_number"])[c].tolist() for c in (
                "plan_id", "plan_day_id", "day_number", "name"))):
            days_by_plan.setdefault(plan_id, []).append(
                {"day": int(number), "name": name, "exercises": exercises_by_day[day_id]})
        return {
            int(user): {"plan_name": name, "days": days_by_plan[plan_id], "notes": "",
                        "safety": {"flags": [], "referral_required": False}}
            for user, plan_id, name in zip(plans["user_id"].tolist(), plans["plan_id"].tolist(), plans["name"].tolist())
        }

    def trends(self, users: list[int]) -> dict[int, list[dict]]:
        """Per user, the exercises with the clearest trend over the last TREND_WEEKS logged weeks."""
        window_start = pd.Timestamp(self.anchor) - pd.Timedelta(days=7 * TREND_WEEKS)
        workouts = self.rows("workouts", "user_id", users, columns=["workout_id", "user_id", "performed_on"])
        workouts = workouts[pd.to_datetime(workouts["performed_on"]) >= window_start]
        wex = self.rows("workout_exercises", "workout_id", workouts["workout_id"],
                        columns=["workout_exercise_id", "workout_id", "exercise_id"])
        wsets = self.rows("workout_sets", "workout_exercise_id", wex["workout_exercise_id"],
                          columns=["workout_exercise_id", "reps", "rir"])
        df = wsets.merge(wex, on="workout_exercise_id").merge(workouts, on="workout_id")
        df["week"] = (pd.to_datetime(df["performed_on"]) - window_start).dt.days // 7
        df["name"] = df["exercise_id"].map(self.exercise_names)
        weekly = (df.groupby(["user_id", "name", "week"]).agg(top=("reps", "max"), rir=("rir", "mean"))
                  .reset_index().sort_values(["user_id", "name", "week"]))
        # least-squares slope of top reps per week, per user and exercise (vectorised); the weekly series
        # are sliced out of the sorted arrays only for the (at most 3) trends kept per user
        weekly["wt"] = weekly["week"] * weekly["top"]
        weekly["ww"] = weekly["week"] ** 2
        g = weekly.groupby(["user_id", "name"], sort=True)
        fit = g.agg(n=("week", "size"), w=("week", "sum"), t=("top", "sum"), wt=("wt", "sum"),
                    ww=("ww", "sum")).reset_index()
        fit["start"] = np.concatenate([[0], np.cumsum(fit["n"].to_numpy())[:-1]])
        fit = fit[fit["n"] >= 2]
        fit["slope"] = (fit.n * fit.wt - fit.w * fit.t) / (fit.n * fit.ww - fit.w ** 2)
        fit = fit.assign(strength=fit["slope"].abs()).sort_values(["user_id", "strength", "name"],
                                                                  ascending=[True, False, True])
        fit = fit[fit.groupby("user_id").cumcount() < 3]
        tops, rirs = weekly["top"].tolist(), weekly["rir"].tolist()
        out: dict[int, list[dict]] = {}  # ExerciseTrend fields
        for user, name, slope, start, n in zip(*(fit[c].tolist() for c in ("user_id", "name", "slope", "start", "n"))):
            trend = "progressing" if slope >= TREND_SLOPE else "regressing" if slope <= -TREND_SLOPE else "stalled"
            out.setdefault(int(user), []).append({
                "name": name, "weekly_top_reps": [int(t) for t in tops[start:start + n]],
                "weekly_avg_rir": [round(float(r), 1) for r in rirs[start:start + n]], "trend": trend})
        return out


def _modification(rng: np.random.Generator, b: dict, plan: dict) -> tuple[str, dict, str, dict]:
    """A requested change: its canonical words, the constraint fields it changes, its intent and template slots."""
    options = ["swap"]
    if b["days"] > 1:
        options.append("fewer_days")
    if b["days"] < 6:
        options.append("more_days")
    if b["minutes"] > planning.SESSION_MINUTES[0]:
        options.append("shorter")
    tier = planning.equipment_tier(b["equipment"])
    if tier != "bodyweight":
        options.append("home_only")
    choice = options[rng.integers(len(options))]
    if choice == "fewer_days":
        days = int(max(1, b["days"] - rng.integers(1, 3)))
        return f"I can only train {days} days a week now.", {"days": days}, "change.fewer_days", {"days": days}
    if choice == "more_days":
        days = b["days"] + 1
        return (f"I'd like to train {days} days a week instead of {b['days']}.", {"days": days},
                "change.more_days", {"days": days, "old_days": b["days"]})
    if choice == "shorter":
        shorter = [m for m in planning.SESSION_MINUTES if m < b["minutes"]]
        minutes = shorter[rng.integers(len(shorter))]
        return (f"My sessions must fit in {minutes} minutes from now on.", {"minutes": minutes},
                "change.shorter", {"minutes": minutes})
    if choice == "home_only":
        if tier == "full_gym":
            kit = list(HOME_ONLY)
            return ("I'm training at home now with only dumbbells and resistance bands.", {"equipment": kit},
                    "change.home_only", {})
        return ("I'm travelling for a month: bodyweight only, no equipment.", {"equipment": ["bodyweight"]},
                "change.bodyweight_only", {})
    names = sorted({e["name"] for d in plan["days"] for e in d["exercises"]})
    name = names[rng.integers(len(names))]
    return (f"I don't like {name}; please swap it for something else.", {"extra_avoid": (name,)},
            "change.swap", {"exercise": name})


def _safety(rng: np.random.Generator, b: dict, red_flag_share: float) -> dict:
    """A new symptom, injury or diagnosis; updates the base facts in place and returns context fields."""
    if rng.random() < red_flag_share:
        return {"new_symptom": {"text": RED_FLAG_SYMPTOMS[rng.integers(len(RED_FLAG_SYMPTOMS))], "red_flag": True}}
    choice = rng.integers(3)
    free_sites = [s for s in INJURY_SITES if s not in {i["site"] for i in b["injuries"]}]
    p = b["profile"]
    free_conditions = [c for c in CONDITIONS if c not in b["conditions"]
                       and (c != "pregnancy" or (p["sex"] == "female" and 18 <= p["age"] <= 45))]
    if choice == 1 and free_sites:
        injury = {"site": free_sites[rng.integers(len(free_sites))], "status": "active"}
        b["injuries"] = sorted(b["injuries"] + [injury], key=lambda i: i["site"])
        return {"new_injury": injury}
    if choice == 2 and free_conditions:
        condition = free_conditions[rng.integers(len(free_conditions))]
        b["conditions"] = sorted(b["conditions"] + [condition], key=list(CONDITIONS).index)
        return {"new_condition": condition}
    return {"new_symptom": {"text": BENIGN_SYMPTOMS[rng.integers(len(BENIGN_SYMPTOMS))], "red_flag": False}}


def request_intent(context: dict) -> tuple[str, dict]:
    """The phrasing-bank intent and slots of a safety query's new symptom, injury or condition."""
    if "new_symptom" in context:
        return SYMPTOM_INTENT[context["new_symptom"]["text"]], {}
    if "new_injury" in context:
        return "safety.injury", {"site": context["new_injury"]["site"]}
    return "safety.condition", {"condition": context["new_condition"]}


def draw_request(kind: str, b: dict, rng: np.random.Generator, red_flag_share: float, plan: dict | None,
                 trends: list[dict] | None) -> tuple[dict, dict, str, dict]:
    """The part of a query drawn from the stage's one sequential generator ``rng``: (context fields, changed
    constraint fields, intent, template slots). A safety query's new injury or condition updates ``b``."""
    extra: dict = {}
    changes: dict = {}
    intent, slots = ("plan.create" if kind == "plan_creation" else "progress.adapt"), {}
    if kind == "plan_modification":
        modification, changes, intent, slots = _modification(rng, b, plan)
        extra = {"current_plan": plan, "modification": modification}
    elif kind == "safety_adjustment":
        extra = _safety(rng, b, red_flag_share)
    elif kind == "progress_adaptation":
        extra = {"current_plan": plan, "recent_trends": trends}
    return extra, changes, intent, slots


def finish_query(query_id: str, user: int, kind: str, b: dict, drawn: tuple[dict, dict, str, dict],
                 phrase_rng: np.random.Generator | None = None) -> dict:
    """The query's ``CoachingQuery`` fields from its drawn part (validated by the caller, a batch at a time);
    everything random here comes from the query's own ``phrase_rng``."""
    extra, changes, intent, slots = drawn
    equipment = changes.get("equipment", b["equipment"])
    referral = bool(extra.get("new_symptom") and extra["new_symptom"]["red_flag"])
    constraints = constraints_for(b["profile"]["experience"], b["conditions"], b["injuries"], equipment,
                                  changes.get("days", b["days"]), changes.get("minutes", b["minutes"]),
                                  referral, changes.get("extra_avoid", ()))
    context = {"profile": b["profile"], "primary_goal": b["goals"][0], "goals": b["goals"],
               "conditions": b["conditions"], "injuries": b["injuries"], "medications": b["medications"],
               "equipment": equipment, "recent_trends": [],
               **{k: v for k, v in extra.items() if v is not None}}  # what a record leaves out when None
    p = b["profile"]
    slices = {
        "age_band": age_band(p["age"]),
        "sex": p["sex"],
        "activity_level": p["activity_level"],
        "experience": p["experience"],
        "primary_goal": b["goals"][0],
        "has_condition": "yes" if b["conditions"] else "no",
        "has_injury": "yes" if b["injuries"] else "no",
        "equipment_tier": planning.equipment_tier(equipment),
    }
    assert set(slices) == set(SLICE_TAGS)
    if kind == "safety_adjustment":
        intent, slots = request_intent(context)
    text, phrasing = word_request(kind, context, constraints, intent, slots,
                                  phrase_rng if phrase_rng is not None else np.random.default_rng(0))
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]
    return {"query_id": query_id, "user_id": user, "kind": kind, "messages": messages, "slices": slices,
            "constraints": constraints, "context": context, "phrasing": phrasing}


_QUERIES = TypeAdapter(list[CoachingQuery])
BATCH = 500  # queries validated and written together


def query_lines(records: list[dict]) -> bytes:
    """Validate a batch of query records as ``CoachingQuery`` (an invalid one fails the stage, named) and
    write them as JSON lines, byte for byte what ``jsonl_line`` writes for the validated records."""
    try:
        _QUERIES.validate_python(records)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"][1:]) or "record"
        raise StageError(f"query {records[err['loc'][0]]['query_id']}: invalid record: {where}: {err['msg']}") from None
    return b"".join([_line(r) for r in records])


def _line(record: dict) -> bytes:
    """orjson writes what the json module does for these records: their only floats (height, weight, logged
    RIR) are plain decimals, where the two agree digit for digit; other floats go through ``jsonl_line``."""
    c = record["context"]
    floats = [c["profile"]["height_cm"], c["profile"]["weight_kg"],
              *(r for t in c["recent_trends"] for r in t["weekly_avg_rir"])]
    if all(x == 0 or 1e-4 <= abs(x) < 1e15 for x in floats):
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n"
    return jsonl_line(record)


CHUNK = 5_000  # queries a worker builds at a time (the unit the parts are stitched by)
USER_BATCH = 20_000  # users whose tables are read and summarised at a time (memory stays flat)


def _batches(users: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(users), USER_BATCH):
        yield users[start:start + USER_BATCH]


class _Packed:
    """JSON values by user, packed end to end in one buffer, found through numpy arrays of offsets. A lookup
    writes to no per-user Python object (no reference count), so forked workers keep sharing these pages,
    and a user costs its bytes and ~32 more rather than hundreds in dictionaries. With ``dedup`` a value is
    stored once however many users have it (current plans: about a third are distinct)."""

    def __init__(self, values: Iterator[dict[int, bytes]], dedup: bool = False):
        data, users, starts, ends, seen = bytearray(), [], [], [], {}
        for batch in values:
            for user, value in batch.items():
                start = seen.get(value)
                if start is None:
                    start = len(data)
                    data += value
                    if dedup:
                        seen[value] = start
                users.append(user)
                starts.append(start)
                ends.append(start + len(value))
        self.users = np.array(users, dtype=np.int64)
        self.starts, self.ends = np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)
        self.position = np.full(int(self.users.max(initial=0)) + 1, -1, dtype=np.int64)
        self.position[self.users] = np.arange(len(users))
        self.data = memoryview(data)

    def __len__(self) -> int:
        return len(self.users)

    def get(self, user: int):
        """The user's value, parsed (a fresh one each time); None for a user without one."""
        i = self.position[user] if 0 <= user < len(self.position) else -1
        return None if i < 0 else orjson.loads(self.data[self.starts[i]:self.ends[i]])


@dataclass
class _Plan:
    """Everything the queries are built from once the users are chosen. Ids are zero-padded to one width,
    so the order queries are built in is their sorted order."""

    users: list[int]
    kinds: list[str]
    rng: np.random.Generator  # the stage's sequential generator, past the choice of users
    bases: _Packed  # per user, the facts a query starts from (``_World.base``)
    plans: _Packed  # the current plan of each user with a plan modification or progress query
    trends: _Packed  # a list of ExerciseTrend fields
    red_flag_share: float
    seed: int
    width: int


def _build_part(plan: _Plan, worker: int, workers: int, out: BinaryIO) -> tuple[dict, int, list[int]]:
    """Write this worker's chunks (chunk c goes to worker c % workers) as JSON lines to ``out``: (rows per
    kind, referrals, bytes per chunk). Every worker replays the sequential draws of all queries (a few
    microseconds each: the other workers' queries are drawn, not built) so its queries are exactly those a
    single process would build."""
    rows, referrals, sizes = dict.fromkeys(QUERY_KINDS, 0), 0, []
    batch: list[dict] = []
    start = out.tell()
    for i, (user, kind) in enumerate(zip(plan.users, plan.kinds), start=1):
        if ((i - 1) // CHUNK) % workers != worker:  # another worker's: only the draw, which these two kinds make
            if kind == "plan_modification":
                draw_request(kind, plan.bases.get(user), plan.rng, plan.red_flag_share, plan.plans.get(user), None)
            elif kind == "safety_adjustment":
                draw_request(kind, plan.bases.get(user), plan.rng, plan.red_flag_share, None, None)
            continue
        b = plan.bases.get(user)
        drawn = draw_request(kind, b, plan.rng, plan.red_flag_share, plan.plans.get(user), plan.trends.get(user))
        q = finish_query(f"q{i:0{plan.width}d}", user, kind, b, drawn,
                         np.random.default_rng([plan.seed, PHRASING_STREAM, i]))
        rows[kind] += 1
        referrals += q["constraints"]["referral_required"]
        batch.append(q)
        if len(batch) == BATCH or i % CHUNK == 0 or i == len(plan.users):
            out.write(query_lines(batch))
            batch.clear()
        if i % CHUNK == 0 or i == len(plan.users):
            sizes.append(out.tell() - start)
            start = out.tell()
    return rows, referrals, sizes


_FORKED_PLAN: _Plan | None = None  # what forked workers build from (inherited, never pickled)


def _forked_part(worker: int, workers: int, path: str) -> tuple[dict, int, list[int]]:
    with open(path, "wb") as out:
        return _build_part(_FORKED_PLAN, worker, workers, out)


def write_queries(path: Path, plan: _Plan, workers: int = 1) -> tuple[int, dict, int]:
    """Build and write every query, streamed (memory holds a query at a time, not all of them), in
    ``workers`` forked processes when more than one: each writes its chunks to a part file, stitched in
    order into ``path``. The file is the same for any number of workers. Returns (queries, rows per kind,
    referrals)."""
    global _FORKED_PLAN
    workers = max(1, min(workers, -(-len(plan.users) // CHUNK)))
    if workers > 1 and multiprocessing.current_process().daemon:
        workers = 1  # a daemonic process (some task runners) may not fork workers
    with atomic_open(path, "wb") as out:
        if workers == 1:
            results = [_build_part(plan, 0, 1, out)]
        else:
            parts = [out.name + f".part{w}" for w in range(workers)]
            _FORKED_PLAN = plan
            gc.freeze()  # the workers' collections never write to the inherited objects, so their pages stay shared
            try:
                with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                    results = list(pool.map(_forked_part, range(workers), [workers] * workers, parts))
                with contextlib.ExitStack() as stack:
                    handles = [stack.enter_context(open(p, "rb")) for p in parts]
                    for c in range(sum(len(r[2]) for r in results)):
                        out.write(handles[c % workers].read(results[c % workers][2][c // workers]))
            finally:
                gc.unfreeze()
                _FORKED_PLAN = None
                for p in parts:
                    Path(p).unlink(missing_ok=True)
    rows = {k: sum(r[0][k] for r in results) for k in QUERY_KINDS}
    return sum(rows.values()), rows, sum(r[1] for r in results)


def build_queries(ctx: RunContext) -> dict:
    """Stage entry: write ``queries/queries.jsonl`` (sorted by query_id) and the manifest."""
    cfg = ctx.params.queries
    rng = np.random.default_rng([ctx.params.seed, 2])
    world = _World(ctx)
    users_all = world.user_ids()
    counts = kind_counts(cfg.n_queries, cfg.kind_mix)
    kinds = rng.permutation(np.array([k for k in QUERY_KINDS for _ in range(counts.get(k, 0))], dtype=object))

    # progress adaptation needs users with at least two logged weeks of some exercise
    n_prog = counts.get("progress_adaptation", 0)
    chosen = rng.choice(users_all, size=len(kinds), replace=len(kinds) > len(users_all))
    trends = _Packed(iter(()))
    if n_prog:
        sample = sorted(set(rng.choice(users_all, size=min(len(users_all), max(4 * n_prog, 50)),
                                       replace=False).tolist()))
        trends = _Packed({user: orjson.dumps(ts) for user, ts in sorted(world.trends(batch).items())}
                         for batch in _batches(sample))
        pool = trends.users  # ascending, as each batch's users are added in order
        if len(pool) == 0:
            raise InputDataError("synthetic tables: no user has logged workouts to build progress queries from; "
                                 "raise synthetic.history_weeks or set queries.kind_mix.progress_adaptation to 0")
        prog = kinds == "progress_adaptation"
        chosen[prog] = rng.choice(pool, size=int(prog.sum()), replace=int(prog.sum()) > len(pool))
    needed = sorted(set(chosen.tolist()))
    bases = _Packed({user: orjson.dumps(world.base(user)) for user in world.load_users(batch).facts}
                    for batch in _batches(needed))
    with_plan = sorted(set(chosen[np.isin(kinds, ["plan_modification", "progress_adaptation"])].tolist()))
    plans = _Packed(({user: orjson.dumps(p) for user, p in world.current_plans(batch).items()}
                     for batch in _batches(with_plan)), dedup=True)

    plan = _Plan(chosen.tolist(), kinds.tolist(), rng, bases, plans, trends, cfg.red_flag_share, ctx.params.seed,
                 width=max(6, len(str(cfg.n_queries))))
    path = ctx.stage_dir(STAGE) / "queries.jsonl"
    n, rows, referrals = write_queries(path, plan, workers=available_cpus() if cfg.n_queries >= 2 * CHUNK else 1)
    log.info("queries: %d written (%s), %d need referral", n, rows, referrals)
    write_manifest(ctx, STAGE, {"queries": path}, rows={"queries": n, **rows},
                   extra={"referral_required": referrals})
    return {"queries": n, "by_kind": rows, "referral_required": referrals}
