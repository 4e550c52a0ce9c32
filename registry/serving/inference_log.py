"""The inference log: one row per served request, in a SQL table (SQLite by default, or PostgreSQL).

The table (``inference_log``) is declared here with SQLAlchemy and created on
first use; it lives beside the project's tables (``database/schema.sql``) when
``serving.log_url`` points at the project database. ``export_queries`` turns
logged requests, fallbacks first, into query records for the next round of
teacher capture: the requests the student could not handle are the ones worth
distilling next.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    select,
)

from fitsense.config import Params
from fitsense.records import QueryConstraints
from fitsense.runs import RunContext, write_jsonl, write_manifest

DEFAULT_LOG_NAME = "inference.sqlite"

metadata = MetaData()
INFERENCE_LOG = Table(
    "inference_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("request_hash", String(64), nullable=False, index=True),  # sha256 of messages + constraints
    Column("user_text", Text, nullable=False),
    Column("messages", JSON, nullable=False),
    Column("constraints", JSON),  # a QueryConstraints dict, or null when the client sent none
    Column("user_id", String(256)),  # the request's ``user`` (fitsense ask --user-id sends the synthetic user's id)
    Column("model_version", String(64)),  # fitsense-coach-student/<version>
    Column("screen_decision", String(16), nullable=False),  # pass | refer
    Column("valid", Boolean),  # the student's answer parsed as a plan
    Column("violations", JSON),  # the student's constraint violations
    Column("fallback", Boolean, nullable=False),  # the answer came from the teacher
    Column("status", Integer, nullable=False),  # the HTTP status returned
    Column("latency_ms", Float, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
)


def default_log_url(params: Params) -> str:
    return params.serving.log_url or f"sqlite:///{Path(params.run.artifacts_dir) / DEFAULT_LOG_NAME}"


def request_hash(messages: list[dict], constraints: QueryConstraints | None) -> str:
    blob = json.dumps({"messages": [[m["role"], m["content"]] for m in messages],
                       "constraints": constraints.model_dump() if constraints else None},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class LogRow:
    messages: list[dict]
    constraints: QueryConstraints | None
    user: str | None
    model_version: str | None
    screen_decision: str
    valid: bool | None
    violations: list[str] | None
    fallback: bool
    status: int
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int

    def values(self) -> dict:
        return {
            "created_at": datetime.now(timezone.utc),
            "request_hash": request_hash(self.messages, self.constraints),
            "user_text": "\n".join(m["content"] for m in self.messages if m["role"] == "user"),
            "messages": self.messages,
            "constraints": self.constraints.model_dump() if self.constraints else None,
            "user_id": self.user,
            **{k: getattr(self, k) for k in ("model_version", "screen_decision", "valid", "violations", "fallback",
                                             "status", "latency_ms", "prompt_tokens", "completion_tokens")},
        }


class InferenceLog:
    def __init__(self, url: str):
        from fitsense.data.sqlstore import make_engine

        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(url)
        metadata.create_all(self.engine, checkfirst=True)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Columns added since a log's table was created (``create_all`` leaves an existing table as it is)."""
        from sqlalchemy import inspect, text

        have = {c["name"] for c in inspect(self.engine).get_columns(INFERENCE_LOG.name)}
        missing = [c for c in INFERENCE_LOG.columns if c.name not in have]
        with self.engine.begin() as conn:
            for column in missing:
                conn.execute(text(f"ALTER TABLE {INFERENCE_LOG.name} ADD COLUMN {column.name} "
                                  f"{column.type.compile(self.engine.dialect)}"))

    def write(self, row: LogRow) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(INFERENCE_LOG).values(**row.values()))

    def rows(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(INFERENCE_LOG).order_by(INFERENCE_LOG.c.id))]

    def close(self) -> None:
        self.engine.dispose()


def export_queries(url: str, out_path: str | Path, limit: int | None = None) -> dict:
    """Write logged requests that carried constraints as query records (fallbacks first, one per request hash).

    Each record has what capture sends a remote teacher and checks its answer
    against (``query_id``, ``user_id``, ``kind``, ``messages``, ``constraints``;
    ``fitsense.data.teacher.loading.QueryHead``), so ``teacher capture`` with an
    OpenAI-compatible teacher can answer them. The messages are the ones the
    student was asked (system prompt included; ``fitsense ask`` adds the user's
    profile and constraint lines to the question), so the teacher's prompt is
    the student's; the constraints are the ones the request sent, and the user
    id the request's ``user`` when it is a synthetic user's number (else 0).
    Requests without constraints are skipped: a teacher answer to them could
    not be checked.
    """
    log = InferenceLog(url)
    try:
        rows = log.rows()
    finally:
        log.close()
    # Fallbacks first, then answers that broke a constraint or did not parse, then the rest; oldest first within.
    rank = {True: 0, False: 1}
    rows.sort(key=lambda r: (rank[bool(r["fallback"])], r["valid"] is not False and not r["violations"], r["id"]))
    seen, records = set(), []
    for r in rows:
        if r["constraints"] is None or r["request_hash"] in seen:
            continue
        seen.add(r["request_hash"])
        constraints = QueryConstraints.model_validate(r["constraints"])
        user = r["user_id"]
        records.append({
            "query_id": f"inf-{r['request_hash'][:16]}",
            "user_id": int(user) if user and user.isdigit() else 0,
            "kind": "safety_adjustment" if r["screen_decision"] == "refer" else "plan_creation",
            "messages": r["messages"],
            "constraints": constraints.model_dump(),
            "source": {"inference_log_id": r["id"], "fallback": bool(r["fallback"]),
                       "model_version": r["model_version"], "user": user},
        })
        if limit is not None and len(records) >= limit:
            break
    write_jsonl(out_path, records)
    return {"queries": len(records), "fallbacks": sum(r["source"]["fallback"] for r in records),
            "path": str(out_path), "logged_requests": len(rows)}


def export_to_run(ctx: RunContext, url: str, limit: int | None = None) -> dict:
    """``export_queries`` into ``ctx``'s ``queries/queries.jsonl``, so ``fitsense teacher capture --run-id`` reads them."""
    path = ctx.stage_dir("queries") / "queries.jsonl"
    summary = export_queries(url, path, limit)
    write_manifest(ctx, "queries", {"queries": path}, rows={"queries": summary["queries"]},
                   extra={"source": "inference_log", "fallbacks": summary["fallbacks"]})
    return summary
