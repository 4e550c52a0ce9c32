"""Per-column statistics of every artifact: pandas describe, value counts, histograms.

The output (``stats.json``) is also the reference format for drift: numeric
columns keep their histogram bin edges, categorical ones their shares.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

HIST_BINS = 10
MAX_CATEGORIES = 50  # more distinct values than this: an id or free text, summarised by length only


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _clean(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    return value


def column_stats(series: pd.Series) -> dict:
    nulls = int(series.isna().sum())
    out: dict = {"dtype": str(series.dtype), "count": int(series.size - nulls), "nulls": nulls}
    values = series.dropna()
    if _is_numeric(series) and len(values):
        desc = values.astype(float).describe()
        out["kind"] = "numeric"
        out["describe"] = {k: _clean(v) for k, v in desc.items()}
        counts, edges = np.histogram(values.astype(float), bins=HIST_BINS)
        out["histogram"] = {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
        return out
    as_text = values.map(lambda v: v if isinstance(v, (str, bool)) else str(v))
    nunique = int(as_text.nunique())
    out["unique"] = nunique
    if nunique <= MAX_CATEGORIES:
        counts = as_text.astype(str).value_counts()
        out["kind"] = "categorical"
        out["value_counts"] = {str(k): int(v) for k, v in counts.items()}
        out["shares"] = {str(k): round(float(v) / max(len(values), 1), 6) for k, v in counts.items()}
    else:
        lengths = as_text.astype(str).str.len()
        out["kind"] = "text"
        out["length"] = {k: _clean(v) for k, v in lengths.describe().items()}
    return out


def artifact_stats(frames: dict[str, pd.DataFrame]) -> dict:
    return {
        name: {"rows": int(len(frame)), "columns": {col: column_stats(frame[col]) for col in frame.columns}}
        for name, frame in frames.items()
    }
