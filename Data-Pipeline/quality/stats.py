"""Per-column statistics of every artifact: pandas describe, value counts, histograms.

The output (``stats.json``) is also the reference format for drift: numeric
columns keep their histogram bin edges, categorical ones their shares. A big
synthetic table is summarised one column at a time from compact arrays (numpy
for numbers, Arrow value counts for the rest) with the same figures pandas gives.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from fitsense.data.quality.parquet import ParquetTable, float_column, value_counts

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


def _histogram(values) -> dict:
    counts, edges = np.histogram(values, bins=HIST_BINS)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _categories(counts: pd.Series, n: int) -> dict:
    """The categorical summary from value counts (text -> rows, in the order given) of ``n`` non-null values."""
    return {"kind": "categorical", "value_counts": {str(k): int(v) for k, v in counts.items()},
            "shares": {str(k): round(float(v) / max(n, 1), 6) for k, v in counts.items()}}


def column_stats(series: pd.Series) -> dict:
    nulls = int(series.isna().sum())
    out: dict = {"dtype": str(series.dtype), "count": int(series.size - nulls), "nulls": nulls}
    values = series.dropna()
    if _is_numeric(series) and len(values):
        desc = values.astype(float).describe()
        out["kind"] = "numeric"
        out["describe"] = {k: _clean(v) for k, v in desc.items()}
        out["histogram"] = _histogram(values.astype(float))
        return out
    as_text = values.map(lambda v: v if isinstance(v, (str, bool)) else str(v))
    nunique = int(as_text.nunique())
    out["unique"] = nunique
    if nunique <= MAX_CATEGORIES:
        out.update(_categories(as_text.astype(str).value_counts(), len(values)))
    else:
        lengths = as_text.astype(str).str.len()
        out["kind"] = "text"
        out["length"] = {k: _clean(v) for k, v in lengths.describe().items()}
    return out


def _describe(values: np.ndarray) -> dict:
    """``pd.Series(values).describe()`` of float values (the same sums, so the same bits), without
    pandas' copies of a big column."""
    n = len(values)
    mean = float(values.sum() / n)
    squares = float(np.square(mean - values).sum())  # one temporary, no bigger than percentile's copy
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return {"count": float(n), "mean": mean, "std": float(np.sqrt(squares / (n - 1))) if n > 1 else None,
            "min": float(values.min()), "25%": float(q25), "50%": float(q50), "75%": float(q75),
            "max": float(values.max())}


def _weighted_describe(values: np.ndarray, counts: np.ndarray) -> dict:
    """``describe()`` of ``np.repeat(values, counts)`` from the distinct values and their counts."""
    order = np.argsort(values, kind="stable")
    values, counts = values[order].astype(float), counts[order].astype(np.int64)
    n = int(counts.sum())
    mean = float((values * counts).sum() / n)
    std = float(np.sqrt((np.square(values - mean) * counts).sum() / (n - 1))) if n > 1 else None
    ends = np.cumsum(counts)

    def quantile(q: float) -> float:
        h = (n - 1) * q
        lo = int(np.floor(h))
        a = values[np.searchsorted(ends, lo, side="right")]
        b = values[np.searchsorted(ends, min(lo + 1, n - 1), side="right")]
        return float(a + (h - lo) * (b - a))

    return {"count": float(n), "mean": mean, "std": std, "min": float(values[0]), "25%": quantile(0.25),
            "50%": quantile(0.5), "75%": quantile(0.75), "max": float(values[-1])}


def _pandas_dtype(kind: pa.DataType, has_nulls: bool) -> str:
    """The dtype pandas gives the whole column (an integer or bool column with nulls is widened)."""
    if has_nulls and pa.types.is_integer(kind):
        return "float64"
    if has_nulls and pa.types.is_boolean(kind):
        return "object"
    return str(pa.array([], type=kind).to_pandas().dtype)


def big_column_stats(table: ParquetTable, name: str) -> dict:
    """``column_stats`` of a big table's column from compact arrays: numbers as one float array, the
    rest as value counts."""
    kind = table.arrow_type(name)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        values = float_column(table, name)
        present = ~np.isnan(values)
        if not present.all():
            values = values[present]
        nulls = int(len(present) - len(values))
        del present
        out: dict = {"dtype": _pandas_dtype(kind, nulls > 0), "count": int(len(values)), "nulls": nulls}
        if len(values):
            out["kind"] = "numeric"
            out["describe"] = {k: _clean(v) for k, v in _describe(values).items()}
            out["histogram"] = _histogram(values)
            return out
        return {**out, "unique": 0, "kind": "categorical", "value_counts": {}, "shares": {}}
    counts = pd.Series(value_counts(table, name), dtype="int64")
    n = int(counts.sum())
    nulls = table.num_rows - n
    out = {"dtype": _pandas_dtype(kind, nulls > 0), "count": n, "nulls": nulls, "unique": len(counts)}
    if len(counts) <= MAX_CATEGORIES:
        out.update(_categories(counts.sort_values(ascending=False), n))
    else:
        lengths = pd.Series(counts.to_numpy()).groupby(counts.index.str.len().to_numpy()).sum()
        out["kind"] = "text"
        out["length"] = {k: _clean(v) for k, v in
                         _weighted_describe(lengths.index.to_numpy(), lengths.to_numpy()).items()}
    return out


def table_stats(table: pd.DataFrame | ParquetTable) -> dict:
    if isinstance(table, ParquetTable) and not table.small:
        return {"rows": table.num_rows,
                "columns": {col: big_column_stats(table, col) for col in table.columns}}
    frame = table.frame() if isinstance(table, ParquetTable) else table
    return {"rows": int(len(frame)), "columns": {col: column_stats(frame[col]) for col in frame.columns}}


def artifact_stats(frames: dict[str, pd.DataFrame | ParquetTable]) -> dict:
    return {name: table_stats(frame) for name, frame in frames.items()}
