"""Answer-quality metrics: pure functions on answer text and the query's constraints.

``score_answer`` turns one response into a row of facts (valid? adherent? which
violations? referral given?). ``answer_frame`` collects those rows, with the
query's kind and slice tags, into a pandas DataFrame; ``summarise`` computes a
model's metrics from any subset of rows, so the same code gives the overall,
per-kind and per-slice figures, each rate with its n and 95% Wilson interval
(``evaluation.stats``). ``slice_disparity`` finds the largest gap between the
slices of each tag, and flags it only when the two slices' intervals separate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import precision_score, recall_score

from fitsense.constraints import VIOLATION_CODES, check_answer, violation_code
from fitsense.evaluation.stats import intervals_separate, mean_interval, rate_intervals, wilson_interval
from fitsense.plan import AnswerParseError, CoachAnswer, parse_coach_answer
from fitsense.records import SLICE_TAGS, QueryConstraints

# Metrics compared between slices of a tag (per-slice disparity) and logged per slice to MLflow.
SLICE_METRICS: tuple[str, ...] = ("validity", "adherence", "teacher_exercise_overlap")
# The answer-table column each per-answer metric is the mean of.
METRIC_COLUMNS = {"validity": "valid", "adherence": "adherent", "teacher_exercise_overlap": "teacher_exercise_overlap",
                  "teacher_structure_match": "teacher_structure_match"}
# Slices with fewer examples than this are too noisy to compare (a 95% interval at n=20 is still ~+-20 points).
MIN_SLICE_EXAMPLES = 20


@dataclass
class AnswerScore:
    """What one response gets right and wrong."""

    valid: bool
    parse_error: str | None = None
    violations: list[str] = field(default_factory=list)
    answer: CoachAnswer | None = None

    @property
    def adherent(self) -> bool:
        return self.valid and not self.violations

    @property
    def referral_given(self) -> bool:
        # An unparseable answer gives no usable referral.
        return bool(self.answer and self.answer.safety.referral_required)

    @property
    def violation_codes(self) -> list[str]:
        return sorted({violation_code(v) for v in self.violations})


def score_answer(text: str | None, constraints: QueryConstraints) -> AnswerScore:
    """Parse ``text`` as a coach answer and check it against ``constraints``."""
    if text is None:
        return AnswerScore(valid=False, parse_error="no response")
    try:
        answer = parse_coach_answer(text)
    except AnswerParseError as exc:
        return AnswerScore(valid=False, parse_error=exc.reason)
    return AnswerScore(valid=True, violations=check_answer(answer, constraints), answer=answer)


def exercise_names(answer: CoachAnswer | None) -> set[str]:
    if answer is None:
        return set()
    return {ex.name.strip().lower() for day in answer.days for ex in day.exercises}


def exercise_overlap(answer: CoachAnswer | None, reference: CoachAnswer | None) -> float:
    """Jaccard overlap of exercise names; 0 when the answer is missing, 1 when both prescribe none."""
    if answer is None or reference is None:
        return 0.0
    a, b = exercise_names(answer), exercise_names(reference)
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def structure_match(answer: CoachAnswer | None, reference: CoachAnswer | None) -> bool:
    """Same number of training days and the same referral decision as the reference."""
    if answer is None or reference is None:
        return False
    return (len(answer.days) == len(reference.days)
            and answer.safety.referral_required == reference.safety.referral_required)


def score_row(
    text: str | None,
    constraints: QueryConstraints,
    reference: CoachAnswer | None,
    *,
    kind: str = "",
    slices: dict[str, str] | None = None,
    query_id: str = "",
    latency_s: float | None = 0.0,
    completion_tokens: int = 0,
    cost_usd: float = 0.0,
) -> dict:
    """One row of the answer table: the score plus what the row is grouped and timed by."""
    s = score_answer(text, constraints)
    row = {
        "query_id": query_id,
        "kind": kind,
        "valid": s.valid,
        "adherent": s.adherent,
        "parse_error": s.parse_error,
        "violations": s.violation_codes,
        "referral_required": constraints.referral_required,
        "referral_given": s.referral_given,
        "teacher_exercise_overlap": exercise_overlap(s.answer, reference),
        "teacher_structure_match": structure_match(s.answer, reference),
        "latency_s": float("nan") if latency_s is None else float(latency_s),
        "completion_tokens": int(completion_tokens),
        "cost_usd": float(cost_usd),
    }
    for tag in SLICE_TAGS:
        row[f"slice.{tag}"] = (slices or {}).get(tag, "unknown")
    return row


def answer_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def referral_precision_recall(required: list[bool] | pd.Series, given: list[bool] | pd.Series) -> tuple:
    """Precision and recall of the referral decision (positive = referral).

    Undefined values (no referral given / none required) are ``None`` rather than a misleading 0 or 1.
    """
    y_true = np.asarray(required, dtype=bool)
    y_pred = np.asarray(given, dtype=bool)
    if len(y_true) == 0:
        return None, None
    precision = precision_score(y_true, y_pred, zero_division=np.nan)
    recall = recall_score(y_true, y_pred, zero_division=np.nan)
    return _nan_to_none(precision), _nan_to_none(recall)


def summarise(frame: pd.DataFrame) -> dict:
    """A model's metrics over the rows of ``frame`` (all rows of one model, or one slice of them)."""
    n = len(frame)
    if n == 0:
        return {"n": 0}
    precision, recall = referral_precision_recall(frame["referral_required"], frame["referral_given"])
    latency = frame["latency_s"].to_numpy(dtype=float)
    latency = latency[~np.isnan(latency)]  # None: not applicable (the offline teacher)
    tokens = int(frame["completion_tokens"].sum())
    total_s = float(latency.sum())
    codes = pd.Series([c for cs in frame["violations"] for c in cs], dtype=object)
    counts = codes.value_counts() if len(codes) else pd.Series(dtype=int)
    return {
        "n": n,
        "validity": float(frame["valid"].mean()),
        "adherence": float(frame["adherent"].mean()),
        "referral_precision": precision,
        "referral_recall": recall,
        "referral_required_n": int(frame["referral_required"].sum()),
        "referral_given_n": int(frame["referral_given"].sum()),
        "teacher_exercise_overlap": float(frame["teacher_exercise_overlap"].mean()),
        "teacher_structure_match": float(frame["teacher_structure_match"].mean()),
        "latency_p50_s": float(np.percentile(latency, 50)) if len(latency) else None,
        "latency_p95_s": float(np.percentile(latency, 95)) if len(latency) else None,
        "tokens_per_s": tokens / total_s if total_s > 0 else None,
        "completion_tokens_mean": tokens / n,
        "usd_per_1k_answers": float(frame["cost_usd"].mean()) * 1000,
        # Guided: answers written again under the session-bounded grammar (their first session ran long).
        "regenerated_share": float(frame["regenerated"].mean()) if "regenerated" in frame else None,
        # Guided: share of its tokens taken over from the raw answer (the grammar accepted them as written).
        "shared_with_raw_share": float(frame["shared_tokens"].sum()) / max(tokens, 1) if "shared_tokens" in frame
        else None,
        # Share of answers with at least one violation of each kind (parseable answers only can violate).
        "violation_rates": {code: float(counts.get(code, 0)) / n for code in VIOLATION_CODES},
        "rates": rate_intervals(frame),  # k, n and 95% Wilson interval of each rate above
    }


def per_group(frame: pd.DataFrame, column: str) -> dict[str, dict]:
    return {str(value): summarise(group) for value, group in frame.groupby(column, sort=True)}


def per_slice(frame: pd.DataFrame) -> dict[str, dict[str, dict]]:
    return {tag: per_group(frame, f"slice.{tag}") for tag in SLICE_TAGS if f"slice.{tag}" in frame}


def slice_disparity(
    frame: pd.DataFrame,
    threshold: float,
    metrics: tuple[str, ...] = SLICE_METRICS,
    min_examples: int = MIN_SLICE_EXAMPLES,
) -> list[dict]:
    """For each slice tag and metric, the gap between the best and worst slice.

    Slices with fewer than ``min_examples`` rows are left out of the comparison
    (and listed under ``ignored_slices``); a gap above ``threshold`` is flagged only when the
    best and worst slices' 95% intervals do not overlap (Wilson for rates, normal for overlap).
    """
    out: list[dict] = []
    for tag in SLICE_TAGS:
        col = f"slice.{tag}"
        if col not in frame:
            continue
        sizes = frame.groupby(col).size()
        kept = sizes[sizes >= min_examples].index
        ignored = {str(k): int(v) for k, v in sizes[sizes < min_examples].items()}
        columns = {METRIC_COLUMNS[m]: m for m in metrics}
        means = (frame[frame[col].isin(kept)].groupby(col)[list(columns)].mean().rename(columns=columns))
        for metric in metrics:
            entry = {"tag": tag, "metric": metric, "ignored_slices": ignored, "compared": len(means)}
            if len(means) < 2:
                entry.update(gap=None, flagged=False,
                             note=f"fewer than 2 slices with >= {min_examples} examples")
            else:
                values = means[metric].astype(float)
                gap = float(values.max() - values.min())
                best, worst = (_slice_point(frame, col, values.idxmax(), metric),
                               _slice_point(frame, col, values.idxmin(), metric))
                entry.update(gap=gap, flagged=gap > threshold and intervals_separate(best["ci95"], worst["ci95"]),
                             best=best, worst=worst)
            out.append(entry)
    return out


def _slice_point(frame: pd.DataFrame, col: str, value, metric: str) -> dict:
    """One slice's value of ``metric`` with its n and 95% interval."""
    scores = frame.loc[frame[col] == value, METRIC_COLUMNS[metric]]
    if scores.dtype == bool:
        interval = wilson_interval(int(scores.sum()), len(scores))
    else:
        interval = mean_interval(scores)
    return {"slice": str(value), "value": float(scores.mean()), "n": int(len(scores)),
            "ci95": list(interval) if interval else None}
