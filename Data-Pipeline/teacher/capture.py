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
- Streaming: queries are read, captured and their records written ``CHUNK``
  at a time (memory holds a chunk, not the run). With the offline expert and
  at least ``PARALLEL_FROM`` queries, forked workers (one per CPU) answer the
  next chunk while this one goes through the same capture path (parsing,
  checks, records, journal) as a remote teacher's answers.
- Sharding (Airflow dynamic task mapping): ``shard_index``/``num_shards`` take
  queries with ``index % num_shards == shard_index`` and write
  ``records.shard-<i>-of-<n>.jsonl``; ``merge_teacher_shards`` finalises.

Parts: ``budget`` (the spend cap), ``journal`` (crash-safe progress),
``requests`` (the request loop), ``finalise`` (records, summary, merging).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator

from fitsense.data.teacher.budget import Budget
from fitsense.data.teacher.cache import ResponseCache
from fitsense.data.teacher.client import make_teacher
from fitsense.data.teacher.finalise import (
    RECORDS,
    STAGE,
    SummaryTotals,
    finalise,
    merge_teacher_shards,
    record_lines,
    shard_name,
)
from fitsense.data.teacher.journal import Journal, journal_path
from fitsense.data.teacher.limiter import RateLimiter
from fitsense.data.teacher.loading import QueryHead, few_collections, iter_queries
from fitsense.data.teacher.requests import CaptureSession, loop_factory, run_capture
from fitsense.errors import ConfigError
from fitsense.logs import secret_values
from fitsense.runs import RunContext, atomic_open, available_cpus, write_json

log = logging.getLogger(__name__)

__all__ = ["capture_teacher_responses", "merge_teacher_shards", "RUN_FIELDS"]

# Fields that describe this run rather than the answer (differ between a clean and a resumed run).
RUN_FIELDS = ("latency_s", "attempts", "cache_hit")


CHUNK = 10_000  # queries read, captured and written at a time: memory holds a chunk, not the run
PARALLEL_FROM = 2 * CHUNK  # the offline expert answers in worker processes (one per CPU) from this many queries


def capture_teacher_responses(ctx: RunContext, shard_index: int | None = None, num_shards: int = 1) -> dict:
    """Stage entry (and Airflow shard task): capture teacher records for all queries, or one shard."""
    with few_collections():
        return _capture(ctx, shard_index, num_shards)


def _chunks(path, shard: tuple[int, int] | None) -> Iterator[list[tuple[QueryHead, str]]]:
    """The queries (the head capture needs, and the JSON line the offline expert reads), a chunk at a time."""
    chunk: list = []
    for i, item in enumerate(iter_queries(path, QueryHead)):
        if shard is None or i % shard[1] == shard[0]:
            chunk.append(item)
            if len(chunk) == CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _capture(ctx: RunContext, shard_index: int | None, num_shards: int) -> dict:
    cfg = ctx.params.teacher
    started = time.perf_counter()
    queries_path = ctx.require("queries", "queries.jsonl")
    shard = None
    if shard_index is not None:
        if not 0 <= shard_index < num_shards:
            raise ConfigError(f"shard_index {shard_index} is outside 0..{num_shards - 1}")
        shard = (shard_index, num_shards)

    journal = Journal(journal_path(ctx, queries_path, shard))
    secrets = secret_values((cfg.api_key_env,))
    capture = CaptureSession(
        teacher=make_teacher(cfg),
        cfg=cfg,
        cache=ResponseCache(cfg.cache_dir) if cfg.provider != "offline" else None,
        limiter=RateLimiter(cfg.requests_per_minute, cfg.tokens_per_minute),
        budget=Budget(cfg.budget.max_usd, cfg.budget.max_requests),
        secrets=secrets,
    )
    offline = not capture.teacher.remote
    workers = available_cpus() if offline else 1
    pool = None
    if workers > 1 and not multiprocessing.current_process().daemon and _count_lines(queries_path) >= PARALLEL_FROM:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    stage_dir = ctx.stage_dir(STAGE)
    out = stage_dir / (shard_name(*shard) if shard is not None else RECORDS)
    totals = SummaryTotals()
    resumed = 0
    try:
        with atomic_open(out) as fh, asyncio.Runner(loop_factory=loop_factory()) as runner:
            try:
                chunks = _chunks(queries_path, shard)
                current = _prepare(capture, next(chunks, None), journal, pool) if offline else next(chunks, None)
                while current is not None:
                    # offline: the workers answer the next chunk while this one is captured
                    ahead = _prepare(capture, next(chunks, None), journal, pool) if offline else None
                    heads = [h for h, _ in current]
                    results = {h.query_id: journal.done[h.query_id] for h in heads if h.query_id in journal.done}
                    resumed += len(results)
                    todo = [h for h in heads if h.query_id not in results]
                    runner.run(run_capture(capture, todo, journal, results))
                    records = [results[h.query_id] for h in heads]
                    fh.write(record_lines(records, journal.lines))
                    totals.add(records)
                    capture.verdicts.clear()  # per chunk, so memory stays flat
                    capture.keys.clear()
                    if offline:
                        capture.teacher.release()
                    current = ahead if offline else next(chunks, None)
            finally:
                runner.run(capture.teacher.aclose())
    finally:
        journal.close()
        if capture.cache is not None:
            capture.cache.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if resumed:
        log.info("teacher: resumed, %d of %d queries were already captured", resumed, totals.n)
    capture.counters.resumed = resumed
    counters = capture.counters.__dict__
    if shard is not None:
        summary = totals.summary(counters, time.perf_counter() - started, cfg)
        write_json(stage_dir / f"summary.shard-{shard[0]}-of-{shard[1]}.json", summary)
        journal.path.unlink(missing_ok=True)
        log.info("teacher shard %d/%d: %d ok, %d failed", shard[0], shard[1], summary["ok"], summary["failed"])
        return summary
    return finalise(ctx, out, totals, counters, time.perf_counter() - started, [journal.path])


def _prepare(capture: CaptureSession, chunk, journal: Journal, pool):
    """Start the offline expert on a chunk's queries not yet journaled; returns the chunk."""
    if chunk is not None:
        capture.teacher.prepare([line for h, line in chunk if h.query_id not in journal.done], pool)
    return chunk


def _count_lines(path) -> int:
    with open(path, "rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 24), b""))
