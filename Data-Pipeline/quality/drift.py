"""Drift of this run's artifacts against a reference run's ``stats.json``.

Numeric columns: population stability index (PSI) over the reference
histogram's bins (the outer bins open-ended), plus a chi-square test of the
binned counts. Categorical columns: PSI over category shares plus a chi-square
goodness-of-fit test (scipy). A column drifts when PSI > ``drift_psi_threshold``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats as sstats

from fitsense.data.quality.parquet import ParquetTable, value_counts
from fitsense.errors import ConfigError
from fitsense.runs import read_json

EPS = 1e-4


class DriftReferenceError(ConfigError):
    """``quality.drift_reference`` names neither a run with quality stats nor a stats JSON file."""


def resolve_reference(reference: str, artifacts_dir: Path) -> Path:
    as_run = artifacts_dir / reference / "quality" / "stats.json"
    if as_run.exists():
        return as_run
    as_path = Path(reference)
    if as_path.is_file():
        return as_path
    raise DriftReferenceError(
        f"quality.drift_reference={reference!r}: no {as_run} (a run id with a finished quality stage) "
        f"and no such stats JSON file"
    )


def _skip(column: str) -> bool:
    """Identifiers and helper columns carry no distribution worth comparing."""
    return column.endswith("_id") or column.startswith("fk_") or column in {"query_id", "roles"}


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.clip(expected / max(expected.sum(), 1), EPS, None)
    a = np.clip(actual / max(actual.sum(), 1), EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def _chi2(expected_counts: np.ndarray, actual_counts: np.ndarray) -> float | None:
    n = actual_counts.sum()
    if n == 0 or expected_counts.sum() == 0:
        return None
    exp = np.clip(expected_counts / expected_counts.sum(), EPS, None)
    exp = exp / exp.sum() * n
    return float(sstats.chisquare(actual_counts, exp).pvalue)


def _open_edges(hist: dict) -> np.ndarray:
    edges = np.array(hist["edges"], dtype=float)
    return np.concatenate([[-np.inf], edges[1:-1], [np.inf]])


def _numeric_result(ref: dict, actual: np.ndarray, mean: float) -> dict:
    expected = np.array(ref["histogram"]["counts"], dtype=float)
    return {"type": "numeric", "psi": round(psi(expected, actual.astype(float)), 4),
            "chi2_pvalue": _chi2(expected, actual.astype(float)),
            "reference_mean": ref.get("describe", {}).get("mean"), "current_mean": mean}


def _numeric_drift(ref: dict, values: pd.Series) -> dict | None:
    hist = ref.get("histogram")
    values = pd.to_numeric(values, errors="coerce").dropna().astype(float)
    if not hist or values.empty:
        return None
    actual, _ = np.histogram(values, bins=_open_edges(hist))
    return _numeric_result(ref, actual, float(values.mean()))


def _streamed_numeric_drift(ref: dict, table: ParquetTable, col: str) -> dict | None:
    """``_numeric_drift`` of a big table's column, a batch at a time: binned counts and the sum add up."""
    hist = ref.get("histogram")
    if not hist or not (pa.types.is_integer(table.arrow_type(col)) or pa.types.is_floating(table.arrow_type(col))):
        return None
    actual, total, n = np.zeros(len(hist["counts"]), dtype=np.int64), 0.0, 0
    for batch in table.arrow_batches([col]):
        values = batch.column(0).to_numpy(zero_copy_only=False).astype(float)
        values = values[~np.isnan(values)]
        actual += np.histogram(values, bins=_open_edges(hist))[0]
        total, n = total + float(values.sum()), n + len(values)
    return _numeric_result(ref, actual, total / n) if n else None


def _categorical_drift(ref: dict, values: pd.Series | tuple[ParquetTable, str]) -> dict | None:
    ref_counts = ref.get("value_counts")
    if ref_counts is None:
        return None
    current = (pd.Series(value_counts(*values), dtype="int64") if isinstance(values, tuple)
               else values.dropna().astype(str).value_counts())
    cats = sorted(set(ref_counts) | set(current.index))
    expected = np.array([ref_counts.get(c, 0) for c in cats], dtype=float)
    actual = np.array([int(current.get(c, 0)) for c in cats], dtype=float)
    shares_ref = expected / max(expected.sum(), 1)
    shares_cur = actual / max(actual.sum(), 1)
    shifts = {c: round(float(b - a), 4) for c, a, b in zip(cats, shares_ref, shares_cur)}
    return {"type": "categorical", "psi": round(psi(expected, actual), 4), "chi2_pvalue": _chi2(expected, actual),
            "share_shift": dict(sorted(shifts.items(), key=lambda kv: -abs(kv[1]))[:10])}


def compute_drift(reference_stats: dict, frames: dict[str, pd.DataFrame | ParquetTable], threshold: float) -> dict:
    columns: list[dict] = []
    for artifact, frame in frames.items():
        ref_art = reference_stats.get(artifact)
        if not ref_art:
            continue
        streamed = isinstance(frame, ParquetTable) and not frame.small
        for col, ref_col in ref_art.get("columns", {}).items():
            if _skip(col) or col not in frame.columns:
                continue
            kind = ref_col.get("kind")
            if streamed:  # a big synthetic table: one column, a batch at a time
                res = (_streamed_numeric_drift(ref_col, frame, col) if kind == "numeric"
                       else _categorical_drift(ref_col, (frame, col)) if kind == "categorical" else None)
            else:
                res = (_numeric_drift(ref_col, frame[col]) if kind == "numeric"
                       else _categorical_drift(ref_col, frame[col]) if kind == "categorical" else None)
            if res is None:
                continue
            res.update(artifact=artifact, column=col, drifted=res["psi"] > threshold)
            columns.append(res)
    columns.sort(key=lambda r: -r["psi"])
    drifted = [c for c in columns if c["drifted"]]
    return {"threshold": threshold, "compared_columns": len(columns), "drifted": len(drifted),
            "max_psi": columns[0]["psi"] if columns else 0.0, "columns": columns}


def run_drift(reference: str | None, artifacts_dir: Path, frames: dict[str, pd.DataFrame], threshold: float) -> dict:
    if not reference:
        return {"reference": None, "skipped": "quality.drift_reference is not set", "drifted": 0, "columns": []}
    path = resolve_reference(reference, artifacts_dir)
    ref = read_json(path)
    ref = ref.get("artifacts", ref)  # a quality stats.json, or a bare {artifact: stats} mapping
    return {"reference": reference, "reference_path": str(path), **compute_drift(ref, frames, threshold)}
