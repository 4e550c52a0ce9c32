"""Load every artifact the quality stage checks into flat pandas frames.

Records are read as raw JSON (not through the Pydantic models), so a wrong
type or an out-of-range value reaches the Great Expectations suites and fails
there with the record named, instead of stopping the load. Helper columns
(``answer_valid``, ``user_n_splits``, plan sizes ...) turn cross-field and
cross-file rules into plain column expectations.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pandas as pd
from pydantic import ValidationError

from fitsense.audit import RULE_NAMES, audit_answer, audit_passed
from fitsense.constraints import check_answer
from fitsense.data.quality.parquet import ParquetTable
from fitsense.plan import AnswerParseError, CoachAnswer, parse_coach_answer
from fitsense.records import SLICE_TAGS, CoachingQuery, QueryConstraints
from fitsense.runs import RunContext, iter_jsonl

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CHUNK_ROWS = 10_000  # records parsed per frame chunk: the raw JSON of a whole file is never held at once


@dataclass
class Tables:
    synthetic: dict[str, ParquetTable] = field(default_factory=dict)  # read on demand: big tables never whole
    queries: pd.DataFrame | None = None
    teacher: pd.DataFrame | None = None
    splits: pd.DataFrame | None = None
    audit: pd.DataFrame | None = None  # one row per answered teacher record: each coaching rule's verdict
    sources: dict[str, str] = field(default_factory=dict)  # artifact name -> file path

    def artifacts(self) -> dict[str, pd.DataFrame | ParquetTable]:
        """Every frame by artifact name (``synthetic.users``, ``queries``, ``teacher``, ``splits``)."""
        out = {f"synthetic.{k}": v for k, v in self.synthetic.items()}
        for name in ("queries", "teacher", "splits"):
            frame = getattr(self, name)
            if frame is not None:
                out[name] = frame
        return out


def _plan_size(answer: CoachAnswer | None) -> tuple[int, int, int]:
    if answer is None:
        return 0, 0, 0
    exercises = [ex for d in answer.days for ex in d.exercises]
    return len(answer.days), len(exercises), sum(ex.sets for ex in exercises)


def queries_frame(rows: list[dict]) -> pd.DataFrame:
    out = []
    for r in rows:
        msgs = r.get("messages") or []
        c = r.get("constraints") or {}
        out.append({
            "query_id": r.get("query_id"),
            "user_id": r.get("user_id"),
            "kind": r.get("kind"),
            **{f"slice_{t}": (r.get("slices") or {}).get(t) for t in SLICE_TAGS},
            **{k: c.get(k) for k in ("days_per_week", "session_minutes", "max_exercises_per_day", "rir_floor",
                                     "referral_required")},
            "n_available_equipment": len(c.get("available_equipment") or []),
            "n_avoid_exercises": len(c.get("avoid_exercises") or []),
            "roles": ",".join(str(m.get("role")) for m in msgs if isinstance(m, dict)),
            "prompt_chars": sum(len(str(m.get("content", ""))) for m in msgs if isinstance(m, dict)
                                and m.get("role") == "user"),
        })
    return pd.DataFrame(out)


def record_answer(record: dict) -> CoachAnswer | None:
    """A teacher record's answer validated, or None (the teacher suite reports an invalid one)."""
    answer = record.get("answer")
    try:
        return CoachAnswer.model_validate(answer) if isinstance(answer, dict) else None
    except ValidationError:
        return None


def teacher_frame(rows: list[dict], answers: list[CoachAnswer | None]) -> pd.DataFrame:
    """One row per teacher record, given ``record_answer`` of each."""
    out = []
    for r, parsed in zip(rows, answers):
        n_days, n_ex, n_sets = _plan_size(parsed)
        status = r.get("status")
        out.append({
            **{k: r.get(k) for k in ("query_id", "user_id", "kind", "teacher_model", "status", "failure_reason",
                                     "schema_valid", "referral_required", "attempts", "repairs", "latency_s",
                                     "prompt_tokens", "completion_tokens", "cost_usd", "cache_hit")},
            "n_violations": len(r.get("constraint_violations") or []),
            "n_safety_flags": len(r.get("safety_flags") or []),
            "answer_chars": len(r.get("response_text") or ""),
            # status "ok" must come with a schema-valid answer, "failed" with a reason and no answer
            "status_consistent": (status == "ok" and parsed is not None)
            or (status == "failed" and r.get("answer") is None and bool(r.get("failure_reason"))),
            "answer_referral": bool(parsed and parsed.safety.referral_required),
            "n_days": n_days,
            "n_exercises": n_ex,
            "n_sets": n_sets,
        })
    return pd.DataFrame(out)


def _query_lookup(query_rows: Iterable[dict]) -> Callable[[object], CoachingQuery | None]:
    """The validated query of an id, reading ``query_rows`` only as far as needed. Teacher records come
    in (nearly) the queries' order, so the queries read ahead and not yet asked for stay few. A query is
    let go once asked for: a duplicated teacher record (a teacher-suite failure) is audited once."""
    rows = iter(query_rows)
    ahead: dict = {}  # read, not yet asked for: query id -> query (None: invalid, the query suite reports it)

    def lookup(query_id):
        while query_id not in ahead:
            row = next(rows, None)
            if row is None:
                return None
            try:
                query = CoachingQuery.model_validate(row)
            except ValidationError:
                query = None
            if ahead.get(row.get("query_id")) is None:  # an invalid duplicate does not hide a valid one
                ahead[row.get("query_id")] = query
        return ahead.pop(query_id)

    return lookup


AUDIT_COLUMNS = ["query_id", "kind", *RULE_NAMES, "audit_passed", "audit_failure"]


def audit_rows(pairs: Iterable[tuple[dict, CoachAnswer | None]], query_of: Callable) -> Iterator[dict]:
    """The audit row of each (teacher record, its ``record_answer``) whose answer is ok and whose query
    ``query_of`` (a ``_query_lookup``) finds."""
    for r, parsed in pairs:
        query = query_of(r.get("query_id"))
        answer = parsed if r.get("status") == "ok" else None
        if answer is None or query is None:
            continue
        results = audit_answer(answer, query)
        failed = next((f"{x.rule}: {x.reason}" for x in results if x.passed is False), None)
        yield {"query_id": query.query_id, "kind": query.kind, **{x.rule: x.passed for x in results},
               "audit_passed": audit_passed(results), "audit_failure": failed}


def audit_frame(teacher_rows: Iterable[dict], query_rows: Iterable[dict]) -> pd.DataFrame:
    """The coaching-rule audit of every ok teacher answer: one column per rule (True, False, or None
    where the rule does not apply), the first failure's reason, and ``audit_passed``."""
    pairs = ((r, record_answer(r)) for r in teacher_rows)
    return pd.DataFrame(list(audit_rows(pairs, _query_lookup(query_rows))), columns=AUDIT_COLUMNS)


def _check_split_answer(messages, constraints) -> tuple[bool, bool, int]:
    """(answer parses as a canonical CoachAnswer, answer honours the constraints, answer chars)."""
    assistant = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if not assistant:
        return False, False, 0
    text = str(assistant[-1].get("content", ""))
    try:
        answer = parse_coach_answer(text)
    except AnswerParseError:
        return False, False, len(text)
    try:
        adherent = not check_answer(answer, QueryConstraints.model_validate(constraints))
    except ValidationError:
        adherent = False
    return answer.to_json() == text, adherent, len(text)


def splits_frame(by_split: dict[str, Iterable[dict]], leakage: bool = True) -> pd.DataFrame:
    out = []
    for split, rows in by_split.items():
        for r in rows:
            msgs = r.get("messages") or []
            valid, adherent, chars = _check_split_answer(msgs, r.get("constraints"))
            out.append({
                "split": split,
                "query_id": r.get("query_id"),
                "user_id": r.get("user_id"),
                "kind": r.get("kind"),
                "teacher_model": r.get("teacher_model"),
                **{f"slice_{t}": (r.get("slices") or {}).get(t) for t in SLICE_TAGS},
                "roles": ",".join(str(m.get("role")) for m in msgs if isinstance(m, dict)),
                "prompt_chars": sum(len(str(m.get("content", ""))) for m in msgs if isinstance(m, dict)
                                    and m.get("role") == "user"),
                "answer_chars": chars,
                "answer_valid": valid,
                "answer_adherent": adherent,
            })
    frame = pd.DataFrame(out)
    return with_user_n_splits(frame) if leakage else frame


def with_user_n_splits(frame: pd.DataFrame) -> pd.DataFrame:
    if not frame.empty:
        # a user in more than one split leaks between training and evaluation
        frame["user_n_splits"] = frame.groupby("user_id", dropna=False)["split"].transform("nunique")
    return frame


def chunked_frame(path: Path, build: Callable[[list[dict]], pd.DataFrame]) -> pd.DataFrame:
    """``build`` over the file's records ``CHUNK_ROWS`` at a time, concatenated."""
    records = iter_jsonl(path)
    chunks = []
    while batch := list(itertools.islice(records, CHUNK_ROWS)):
        chunks.append(build(batch))
    if not chunks:
        return build([])
    return pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]


def _teacher_and_audit_frames(t_path: Path, q_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The teacher frame and the audit frame from one read of the records, each answer validated once."""
    query_of = _query_lookup(iter_jsonl(q_path))
    audit: list[dict] = []

    def build(batch: list[dict]) -> pd.DataFrame:
        answers = [record_answer(r) for r in batch]
        audit.extend(audit_rows(zip(batch, answers), query_of))
        return teacher_frame(batch, answers)

    return chunked_frame(t_path, build), pd.DataFrame(audit, columns=AUDIT_COLUMNS)


def load_tables(ctx: RunContext, schema_tables: list[str]) -> Tables:
    tables = Tables()
    run = ctx.run_dir
    synth = run / "synthetic"
    if (synth / "manifest.json").exists() or any(synth.glob("*.parquet")):
        for name in schema_tables:
            path = synth / f"{name}.parquet"
            if path.exists():
                tables.synthetic[name] = ParquetTable(path)
                tables.sources[f"synthetic.{name}"] = str(path)

    q_path = ctx.require("queries", "queries.jsonl")
    tables.queries = chunked_frame(q_path, queries_frame)
    tables.sources["queries"] = str(q_path)
    t_path = ctx.require("teacher", "records.jsonl")
    tables.teacher, tables.audit = _teacher_and_audit_frames(t_path, q_path)
    tables.sources["teacher"] = str(t_path)
    parts = []
    for s in SPLITS:
        path: Path = ctx.require("dataset", f"{s}.jsonl")
        parts.append(chunked_frame(path, lambda rows, split=s: splits_frame({split: rows}, leakage=False)))
        tables.sources[f"splits.{s}"] = str(path)
    parts = [p for p in parts if not p.empty]
    tables.splits = with_user_n_splits(pd.concat(parts, ignore_index=True) if parts else pd.DataFrame())
    log.info("quality inputs: %d synthetic tables, %d queries, %d teacher records, %d split rows",
             len(tables.synthetic), len(tables.queries), len(tables.teacher), len(tables.splits))
    return tables
