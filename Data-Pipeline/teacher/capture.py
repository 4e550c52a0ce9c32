"""Teacher stage: capture a validated teacher answer (or a failure reason) for every query.

``capture_teacher_responses(ctx)`` reads ``queries/queries.jsonl`` and writes
``teacher/records.jsonl`` (one ``TeacherRecord`` per query, in query order),
``summary.json`` and the manifest.

- Bounded concurrency (``teacher.concurrency`` workers), a token-bucket limiter
  for requests/minute and tokens/minute, retries with exponential backoff and
  full jitter on 429/5xx/timeouts/connection errors (tenacity), honouring
  Retry-After.
- Every completion is cached by sha256(model, messages, generation params) in
  ``teacher.cache_dir``: reruns and resumed runs never pay twice.
- Each answer is parsed (``parse_coach_answer``) and checked
  (``check_answer``); an invalid one gets up to ``teacher.max_repairs`` repair
  turns (the bad answer plus the exact error), then is recorded failed.
- Budget cap (``teacher.budget``): a request is only sent when its worst-case
  cost fits; once the budget is spent the run stops cleanly and the remaining
  queries are recorded failed with reason ``budget_exhausted``.
- Crash safety: finished records are appended (flushed every ``FLUSH_EVERY_S``,
  fsynced every ``FSYNC_EVERY_S``) to a journal under ``teacher/.partial/``; a rerun after
  kill -9 skips journaled queries (a torn last line is dropped) and the final
  ``records.jsonl`` is written atomically in query order. Only final outcomes are
  journaled (answers and invalid-after-repairs); transient failures
  (retries exhausted, budget) are written to ``records.jsonl`` but retried by
  the next run.
- Sharding (Airflow dynamic task mapping): ``shard_index``/``num_shards`` take
  queries with ``index % num_shards == shard_index`` and write
  ``records.shard-<i>-of-<n>.jsonl``; ``merge_teacher_shards`` finalises.

Parts: ``budget`` (the spend cap), ``journal`` (crash-safe progress),
``requests`` (the request loop), ``finalise`` (records, summary, merging).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from fitsense.data.teacher.budget import Budget
from fitsense.data.teacher.cache import ResponseCache
from fitsense.data.teacher.client import make_teacher
from fitsense.data.teacher.finalise import (
    STAGE,
    build_summary,
    finalise,
    merge_teacher_shards,
    shard_name,
    write_records,
)
from fitsense.data.teacher.journal import Journal, journal_path
from fitsense.data.teacher.limiter import RateLimiter
from fitsense.data.teacher.loading import QueryHead, few_collections, read_queries
from fitsense.data.teacher.requests import CaptureSession, loop_factory, run_capture
from fitsense.errors import ConfigError
from fitsense.logs import secret_values
from fitsense.records import CoachingQuery, TeacherRecord
from fitsense.runs import RunContext, write_json

log = logging.getLogger(__name__)

__all__ = ["capture_teacher_responses", "merge_teacher_shards", "RUN_FIELDS"]

# Fields that describe this run rather than the answer (differ between a clean and a resumed run).
RUN_FIELDS = ("latency_s", "attempts", "cache_hit")


def capture_teacher_responses(ctx: RunContext, shard_index: int | None = None, num_shards: int = 1) -> dict:
    """Stage entry (and Airflow shard task): capture teacher records for all queries, or one shard."""
    with few_collections() as freeze:
        return _capture(ctx, shard_index, num_shards, freeze)


def _capture(ctx: RunContext, shard_index: int | None, num_shards: int, freeze: bool) -> dict:
    cfg = ctx.params.teacher
    started = time.perf_counter()
    queries_path = ctx.require("queries", "queries.jsonl")
    queries = read_queries(queries_path, CoachingQuery if cfg.provider == "offline" else QueryHead)
    if freeze:
        gc.freeze()  # the queries live until the end: keep them out of every collection
    shard = None
    if shard_index is not None:
        if not 0 <= shard_index < num_shards:
            raise ConfigError(f"shard_index {shard_index} is outside 0..{num_shards - 1}")
        shard = (shard_index, num_shards)
        queries = [q for i, q in enumerate(queries) if i % num_shards == shard_index]

    journal = Journal(journal_path(ctx, queries_path, shard))
    wanted = {q.query_id for q in queries}
    results: dict[str, TeacherRecord] = {k: v for k, v in journal.done.items() if k in wanted}
    todo = [q for q in queries if q.query_id not in results]
    secrets = secret_values((cfg.api_key_env,))
    capture = CaptureSession(
        teacher=make_teacher(cfg, queries),
        cfg=cfg,
        cache=ResponseCache(cfg.cache_dir) if cfg.provider != "offline" else None,
        limiter=RateLimiter(cfg.requests_per_minute, cfg.tokens_per_minute),
        budget=Budget(cfg.budget.max_usd, cfg.budget.max_requests),
        secrets=secrets,
    )
    capture.counters.resumed = len(results)
    if results:
        log.info("teacher: resuming, %d of %d queries already captured", len(results), len(queries))
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run_capture(capture, todo, journal, results))
    finally:
        journal.close()
        if capture.cache is not None:
            capture.cache.close()

    records = [results[q.query_id] for q in queries]
    counters = capture.counters.__dict__
    stage_dir = ctx.stage_dir(STAGE)
    if shard is not None:
        out = stage_dir / shard_name(*shard)
        write_records(out, records, journal.lines)
        summary = build_summary(records, counters, time.perf_counter() - started, cfg)
        write_json(stage_dir / f"summary.shard-{shard[0]}-of-{shard[1]}.json", summary)
        journal.path.unlink(missing_ok=True)
        log.info("teacher shard %d/%d: %d ok, %d failed", shard[0], shard[1], summary["ok"], summary["failed"])
        return summary
    return finalise(ctx, records, counters, time.perf_counter() - started, [journal.path], journal.lines)
