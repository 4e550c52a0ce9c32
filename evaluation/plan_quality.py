"""Plan-quality metrics beside adherence, so an answer cannot score well by being merely legal.

Each is computed per answer against the teacher's answer to the same query
(``plan_quality_row``) and summarised per model (``summarise_plan_quality``):

- ``pattern_coverage``: share of the main movement patterns (squat, hinge,
  pushes, pulls, lunge, core) the week trains; the teacher gets the same figure,
  so the two compare directly. ``teacher_pattern_recall``: share of the
  teacher's patterns the answer also trains.
- ``weekly_volume_error``: weekly working sets per muscle group vs the
  teacher's, as total absolute difference over the teacher's total sets (0 = same
  volume in every muscle group); the summary reports its median.
- ``exercises_per_day`` and ``exercises_per_day_error`` (absolute, vs the teacher).
- ``free_text_sane``: plan name, day names, notes and reason are plain text, not
  prescriptions, markup or repetition.
- ``progress_direction``: progress adaptation only; of the exercises whose sets,
  reps or RIR the teacher changed from the current plan, the share the answer
  changed in the same direction.

Plan metrics are defined where the teacher wrote a plan; a missing or invalid
answer scores 0 there (coverage, direction) or the worst error (1.0).
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pandas as pd

from fitsense.catalogue import BY_NAME
from fitsense.plan import PRESCRIPTION, CoachAnswer

MAIN_PATTERNS = ("squat", "hinge", "push_h", "push_v", "pull_h", "pull_v", "lunge", "core")
_MARKUP = re.compile(r"[<>{}\[\]`\\|]|https?:|&\w+;")
_WORD_RUN = re.compile(r"\b(\w+)(\W+\1\b){2,}", re.I)  # the same word three times in a row
PLAN_QUALITY_COLUMNS = ("pattern_coverage", "teacher_pattern_recall", "weekly_volume_error", "exercises_per_day",
                        "exercises_per_day_error", "free_text_sane", "progress_direction")


def _exercises(answer: CoachAnswer):
    return [ex for day in answer.days for ex in day.exercises]


def patterns(answer: CoachAnswer) -> set[str]:
    return {BY_NAME[ex.name].pattern for ex in _exercises(answer) if ex.name in BY_NAME} & set(MAIN_PATTERNS)


def weekly_sets(answer: CoachAnswer) -> Counter:
    """Working sets per week by primary muscle group (unknown exercises count under ``unknown``)."""
    sets: Counter = Counter()
    for ex in _exercises(answer):
        known = BY_NAME.get(ex.name)
        sets[known.primary_muscle if known else "unknown"] += ex.sets
    return sets


def volume_error(answer: CoachAnswer, reference: CoachAnswer) -> float:
    a, t = weekly_sets(answer), weekly_sets(reference)
    total = sum(t.values())
    return sum(abs(a[m] - t[m]) for m in set(a) | set(t)) / total if total else float("nan")


def exercises_per_day(answer: CoachAnswer) -> float:
    return float(np.mean([len(d.exercises) for d in answer.days])) if answer.days else 0.0


def _text_sane(text: str | None) -> bool:
    if not text:
        return True
    return not (_MARKUP.search(text) or PRESCRIPTION.search(text) or _WORD_RUN.search(text))


def free_text_sane(answer: CoachAnswer) -> bool:
    """Plain free text: no markup, no exercise prescriptions as names, no word repeated three times running."""
    names = [d.name for d in answer.days]
    texts = [answer.plan_name, answer.notes, answer.safety.reason, *names]
    return (all(_text_sane(t) for t in texts) and len(set(names)) == len(names)
            and not any(n in BY_NAME for n in names) and bool(answer.plan_name.strip()))


def _first_dose(plan: CoachAnswer) -> dict[str, tuple[int, int, int]]:
    out: dict[str, tuple[int, int, int]] = {}
    for ex in _exercises(plan):
        out.setdefault(ex.name, (ex.sets, ex.reps, ex.rir))
    return out


def progress_direction(answer: CoachAnswer | None, reference: CoachAnswer, current: CoachAnswer) -> float:
    """Share of the teacher's dose changes (sets, reps, RIR per exercise) the answer made in the same direction."""
    before, after = _first_dose(current), _first_dose(reference)
    mine = _first_dose(answer) if answer is not None else {}
    changed = [(name, dose) for name, dose in after.items() if name in before and dose != before[name]]
    if not changed:
        return float("nan")
    same = 0
    for name, dose in changed:
        if name in mine:
            want = [np.sign(a - b) for a, b in zip(dose, before[name])]
            got = [np.sign(a - b) for a, b in zip(mine[name], before[name])]
            same += want == got
    return same / len(changed)


def plan_quality_row(answer: CoachAnswer | None, reference: CoachAnswer | None,
                     current: CoachAnswer | None = None, kind: str = "") -> dict[str, float]:
    """The plan-quality columns of one answer (NaN where undefined: no teacher plan to compare with)."""
    row = {c: float("nan") for c in PLAN_QUALITY_COLUMNS}
    if answer is not None:
        row["free_text_sane"] = float(free_text_sane(answer))
    else:
        row["free_text_sane"] = 0.0
    if reference is None or not reference.days:
        return row
    if answer is None or not answer.days:
        row.update(pattern_coverage=0.0, teacher_pattern_recall=0.0, weekly_volume_error=1.0,
                   exercises_per_day=0.0, exercises_per_day_error=exercises_per_day(reference))
    else:
        mine, theirs = patterns(answer), patterns(reference)
        row.update(
            pattern_coverage=len(mine) / len(MAIN_PATTERNS),
            teacher_pattern_recall=len(mine & theirs) / len(theirs) if theirs else float("nan"),
            weekly_volume_error=volume_error(answer, reference),
            exercises_per_day=exercises_per_day(answer),
            exercises_per_day_error=abs(exercises_per_day(answer) - exercises_per_day(reference)),
        )
    if kind == "progress_adaptation" and current is not None:
        row["progress_direction"] = progress_direction(answer, reference, current)
    return row


def _mean(series: pd.Series) -> float | None:
    values = series.dropna()
    return float(values.mean()) if len(values) else None


def summarise_plan_quality(frame: pd.DataFrame) -> dict:
    """A model's plan-quality figures over the rows of ``frame`` (each with its n: rows where it is defined)."""
    if frame.empty or "pattern_coverage" not in frame:
        return {}
    volume = frame["weekly_volume_error"].dropna()
    out = {
        "pattern_coverage": _mean(frame["pattern_coverage"]),
        "teacher_pattern_recall": _mean(frame["teacher_pattern_recall"]),
        "weekly_volume_error_median": float(volume.median()) if len(volume) else None,
        "exercises_per_day": _mean(frame["exercises_per_day"]),
        "exercises_per_day_error": _mean(frame["exercises_per_day_error"]),
        "free_text_sanity": _mean(frame["free_text_sane"]),
        "progress_direction": _mean(frame["progress_direction"]),
        "plan_quality_n": int(frame["pattern_coverage"].notna().sum()),
        "progress_direction_n": int(frame["progress_direction"].notna().sum()),
    }
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
