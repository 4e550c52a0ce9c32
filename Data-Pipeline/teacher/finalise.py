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


def write_records(path: Path, records: list[TeacherRecord], lines: dict[str, str] | None = None) -> None:
    """Atomically write records as JSONL (pydantic's own serializer: ~3x faster than ``write_jsonl``);
    ``lines`` holds records already serialized (journaled) by query_id, written as they are."""
    lines = lines or {}
    with atomic_open(path) as fh:
        fh.write("".join([(lines.get(r.query_id) or r.model_dump_json(exclude_none=True)) + "\n"
                          for r in records]))


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def build_summary(records: list[TeacherRecord], counters: dict, wall_s: float, cfg) -> dict:
    by_kind = {k: {"ok": 0, "failed": 0} for k in QUERY_KINDS}
    for r in records:
        by_kind[r.kind][r.status] += 1
    reasons = Counter(violation_code(r.failure_reason) for r in records if r.failure_reason)
    latencies = [r.latency_s for r in records if not r.cache_hit and r.latency_s is not None]
    return {
        "provider": cfg.provider,
        "teacher_model": cfg.model,
        "queries": len(records),
        "ok": sum(r.status == "ok" for r in records),
        "failed": sum(r.status == "failed" for r in records),
        "by_kind": by_kind,
        "failure_reasons": dict(sorted(reasons.items())),
        "referrals": sum(r.referral_required for r in records),
        "repairs": sum(r.repairs for r in records),
        "latency_s": {"p50": _percentile(latencies, 50), "p95": _percentile(latencies, 95)},
        "tokens": {"prompt": sum(r.prompt_tokens for r in records),
                   "completion": sum(r.completion_tokens for r in records)},
        "cost_usd": round(sum(r.cost_usd for r in records), 6),  # what the answers cost, cached ones included
        "paid_usd": round(counters.get("paid_usd", 0.0), 6),  # what this run paid
        "requests": counters.get("requests", 0),
        "retries": counters.get("retries", 0),
        "cache_hits": counters.get("cache_hits", 0),
        "cached_records": sum(r.cache_hit for r in records),
        "resumed": counters.get("resumed", 0),
        "budget_exhausted": reasons.get("budget_exhausted", 0),
        "wall_s": round(wall_s, 3),
    }


def finalise(ctx: RunContext, records: list[TeacherRecord], counters: dict, wall_s: float,
              done_files: list[Path], lines: dict[str, str] | None = None) -> dict:
    cfg = ctx.params.teacher
    stage_dir = ctx.stage_dir(STAGE)
    out = stage_dir / RECORDS
    write_records(out, records, lines)
    summary = build_summary(records, counters, wall_s, cfg)
    write_json(stage_dir / SUMMARY, summary)
    for path in done_files:  # records.jsonl now holds them; the next run recaptures from the cache
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only when no other (shard) journal is left
    log.info("teacher: %d ok, %d failed (%s), %d cache hits, %d requests, $%.4f paid, %.1fs",
             summary["ok"], summary["failed"], summary["failure_reasons"], summary["cache_hits"],
             summary["requests"], summary["paid_usd"], wall_s)
    write_manifest(ctx, STAGE, {"records": out, "summary": stage_dir / SUMMARY},
                   rows={"records": len(records), "ok": summary["ok"], "failed": summary["failed"]},
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
    return finalise(ctx, records, dict(counters), time.perf_counter() - started, [])
