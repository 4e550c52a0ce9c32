"""Anomalous teacher records: rule checks plus an IsolationForest over record features.

Hard contract breaks (negative latency, bad types ...) are critical Great
Expectations failures; this module looks for records that are *valid but odd*
(extreme lengths, slow or retry-heavy calls, oversized plans). Each flagged
record carries reasons: the rules it broke and the features whose z-score is
beyond ``Z_THRESHOLD``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FEATURES = ("prompt_chars", "answer_chars", "prompt_tokens", "completion_tokens", "latency_s", "attempts",
            "repairs", "n_days", "n_exercises", "n_sets")
Z_THRESHOLD = 3.0
SLOW_FLOOR_S = 2.0


def record_features(teacher: pd.DataFrame, queries: pd.DataFrame) -> pd.DataFrame:
    prompts = queries[["query_id", "prompt_chars"]].drop_duplicates("query_id")
    frame = teacher.merge(prompts, on="query_id", how="left")
    feats = frame[["query_id", "status", "answer_referral", *[f for f in FEATURES if f != "prompt_chars"], "prompt_chars"]].copy()
    for col in FEATURES:
        feats[col] = pd.to_numeric(feats[col], errors="coerce")
    return feats


def _rules(f: pd.DataFrame, max_attempts: int) -> dict[str, pd.Series]:
    ok = f["status"] == "ok"
    median_latency = f.loc[ok, "latency_s"].median()
    return {
        "ok answer with zero completion tokens": ok & (f["completion_tokens"] == 0),
        "ok answer with an empty plan and no referral": ok & (f["n_days"] == 0) & ~f["answer_referral"].astype(bool),
        f"more than {max_attempts} HTTP attempts": f["attempts"] > max_attempts,
        # sub-second jitter is not slowness: the bar is 10x the median and at least SLOW_FLOOR_S
        f"latency over 10x the median and {SLOW_FLOOR_S:g} s": f["latency_s"] > max(10 * (median_latency or 0),
                                                                               SLOW_FLOOR_S),
        "non-numeric feature": f[list(FEATURES)].isna().any(axis=1),
    }


def detect_anomalies(teacher: pd.DataFrame, queries: pd.DataFrame, contamination: float, seed: int,
                     max_attempts: int, fit_sample: int | None = None) -> dict:
    """Rule checks on every record; the IsolationForest is fitted on at most ``fit_sample`` records
    (a seeded random sample; None: all) and scores every record."""
    from sklearn.ensemble import IsolationForest

    f = record_features(teacher, queries).reset_index(drop=True)
    rules = _rules(f, max_attempts)
    X = f[list(FEATURES)].fillna(f[list(FEATURES)].median()).fillna(0).to_numpy(dtype=float)
    mean, std = X.mean(axis=0), X.std(axis=0)
    z = np.divide(X - mean, std, out=np.zeros_like(X), where=std > 0)

    outlier = np.zeros(len(f), dtype=bool)
    scores = np.zeros(len(f))
    if len(f) >= 10:
        forest = IsolationForest(contamination=contamination, random_state=seed, n_estimators=200)
        if fit_sample is not None and len(X) > fit_sample:
            forest.fit(X[np.random.default_rng(seed).choice(len(X), fit_sample, replace=False)])
            outlier = forest.predict(X) == -1
        else:
            outlier = forest.fit_predict(X) == -1
        scores = -forest.score_samples(X)  # higher = more anomalous

    flagged = []
    rule_hits = {name: mask.fillna(False).to_numpy(dtype=bool) for name, mask in rules.items()}
    candidates = outlier | np.logical_or.reduce(list(rule_hits.values())) if rule_hits else outlier
    for i in np.flatnonzero(candidates):  # only flagged rows: the loop is not over every record
        broken = [name for name, hits in rule_hits.items() if hits[i]]
        extreme = [(FEATURES[j], float(X[i, j]), float(z[i, j])) for j in np.argsort(-np.abs(z[i]))
                   if abs(z[i, j]) >= Z_THRESHOLD]
        if not extreme and outlier[i]:  # unusual combination: name the two most unusual features
            extreme = [(FEATURES[j], float(X[i, j]), float(z[i, j])) for j in np.argsort(-np.abs(z[i]))[:2]]
        reasons = [f"rule: {b}" for b in broken] + [f"{n}={v:g} (z={zz:+.1f})" for n, v, zz in extreme]
        flagged.append({"query_id": f.loc[i, "query_id"], "isolation_forest": bool(outlier[i]),
                        "score": round(float(scores[i]), 4), "rules": broken, "reasons": reasons})
    flagged.sort(key=lambda r: (-len(r["rules"]), -r["score"]))
    by_rule = {name: int(mask.sum()) for name, mask in rules.items()}
    return {
        "records": len(f),
        "features": list(FEATURES),
        "contamination": contamination,
        "fit_rows": min(len(f), fit_sample) if fit_sample is not None else len(f),
        "z_threshold": Z_THRESHOLD,
        "flagged": flagged,
        "n_flagged": len(flagged),
        "anomaly_rate": round(len(flagged) / max(len(f), 1), 4),
        "rule_counts": by_rule,
        "isolation_forest_outliers": int(outlier.sum()),
        "feature_means": {n: round(float(m), 4) for n, m in zip(FEATURES, mean)},
        "feature_stds": {n: round(float(s), 4) for n, s in zip(FEATURES, std)},
    }
