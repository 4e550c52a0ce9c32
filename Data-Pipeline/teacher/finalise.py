"""Finalisation: the records file in query order, the summary and the manifest; shard merging."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from fitsense.constraints import violation_code
from fitsense.data.teacher.loading import QueryHead, few_collections, read_queries
from fitsense.errors import InputDataError, MissingUpstreamError, StageError
from fitsense.records import QUERY_KINDS, TeacherRecord
from fitsense.runs import (
    RunContext,
    atomic_open,
    read_json,
    read_jsonl,
    write_json,
    write_manifest,
)

log = logging.getLogger(__name__)

STAGE = "teacher"
RECORDS = "records.jsonl"
SUMMARY = "summary.json"


def shard_name(shard_index: int, num_shards: int) -> str:
    return f"records.shard-{shard_index}-of-{num_shards}.jsonl"


def record_lines(records: list[TeacherRecord], lines: dict[str, str] | None = None) -> str:
    """Records as JSONL text (pydantic's own serializer: ~3x faster than ``write_jsonl``); ``lines`` holds
    records already serialized (journaled) by query_id, taken from it as they are written."""
    lines = lines if lines is not None else {}
    return "".join([(lines.pop(r.query_id, None) or r.model_dump_json(exclude_none=True)) + "\n" for r in records])


def write_records(path: Path, records: list[TeacherRecord], lines: dict[str, str] | None = None) -> None:
    """Atomically write records as JSONL (see ``record_lines``)."""
    with atomic_open(path) as fh:
        fh.write(record_lines(records, lines))


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


class SummaryTotals:
    """The summary's figures, added up a batch of records at a time (records need not be held)."""

    def __init__(self) -> None:
        self.by_kind = {k: {"ok": 0, "failed": 0} for k in QUERY_KINDS}
        self.reasons: Counter = Counter()
        self.latencies: list[float] = []
        self.n = self.referrals = self.repairs = self.prompt = self.completion = self.cached = 0
        self.cost = 0.0

    def add(self, records: list[TeacherRecord]) -> "SummaryTotals":
        for r in records:
            self.by_kind[r.kind][r.status] += 1
            if r.failure_reason:
                self.reasons[violation_code(r.failure_reason)] += 1
            if not r.cache_hit and r.latency_s is not None:
                self.latencies.append(r.latency_s)
            self.referrals += r.referral_required
            self.repairs += r.repairs
            self.prompt += r.prompt_tokens
            self.completion += r.completion_tokens
            self.cost += r.cost_usd
            self.cached += r.cache_hit
        self.n += len(records)
        return self

    def summary(self, counters: dict, wall_s: float, cfg) -> dict:
        ok = sum(v["ok"] for v in self.by_kind.values())
        return {
            "provider": cfg.provider,
            "teacher_model": cfg.model,
            "queries": self.n,
            "ok": ok,
            "failed": self.n - ok,
            "by_kind": self.by_kind,
            "failure_reasons": dict(sorted(self.reasons.items())),
            "referrals": self.referrals,
            "repairs": self.repairs,
            "latency_s": {"p50": _percentile(self.latencies, 50), "p95": _percentile(self.latencies, 95)},
            "tokens": {"prompt": self.prompt, "completion": self.completion},
            "cost_usd": round(self.cost, 6),  # what the answers cost, cached ones included
            "paid_usd": round(counters.get("paid_usd", 0.0), 6),  # what this run paid
            "requests": counters.get("requests", 0),
            "retries": counters.get("retries", 0),
            "cache_hits": counters.get("cache_hits", 0),
            "cached_records": self.cached,
            "resumed": counters.get("resumed", 0),
            "budget_exhausted": self.reasons.get("budget_exhausted", 0),
            "wall_s": round(wall_s, 3),
        }


def build_summary(records: list[TeacherRecord], counters: dict, wall_s: float, cfg) -> dict:
    return SummaryTotals().add(records).summary(counters, wall_s, cfg)


def finalise(ctx: RunContext, out: Path, totals: SummaryTotals, counters: dict, wall_s: float,
             done_files: list[Path]) -> dict:
    """Summary and manifest for the records file ``out`` (already written); the journals are then removed."""
    cfg = ctx.params.teacher
    stage_dir = ctx.stage_dir(STAGE)
    summary = totals.summary(counters, wall_s, cfg)
    write_json(stage_dir / SUMMARY, summary)
    for path in done_files:  # records.jsonl now holds them; the next run recaptures from the cache
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only when no other (shard) journal is left
    log.info("teacher: %d ok, %d failed (%s), %d cache hits, %d requests, $%.4f paid, %.1fs",
             summary["ok"], summary["failed"], summary["failure_reasons"], summary["cache_hits"],
             summary["requests"], summary["paid_usd"], wall_s)
    write_manifest(ctx, STAGE, {"records": out, "summary": stage_dir / SUMMARY},
                   rows={"records": totals.n, "ok": summary["ok"], "failed": summary["failed"]},
                   extra={"teacher_model": cfg.model, "provider": cfg.provider})
    return summary


def merge_teacher_shards(ctx: RunContext, num_shards: int) -> dict:
    """Merge ``records.shard-<i>-of-<n>.jsonl`` into ``records.jsonl`` (query order), summary, manifest."""
    with few_collections():
        return _merge(ctx, num_shards)


def _merge(ctx: RunContext, num_shards: int) -> dict:
    started = time.perf_counter()
    stage_dir = ctx.stage_dir(STAGE)
    queries = read_queries(ctx.require("queries", "queries.jsonl"), QueryHead)
    by_id: dict[str, TeacherRecord] = {}
    counters: Counter = Counter()
    shard_files = []
    for i in range(num_shards):
        path = stage_dir / shard_name(i, num_shards)
        if not path.exists():
            raise MissingUpstreamError(f"{path} is missing: teacher shard {i} of {num_shards} has not finished")
        shard_files.append(path)
        for rec in read_jsonl(path, TeacherRecord):
            if rec.query_id in by_id:
                raise InputDataError(f"{path}: query {rec.query_id} appears in more than one shard")
            by_id[rec.query_id] = rec
        summary_path = stage_dir / f"summary.shard-{i}-of-{num_shards}.json"
        if summary_path.exists():
            shard_summary = read_json(summary_path)
            for key in ("requests", "retries", "cache_hits", "paid_usd", "resumed"):
                counters[key] += shard_summary.get(key, 0)
    missing = [q.query_id for q in queries if q.query_id not in by_id]
    if missing:
        raise StageError(f"teacher shards miss {len(missing)} queries (first: {missing[:3]}); "
                         f"were they run with the same queries and num_shards={num_shards}?")
    records = [by_id[q.query_id] for q in queries]
    out = stage_dir / RECORDS
    write_records(out, records)
    return finalise(ctx, out, SummaryTotals().add(records), dict(counters), time.perf_counter() - started, [])
