"""Great Expectations suites for every artifact, run in one context, with Data Docs.

Suites:
- ``synthetic.<table>``: derived from ``database/schema.sql`` (types, NOT NULL,
  primary keys and UNIQUE, CHECK ranges and allowed values, foreign keys as
  ``expect_column_values_to_be_in_set`` over the parent table's ids).
- ``queries``, ``teacher``, ``splits``, ``train_split``: record contracts,
  ranges, allowed values, referential consistency and leakage.
- ``teacher_audit``: each coaching rule of ``fitsense.audit`` passes on at least
  ``quality.min_audit_pass_rate`` of the teacher answers it applies to.

Every expectation carries ``meta.severity`` (``critical`` fails the gate,
``warning`` is reported). One ephemeral GX context, one pandas data source and
one validation definition per suite; the suites are exported as JSON to
``quality/gx/expectations/`` and Data Docs are built once into ``quality/data_docs/``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sqlite3
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from fitsense.catalogue import EQUIPMENT_TIERS
from fitsense.data.quality.parquet import ParquetTable, key_arrays, strictly_increasing
from fitsense.data.queries import age_band
from fitsense.records import QUERY_KINDS, SLICE_TAGS, Profile, QueryContext
from fitsense.runs import write_json

log = logging.getLogger(__name__)
logging.getLogger("great_expectations").setLevel(logging.WARNING)  # it logs every config save at INFO

CRITICAL, WARNING = "critical", "warning"
INT_TYPES = ["int", "int8", "int16", "int32", "int64", "Int64", "uint8", "uint16", "uint32", "uint64"]
NUM_TYPES = INT_TYPES + ["float", "float32", "float64", "Float64"]
BOOL_TYPES = ["bool", "boolean", "bool_"]
DATE_TYPES = ["date", "datetime", "Timestamp", "datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"]
SCHEMA_SQL = Path(__file__).resolve().parents[2] / "database" / "schema.sql"
MAX_EXAMPLES = 5
MAX_INLINE_SET = 500  # larger foreign-key id sets are checked through a helper column
UNIQUE_TYPES = ("expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique")


def _literal(model, name: str) -> list[str]:
    return list(typing.get_args(model.model_fields[name].annotation))


# Allowed slice values. Tags without a closed vocabulary here would get not-null checks only.
SLICE_VALUES: dict[str, list[str]] = {
    "sex": _literal(Profile, "sex"),
    "activity_level": _literal(Profile, "activity_level"),
    "experience": _literal(Profile, "experience"),
    "primary_goal": _literal(QueryContext, "primary_goal"),
    "equipment_tier": list(EQUIPMENT_TIERS),
    "age_band": sorted({age_band(a) for a in range(13, 101)}),  # the query stage's own banding
    "has_condition": ["no", "yes"],
    "has_injury": ["no", "yes"],
}


@dataclass
class Suite:
    name: str
    frame: pd.DataFrame  # the data validated; for a big table, its first batch (it sets the expectations)
    id_columns: list[str]  # identify offending records in failure messages
    expectations: list  # great_expectations.expectations.Expectation
    # A big synthetic table is validated a batch at a time: each batch of ``source`` after ``prepare``
    # (which adds the helper columns) and its key uniqueness over all rows at once.
    source: ParquetTable | None = None
    prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None

    @property
    def batched(self) -> bool:
        return self.source is not None and not self.source.small


# --------------------------------------------------------------------------- schema.sql


@dataclass
class TableSchema:
    name: str
    columns: dict[str, tuple[str, bool]]  # name -> (declared type, not null)
    primary_key: list[str]
    unique: list[list[str]]
    foreign_keys: list[tuple[str, str, str]]  # (column, parent table, parent column)
    allowed: dict[str, list[str]]
    ranges: dict[str, tuple[float | None, float | None]]


_IN = re.compile(r"CHECK\s*\(\s*(\w+)\s+IN\s*\(([^)]*)\)\s*\)", re.I)
_BETWEEN = re.compile(r"CHECK\s*\(\s*(\w+)\s+BETWEEN\s+(-?[\d.]+)\s+AND\s+(-?[\d.]+)\s*\)", re.I)
_GE_LE = re.compile(r"CHECK\s*\(\s*(\w+)\s*>=\s*(-?[\d.]+)\s+AND\s+\1\s*<=\s*(-?[\d.]+)\s*\)", re.I)


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() else value


def parse_schema(path: Path = SCHEMA_SQL) -> dict[str, TableSchema]:
    """Tables of the SQL schema: structure from SQLite itself, CHECK rules from the DDL text."""
    if not path.exists():
        return {}
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(path.read_text())
        out: dict[str, TableSchema] = {}
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY rowid")]
        for name in names:
            info = db.execute(f"PRAGMA table_info({name})").fetchall()
            columns = {r[1]: (r[2].upper(), bool(r[3]) or r[5] > 0) for r in info}
            pk = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5] > 0]
            unique = []
            for idx in db.execute(f"PRAGMA index_list({name})").fetchall():
                if idx[2] and idx[3] == "u":
                    unique.append([r[2] for r in db.execute(f"PRAGMA index_info({idx[1]})").fetchall()])
            fks = [(r[3], r[2], r[4]) for r in db.execute(f"PRAGMA foreign_key_list({name})").fetchall()]
            ddl = db.execute("SELECT sql FROM sqlite_master WHERE name=?", (name,)).fetchone()[0]
            allowed = {m.group(1): [v.strip().strip("'") for v in m.group(2).split(",")] for m in _IN.finditer(ddl)}
            ranges = {m.group(1): (_number(m.group(2)), _number(m.group(3)))
                      for rx in (_BETWEEN, _GE_LE) for m in rx.finditer(ddl)}
            out[name] = TableSchema(name, columns, pk, unique, fks, allowed, ranges)
        return out
    finally:
        db.close()


def _in_sorted(values: pd.Series, ids: np.ndarray) -> pd.Series:
    """``values.isin(ids)`` for sorted numeric ids by binary search: no hash table of a big id set per batch."""
    v = values.to_numpy()
    if len(ids) == 0 or v.dtype.kind not in "iuf" or ids.dtype.kind not in "iuf":
        return values.isin(ids)
    pos = np.searchsorted(ids, v).clip(max=len(ids) - 1)
    return pd.Series(ids[pos] == v, index=values.index)


def _with_helpers(frame: pd.DataFrame, fk_helpers: list[tuple[str, str, np.ndarray]], anchor_date) -> pd.DataFrame:
    """Helper columns that turn foreign keys and derived ages into plain column expectations."""
    for col, helper, ids in fk_helpers:
        frame[helper] = frame[col].isna() | _in_sorted(frame[col], ids)
    if anchor_date is not None:
        # the schema stores birth dates; ages must fit the profile contract on the synthetic "today"
        birth = pd.to_datetime(frame["birth_date"], errors="coerce")
        frame["age_years"] = ((pd.Timestamp(anchor_date) - birth).dt.days // 365.25).astype("float")
    return frame


def synthetic_suites(tables: dict[str, ParquetTable], schema: dict[str, TableSchema], anchor_date=None) -> list[Suite]:
    import great_expectations.expectations as gxe

    age_range = (Profile.model_fields["age"].metadata[0].ge, Profile.model_fields["age"].metadata[1].le)
    parent_ids: dict[tuple[str, str], np.ndarray] = {}  # compact, sorted: shared by every child table

    suites = []
    for name, spec in schema.items():
        table = tables.get(name)
        if table is None:
            continue
        crit = {"severity": CRITICAL}
        fk_exps, fk_helpers = [], []
        for col, parent, parent_col in spec.foreign_keys:
            parent_table = tables.get(parent)
            if parent_table is None or col not in table.columns:
                continue
            meta = {**crit, "foreign_key": f"{parent}.{parent_col}"}
            if (parent, parent_col) not in parent_ids:
                parent_ids[parent, parent_col] = np.sort(parent_table[parent_col].dropna().unique())
            ids = parent_ids[parent, parent_col]
            if len(ids) <= MAX_INLINE_SET:
                fk_exps.append(gxe.ExpectColumnValuesToBeInSet(column=col, value_set=ids.tolist(), meta=meta))
            else:  # a big id set would bloat the suite and Data Docs: check membership in a helper column
                helper = f"fk_{col}_in_{parent}"
                fk_helpers.append((col, helper, ids))
                fk_exps.append(gxe.ExpectColumnValuesToBeInSet(column=helper, value_set=[True], meta=meta))
        extra_exps = []
        ages = anchor_date if name == "profiles" and anchor_date is not None and "birth_date" in table.columns else None
        if ages is not None:
            extra_exps.append(gxe.ExpectColumnValuesToBeBetween(column="age_years", min_value=age_range[0],
                                                                max_value=age_range[1], meta=crit))

        def prepare(frame, fk_helpers=fk_helpers, ages=ages):
            return _with_helpers(frame.copy(), fk_helpers, ages)

        frame = prepare(next(table.batches()))  # a big table: its first batch decides the dtype-driven expectations
        helpers = [c for c in frame.columns if c not in spec.columns]
        exps = [gxe.ExpectTableColumnsToMatchSet(column_set=list(spec.columns) + helpers, exact_match=True,
                                                 meta=crit)]
        for col, (decl, not_null) in spec.columns.items():
            if not_null:
                exps.append(gxe.ExpectColumnValuesToNotBeNull(column=col, meta=crit))
            if decl == "INTEGER" and not_null and col not in spec.allowed:
                exps.append(gxe.ExpectColumnValuesToBeInTypeList(column=col, type_list=INT_TYPES, meta=crit))
            elif decl == "REAL":
                exps.append(gxe.ExpectColumnValuesToBeInTypeList(column=col, type_list=NUM_TYPES, meta=crit))
            elif decl == "DATE":
                exps.append(gxe.ExpectColumnValuesToBeInTypeList(column=col, type_list=DATE_TYPES, meta=crit))
        if len(spec.primary_key) == 1:
            exps.append(gxe.ExpectColumnValuesToBeUnique(column=spec.primary_key[0], meta=crit))
        elif spec.primary_key:
            exps.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=spec.primary_key, meta=crit))
        for cols in spec.unique:
            exp = (gxe.ExpectColumnValuesToBeUnique(column=cols[0], meta=crit) if len(cols) == 1
                   else gxe.ExpectCompoundColumnsToBeUnique(column_list=cols, meta=crit))
            exps.append(exp)
        for col, values in spec.allowed.items():
            if frame[col].dtype.kind in "iub":  # INTEGER 0/1 flags
                values = [int(v) for v in values]
            exps.append(gxe.ExpectColumnValuesToBeInSet(column=col, value_set=values, meta=crit))
        for col, (lo, hi) in spec.ranges.items():
            exps.append(gxe.ExpectColumnValuesToBeBetween(column=col, min_value=lo, max_value=hi, meta=crit))
        exps += fk_exps + extra_exps
        # plausibility beyond the schema: warnings, not gate failures
        if name == "profiles":
            exps.append(gxe.ExpectColumnMeanToBeBetween(column="height_cm", min_value=150, max_value=190,
                                                        meta={"severity": WARNING}))
        ids = spec.primary_key or list(spec.columns)[:1]
        suites.append(Suite(f"synthetic.{name}", frame, ids, exps, source=table, prepare=prepare))
    return suites


def whole_table_unique(table: ParquetTable, columns: list[str], id_columns: list[str]) -> dict:
    """GX's uniqueness result for ``columns`` over every row of a big table. Rows already in strictly
    increasing key order (as the generator writes them) are unique: one pass over the key columns, a
    batch at a time; otherwise the key columns are read whole to find the duplicated rows."""
    previous = None
    for batch in table.arrow_batches(columns):
        arrays = key_arrays(batch, columns)
        if arrays is None:
            break
        if previous is not None:
            arrays = [np.concatenate([p, a]) for p, a in zip(previous, arrays)]
        if not strictly_increasing(arrays):
            break
        previous = [a[-1:] for a in arrays]
    else:
        return {"element_count": table.num_rows, "missing_count": 0, "unexpected_count": 0,
                "partial_unexpected_index_list": []}
    frame = table.frame_of(list(dict.fromkeys([*columns, *id_columns])))
    present = frame[columns].notna().all(axis=1)
    duplicated = present & frame.duplicated(subset=columns, keep=False)
    examples = frame.loc[duplicated, list(dict.fromkeys([*columns, *id_columns]))].head(MAX_EXAMPLES)
    return {"element_count": int(len(frame)), "missing_count": int((~present).sum()),
            "unexpected_count": int(duplicated.sum()),
            "partial_unexpected_index_list": [{k: str(v) for k, v in row.items()}
                                              for row in examples.to_dict(orient="records")]}


# --------------------------------------------------------------------------- record suites


def _references(frame: pd.DataFrame, col: str, ids, target: str) -> tuple[pd.DataFrame, object]:
    """``col`` values must exist in ``ids`` (a foreign key); big id sets go through a helper column."""
    import great_expectations.expectations as gxe

    meta = {"severity": CRITICAL, "foreign_key": target}
    ids = sorted(set(ids))
    if len(ids) <= MAX_INLINE_SET:
        return frame, gxe.ExpectColumnValuesToBeInSet(column=col, value_set=ids, meta=meta)
    helper = f"fk_{col}_in_{target.split('.')[-2]}"
    frame = frame.assign(**{helper: frame[col].isin(ids)})
    return frame, gxe.ExpectColumnValuesToBeInSet(column=helper, value_set=[True], meta=meta)


def _slice_expectations(frame: pd.DataFrame) -> list:
    import great_expectations.expectations as gxe

    exps = []
    for tag in SLICE_TAGS:
        col = f"slice_{tag}"
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=col, meta={"severity": CRITICAL}))
        if tag in SLICE_VALUES:
            exps.append(gxe.ExpectColumnValuesToBeInSet(column=col, value_set=SLICE_VALUES[tag],
                                                        meta={"severity": CRITICAL}))
    return exps


def query_suite(frame: pd.DataFrame, user_ids: list[int] | None) -> Suite:
    import great_expectations.expectations as gxe

    c = {"severity": CRITICAL}
    exps = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=c),
        gxe.ExpectColumnValuesToNotBeNull(column="query_id", meta=c),
        gxe.ExpectColumnValuesToBeUnique(column="query_id", meta=c),
        gxe.ExpectColumnValuesToBeInTypeList(column="user_id", type_list=INT_TYPES, meta=c),
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(QUERY_KINDS), meta=c),
        gxe.ExpectColumnValuesToBeInSet(column="roles", value_set=["system,user"], meta=c),
        gxe.ExpectColumnValuesToBeBetween(column="prompt_chars", min_value=1, meta=c),
        gxe.ExpectColumnValuesToBeBetween(column="days_per_week", min_value=1, max_value=7, meta=c),
        gxe.ExpectColumnValuesToBeBetween(column="session_minutes", min_value=10, max_value=180, meta=c),
        gxe.ExpectColumnValuesToBeBetween(column="max_exercises_per_day", min_value=1, max_value=12, meta=c),
        gxe.ExpectColumnValuesToBeBetween(column="rir_floor", min_value=0, max_value=5, meta=c),
        gxe.ExpectColumnValuesToBeInSet(column="referral_required", value_set=[True, False], meta=c),
        gxe.ExpectColumnValuesToBeBetween(column="n_available_equipment", min_value=1, meta=c),
        gxe.ExpectColumnDistinctValuesToContainSet(column="kind", value_set=list(QUERY_KINDS),
                                                   meta={"severity": WARNING}),
        *_slice_expectations(frame),
    ]
    if user_ids is not None:  # every query belongs to a generated user
        frame, exp = _references(frame, "user_id", user_ids, "synthetic.users.user_id")
        exps.append(exp)
    return Suite("queries", frame, ["query_id"], exps)


def teacher_suite(frame: pd.DataFrame, query_ids: list[str]) -> Suite:
    import great_expectations.expectations as gxe

    c, w = {"severity": CRITICAL}, {"severity": WARNING}
    exps = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=c),
        gxe.ExpectColumnValuesToNotBeNull(column="query_id", meta=c),
        gxe.ExpectColumnValuesToBeUnique(column="query_id", meta=c),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["ok", "failed"], meta=c),
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(QUERY_KINDS), meta=c),
        gxe.ExpectColumnValuesToBeInSet(column="status_consistent", value_set=[True], meta=c),
        gxe.ExpectColumnValuesToNotBeNull(column="teacher_model", meta=c),
    ]
    for col in ("latency_s", "cost_usd"):
        exps += [gxe.ExpectColumnValuesToBeInTypeList(column=col, type_list=NUM_TYPES, meta=c),
                 gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0, meta=c)]
    for col in ("prompt_tokens", "completion_tokens", "attempts", "repairs"):
        exps += [gxe.ExpectColumnValuesToBeInTypeList(column=col, type_list=INT_TYPES, meta=c),
                 gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0, meta=c)]
    exps += [
        gxe.ExpectColumnValuesToBeInTypeList(column="schema_valid", type_list=BOOL_TYPES, meta=c),
        gxe.ExpectColumnValuesToBeBetween(column="n_days", min_value=0, max_value=7, meta=c),
        # plausibility: most requests should succeed without retries
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["ok"], mostly=0.8, meta=w),
        gxe.ExpectColumnMedianToBeBetween(column="latency_s", max_value=30, meta=w),
    ]
    frame, exp = _references(frame, "query_id", query_ids, "queries.query_id")
    return Suite("teacher", frame, ["query_id"], [*exps, exp])


def audit_suite(frame: pd.DataFrame, min_rate: float) -> Suite:
    """Each coaching rule must pass on at least ``min_rate`` of the teacher answers it applies to
    (GX skips the None cells, where a rule does not apply)."""
    import great_expectations.expectations as gxe

    from fitsense.audit import RULES

    exps = [gxe.ExpectColumnValuesToBeInSet(column=rule.name, value_set=[True], mostly=min_rate,
                                            meta={"severity": CRITICAL, "param": "quality.min_audit_pass_rate",
                                                  "rule": rule.summary})
            for rule in RULES]
    return Suite("teacher_audit", frame, ["query_id"], exps)


def split_suites(frame: pd.DataFrame, require_valid: bool, min_train: int, query_ids: list[str]) -> list[Suite]:
    import great_expectations.expectations as gxe

    c = {"severity": CRITICAL}
    exps = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=c),
        *[gxe.ExpectColumnValuesToNotBeNull(column=col, meta=c)
          for col in ("query_id", "user_id", "kind", "teacher_model", "split")],
        gxe.ExpectColumnValuesToBeUnique(column="query_id", meta=c),
        gxe.ExpectColumnValuesToBeInTypeList(column="user_id", type_list=INT_TYPES, meta=c),
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(QUERY_KINDS), meta=c),
        gxe.ExpectColumnValuesToBeInSet(column="roles", value_set=["system,user,assistant"], meta=c),
        gxe.ExpectColumnValuesToBeInSet(column="answer_valid", value_set=[True], meta=c),
        gxe.ExpectColumnValuesToBeBetween(column="user_n_splits", min_value=1, max_value=1,
                                          meta={**c, "rule": "no user in two splits"}),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "test"], meta=c),
        *_slice_expectations(frame),
    ]
    if require_valid:
        exps.append(gxe.ExpectColumnValuesToBeInSet(column="answer_adherent", value_set=[True], meta=c))
    frame, exp = _references(frame, "query_id", query_ids, "queries.query_id")
    exps.append(exp)
    train = frame[frame["split"] == "train"] if not frame.empty else frame
    train_exps = [gxe.ExpectTableRowCountToBeBetween(min_value=min_train, meta={**c, "param": "quality.min_train_examples"})]
    return [Suite("splits", frame, ["query_id", "user_id", "split"], exps),
            Suite("train_split", train.reset_index(drop=True), ["query_id"], train_exps)]


# --------------------------------------------------------------------------- running


def _jsonable(value):
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


def _describe_failure(suite: Suite, cfg: dict, result: dict, exception: str | None) -> tuple[str, list]:
    kwargs = cfg["kwargs"]
    column = kwargs.get("column") or kwargs.get("column_list")
    examples = _jsonable(result.get("partial_unexpected_index_list") or [])[:MAX_EXAMPLES]
    # record ids first, then the offending value
    examples = [{**{k: ex[k] for k in suite.id_columns if k in ex}, **ex} for ex in examples]
    detail = ""
    if examples:
        shown = "; ".join(", ".join(f"{k}={v}" for k, v in ex.items()) for ex in examples)
        detail = f": {result.get('unexpected_count', len(examples))} unexpected, e.g. {shown}"
    elif "observed_value" in result:
        detail = f": observed {_jsonable(result['observed_value'])!r}"
    elif exception:
        detail = f": error {exception}"
    elif isinstance(column, str) and column in suite.frame and suite.frame[column].dtype == object:
        detail = ": the column holds values of the wrong type (see its type expectation)"
    limits = {k: kwargs[k] for k in ("min_value", "max_value", "mostly") if kwargs.get(k) is not None}
    limits_text = f" {limits}" if limits else ""
    fk = cfg.get("meta", {}).get("foreign_key")
    fk_text = f" (references {fk})" if fk else ""
    param = cfg.get("meta", {}).get("param")
    param_text = f" (set by {param})" if param else ""
    msg = f"suite {suite.name}: {cfg['type']}(column={column}){limits_text}{fk_text}{param_text} failed{detail}"
    return msg, examples


def _result(res) -> dict:
    exception = (res.exception_info or {}).get("exception_message") if res.exception_info else None
    return {"config": res.expectation_config.to_json_dict(), "success": bool(res.success),
            "result": dict(res.result or {}), "exception": exception}


def _merge_batch(merged: dict, frame: pd.DataFrame, results: list[dict]) -> None:
    """Fold one batch's results into ``merged`` (by expectation id): unexpected counts add, the first
    examples are kept, a mean is weighted by its batch's values, other aggregates must pass in every batch."""
    for r in results:
        acc = merged.setdefault(r["config"]["id"], {"config": r["config"], "success": True, "result": {},
                                                    "exception": None, "aggregates_ok": True, "mean": [0.0, 0]})
        acc["exception"] = acc["exception"] or r["exception"]
        res, out = r["result"], acc["result"]
        if "unexpected_count" in res:
            for k in ("element_count", "missing_count", "unexpected_count"):
                out[k] = out.get(k, 0) + int(res.get(k) or 0)
            examples = out.get("partial_unexpected_index_list", []) + (res.get("partial_unexpected_index_list") or [])
            out["partial_unexpected_index_list"] = examples[:MAX_EXAMPLES]
        elif r["config"]["type"] == "expect_column_mean_to_be_between":
            if res.get("observed_value") is not None:
                n = int(frame[r["config"]["kwargs"]["column"]].notna().sum())
                acc["mean"][0] += float(res["observed_value"]) * n
                acc["mean"][1] += n
        else:
            if "observed_value" not in out or (acc["aggregates_ok"] and not r["success"]):
                out.update({k: v for k, v in res.items() if k in ("observed_value", "details")})
            acc["aggregates_ok"] &= r["success"]


def _finish_batches(suite: Suite, merged: dict) -> list[dict]:
    out = []
    for acc in merged.values():
        cfg, res = acc["config"], acc["result"]
        kwargs = cfg["kwargs"]
        success = acc["aggregates_ok"]
        if cfg["type"] in UNIQUE_TYPES:  # per batch GX only sees duplicates inside a batch
            columns = kwargs.get("column_list") or [kwargs["column"]]
            res = whole_table_unique(suite.source, columns, [c for c in suite.id_columns if c not in columns])
        if cfg["type"] == "expect_column_mean_to_be_between":
            total, n = acc["mean"]
            mean = total / n if n else None
            res = {"observed_value": mean}
            success = mean is not None and (kwargs.get("min_value") is None or mean >= kwargs["min_value"]) and (
                kwargs.get("max_value") is None or mean <= kwargs["max_value"])
        elif "unexpected_count" in res:
            considered = res["element_count"] - res.get("missing_count", 0)
            mostly = kwargs.get("mostly") if kwargs.get("mostly") is not None else 1.0
            success = success and (res["unexpected_count"] == 0 if mostly >= 1 else
                                   considered == 0 or (considered - res["unexpected_count"]) / considered >= mostly)
        out.append({"config": cfg, "success": bool(success and not acc["exception"]), "result": res,
                    "exception": acc["exception"]})
    return out


def _validate(vd, suite: Suite, result_format: dict) -> tuple[bool, list[dict], int]:
    """(suite passed, one result per expectation, batches): the whole frame in one go, or a big table
    batch by batch."""
    if not suite.batched:
        outcome = vd.run(batch_parameters={"dataframe": suite.frame}, result_format=result_format)
        return bool(outcome.success), [_result(res) for res in outcome.results], 1
    # A clean batch needs no counts: a pass/fail run is ~40% cheaper; a failing batch is rerun for its
    # counts and examples. Means and "mostly" expectations need every batch's figures.
    quick = not any(getattr(e, "mostly", None) not in (None, 1)
                    or e.expectation_type == "expect_column_mean_to_be_between" for e in suite.expectations)
    merged: dict[str, dict] = {}
    batches = 0
    for batch in suite.source.batches():
        frame = suite.prepare(batch)
        batches += 1
        if quick:
            outcome = vd.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "BOOLEAN_ONLY"})
            if outcome.success:
                _merge_batch(merged, frame, [_result(res) for res in outcome.results])
                continue
        outcome = vd.run(batch_parameters={"dataframe": frame}, result_format=result_format)
        _merge_batch(merged, frame, [_result(res) for res in outcome.results])
    results = _finish_batches(suite, merged)
    return all(r["success"] for r in results), results, batches


def run_suites(suites: list[Suite], gx_dir: Path, docs_dir: Path) -> dict:
    """Validate every suite in one context; build Data Docs; return results and gate items."""
    import great_expectations as gx

    gx_dir, docs_dir = gx_dir.resolve(), docs_dir.resolve()  # GX's site store needs absolute paths
    for path in (gx_dir, docs_dir):
        shutil.rmtree(path, ignore_errors=True)  # a fresh project per run: docs show this run only
    # Ephemeral: a file context rewrites its YAML on every add (seconds per run); the suites are
    # exported to gx_dir as JSON below and the results live in validation.json and Data Docs.
    context = gx.get_context(mode="ephemeral")
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    for site in list(context.get_config().data_docs_sites or {}):
        context.delete_data_docs_site(site)
    context.add_data_docs_site(site_name="fitsense", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    source = context.data_sources.add_pandas("fitsense")
    results, failures, warnings = [], [], []
    seconds: dict[str, float] = {}  # per suite: a run report, kept out of validation.json
    for suite in suites:
        started = time.perf_counter()
        asset = source.add_dataframe_asset(suite.name)
        batch = asset.add_batch_definition_whole_dataframe("all")
        gx_suite = context.suites.add(gx.ExpectationSuite(name=suite.name, expectations=suite.expectations))
        vd = context.validation_definitions.add(gx.ValidationDefinition(name=suite.name, data=batch, suite=gx_suite))
        id_cols = [c for c in suite.id_columns if c in suite.frame.columns]
        success, outcome, batches = _validate(vd, suite, {
            "result_format": "SUMMARY", "unexpected_index_column_names": id_cols,
            "partial_unexpected_count": MAX_EXAMPLES})
        entry = {"suite": suite.name, "success": success,
                 "rows": suite.source.num_rows if suite.batched else len(suite.frame),
                 "evaluated": len(outcome), "failed": []}
        if suite.batched:  # every row checked, in batches; key uniqueness over the whole table
            entry["batches"] = batches
        for res in outcome:
            if res["success"]:
                continue
            cfg = res["config"]
            severity = (cfg.get("meta") or {}).get("severity", CRITICAL)
            msg, examples = _describe_failure(suite, cfg, res["result"], res["exception"])
            entry["failed"].append({"expectation": cfg["type"], "column": cfg["kwargs"].get("column"),
                                    "severity": severity, "message": msg, "examples": examples})
            (failures if severity == CRITICAL else warnings).append(msg)
        results.append(entry)
        write_json(gx_dir / "expectations" / f"{suite.name}.json", gx_suite.to_json_dict())
        seconds[suite.name] = time.perf_counter() - started
    context.build_data_docs()
    index = docs_dir / "index.html"
    return {"suites": results, "failures": failures, "warnings": warnings,
            "data_docs": str(index) if index.exists() else None, "seconds": seconds}
