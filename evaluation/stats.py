"""Uncertainty for evaluation results: Wilson intervals for rates, exact McNemar tests for paired comparisons.

Every rate a report shows comes with its n and a 95% Wilson score interval
(good at small n and near 0 or 1, where the normal interval is not). Two
models answering the same queries are compared pairwise: only the queries
where exactly one of them succeeds carry information, and an exact binomial
test on those (McNemar) says whether the difference could be chance.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest, norm

CONFIDENCE = 0.95

# Rates of the answer table: metric -> (success column, the rows it is a rate over: None = all rows).
RATES: dict[str, tuple[str, str | None]] = {
    "validity": ("valid", None),
    "adherence": ("adherent", None),
    "teacher_structure_match": ("teacher_structure_match", None),
    "referral_recall": ("referral_given", "referral_required"),  # over the queries that need a referral
    "referral_precision": ("referral_required", "referral_given"),  # over the answers that give one
}


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of ``successes / n``; None when n is 0."""
    if n == 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n]: {successes} of {n}")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 and n successes the bound is exactly 0 or 1 (rounding would put it a hair inside)
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


def mean_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """A normal-approximation interval of a mean of scores in [0, 1] (e.g. Jaccard overlap); None below 2 values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    z = float(norm.ppf(0.5 + confidence / 2))
    half = z * values.std(ddof=1) / math.sqrt(len(values))
    return max(0.0, float(values.mean() - half)), min(1.0, float(values.mean() + half))


def rate_intervals(frame) -> dict[str, dict]:
    """Per rate metric of an answer table: successes k, its n and the 95% Wilson interval."""
    out = {}
    for metric, (column, over) in RATES.items():
        rows = frame if over is None else frame[frame[over].astype(bool)]
        n, k = len(rows), int(rows[column].astype(bool).sum())
        interval = wilson_interval(k, n)
        out[metric] = {"k": k, "n": n, "ci95": list(interval) if interval else None}
    return out


def intervals_separate(a: list[float] | None, b: list[float] | None) -> bool:
    return a is not None and b is not None and (a[1] < b[0] or b[1] < a[0])


def mcnemar_exact(a, b) -> dict:
    """Paired comparison of two models' successes on the same queries (exact McNemar test).

    ``diff`` is rate(a) - rate(b); ``p_value`` tests "a and b succeed equally often" on the discordant pairs.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    discordant = only_a + only_b
    p = binomtest(only_a, discordant, 0.5).pvalue if discordant else 1.0
    return {"n": int(len(a)), "a_rate": float(a.mean()) if len(a) else None,
            "b_rate": float(b.mean()) if len(b) else None,
            "diff": float(a.mean() - b.mean()) if len(a) else None,
            "a_only": only_a, "b_only": only_b, "p_value": float(p)}
