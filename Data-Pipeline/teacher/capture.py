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
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from fitsense.data.teacher.cache import ResponseCache, cache_key
from fitsense.data.teacher.client import (
    CHARS_PER_TOKEN,
    Completion,
    Teacher,
    TeacherRequestError,
    as_dicts,
    make_teacher,
)
from fitsense.data.teacher.limiter import RateLimiter
from pydantic import BaseModel, ConfigDict
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from fitsense.constraints import check_answer, violation_code
from fitsense.errors import ConfigError, InputDataError, StageError
from fitsense.logs import redact, secret_values
from fitsense.plan import AnswerParseError, CoachAnswer, parse_coach_answer
from fitsense.records import (
    QUERY_KINDS,
    ChatMessage,
    CoachingQuery,
    QueryConstraints,
    QueryKind,
    TeacherRecord,
)
from fitsense.runs import (
    RunContext,
    atomic_open,
    describe_invalid,
    file_sha256,
    read_json,
    read_jsonl,
    write_json,
    write_manifest,
)

log = logging.getLogger(__name__)

STAGE = "teacher"
RECORDS = "records.jsonl"
SUMMARY = "summary.json"
FLUSH_EVERY_S = 0.05
FSYNC_EVERY_S = 0.5
# Failure reasons that are final for these params (journaled); others are retried by the next run.
FINAL_FAILURES = ("invalid_answer",)
# Fields that describe this run rather than the answer (differ between a clean and a resumed run).
RUN_FIELDS = ("latency_s", "attempts", "cache_hit")


class BudgetExhausted(Exception):
    pass


def shard_name(shard_index: int, num_shards: int) -> str:
    return f"records.shard-{shard_index}-of-{num_shards}.jsonl"


# --------------------------------------------------------------------------- budget


@dataclass
class Budget:
    max_usd: float | None
    max_requests: int | None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    requests: int = 0

    def reserve(self, worst_usd: float) -> None:
        """Claim one request with its worst-case cost, or raise BudgetExhausted."""
        if self.max_requests is not None and self.requests >= self.max_requests:
            raise BudgetExhausted
        if self.max_usd is not None and self.spent_usd + self.reserved_usd + worst_usd > self.max_usd:
            raise BudgetExhausted
        self.requests += 1
        self.reserved_usd += worst_usd

    def settle(self, worst_usd: float, actual_usd: float) -> None:
        self.reserved_usd -= worst_usd
        self.spent_usd += actual_usd


# --------------------------------------------------------------------------- journal


class Journal:
    """Append-only JSONL of finished records; survives kill -9 (batched flush, periodic fsync)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, TeacherRecord] = {}
        self.lines: dict[str, str] = {}  # query_id -> its JSON line, reused by the final records file
        if path.exists():
            self._recover()
        # A large buffer: lines reach the OS in batches at each flush, not every few records.
        self._fh = open(path, "a", encoding="utf-8", buffering=1 << 20)
        self._synced = self._flushed = time.monotonic()

    def _recover(self) -> None:
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):  # a torn last line from a killed run: drop it
            log.warning("%s: dropping a torn last line (%d bytes) from an interrupted run", self.path, len(data) - keep)
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
        for lineno, line in enumerate(data[:keep].decode("utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rec = TeacherRecord.model_validate_json(line)
                except ValueError as exc:
                    raise InputDataError(f"{self.path}:{lineno}: corrupt journal record ({describe_invalid(exc)}); delete the file "
                                     f"to recapture (cached answers are reused)") from None
                self.done[rec.query_id] = rec
                self.lines[rec.query_id] = line

    def write(self, rec: TeacherRecord) -> None:
        line = self.lines[rec.query_id] = rec.model_dump_json(exclude_none=True)
        self._fh.write(line + "\n")
        now = time.monotonic()
        # Flushed to the OS in small batches (a killed process loses at most FLUSH_EVERY_S of
        # journal lines, whose answers the response cache serves again for free); fsynced less often.
        if now - self._flushed > FLUSH_EVERY_S:
            self._fh.flush()
            self._flushed = now
        if now - self._synced > FSYNC_EVERY_S:
            self.sync()

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._synced = self._flushed = time.monotonic()

    def close(self) -> None:
        self.sync()
        self._fh.close()


# --------------------------------------------------------------------------- one query


def _parse(text: str) -> CoachAnswer:
    """``parse_coach_answer``, with a fast path for the common case of a bare JSON answer."""
    try:
        return CoachAnswer.model_validate_json(text)
    except ValueError:
        return parse_coach_answer(text)  # fences, reasoning blocks, prose: extract, and say why it fails


class QueryHead(BaseModel):
    """What capture needs of a query for a remote teacher; parses ~4x faster than a full CoachingQuery
    (whose context only the offline teacher reads)."""

    model_config = ConfigDict(extra="ignore")
    query_id: str
    user_id: int
    kind: QueryKind
    messages: list[ChatMessage]
    constraints: QueryConstraints


def read_queries(path: Path, model: type[BaseModel] = CoachingQuery) -> list:
    """Like ``read_jsonl(path, model)`` but parsed by pydantic-core straight from the JSON text."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(model.model_validate_json(line))
                except ValueError as exc:
                    raise InputDataError(f"{path}:{lineno}: invalid query record: {describe_invalid(exc)}") from None
    return out


@dataclass(frozen=True)
class _Verdict:
    answer: CoachAnswer | None
    answer_dict: dict | None
    error: str
    schema_valid: bool
    violations: list[str]


def _constraints_key(c: QueryConstraints) -> tuple:
    return tuple(tuple(v) if isinstance(v, list) else v for v in c.__dict__.values())


@dataclass
class _Counters:
    requests: int = 0  # HTTP requests sent (retries and repairs included)
    cache_hits: int = 0  # completions served from the cache
    paid_usd: float = 0.0
    retries: int = 0
    resumed: int = 0


@dataclass
class _Capture:
    teacher: Teacher
    cfg: object  # TeacherConfig
    cache: ResponseCache | None
    limiter: RateLimiter | None
    budget: Budget
    secrets: list[str]
    counters: _Counters = field(default_factory=_Counters)
    stopped: bool = False
    # (response text, constraints) -> verdict: identical queries get identical cached answers, so a
    # rerun parses and checks each distinct answer once (pure functions of their inputs).
    verdicts: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)  # messages -> cache key (hashed once per distinct request)

    def evaluate(self, text: str, constraints: QueryConstraints) -> "_Verdict":
        key = (text, _constraints_key(constraints))
        verdict = self.verdicts.get(key)
        if verdict is None:
            try:
                answer = _parse(text)
            except AnswerParseError as exc:
                verdict = _Verdict(None, None, exc.reason, False, [])
            else:
                violations = check_answer(answer, constraints)
                verdict = _Verdict(answer, answer.model_dump(mode="json"), "; ".join(violations), True, violations)
            self.verdicts[key] = verdict
        return verdict

    @property
    def gen_params(self) -> dict:
        return {"temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.cfg.price_per_1k_input + completion_tokens * self.cfg.price_per_1k_output) / 1000

    def _wait(self, state) -> float:
        exc = state.outcome.exception()
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:
            return retry_after
        return wait_random_exponential(multiplier=self.cfg.backoff_base_s, max=self.cfg.backoff_max_s)(state)

    async def request(self, messages: list[dict]) -> tuple[Completion, int, bool]:
        """One completion (cached, limited, retried): (completion, HTTP attempts, cache hit)."""
        if not self.teacher.remote:
            return await self.teacher.complete(messages), 0, False
        ident = tuple((m["role"], m["content"]) for m in messages)
        key = self.keys.get(ident)
        if key is None:
            key = self.keys[ident] = cache_key(self.teacher.model, messages, self.gen_params)
        cached = self.cache.get(key)
        if cached is not None:
            self.counters.cache_hits += 1
            return cached, 0, True
        prompt_est = sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN
        worst = self.cost(prompt_est, self.cfg.max_tokens)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.cfg.max_retries + 1), wait=self._wait, reraise=True,
            retry=retry_if_exception(lambda e: isinstance(e, TeacherRequestError) and e.retryable),
            before_sleep=self._log_retry,
        )
        sent: list = []
        try:
            await self._attempts(retrying, messages, prompt_est, worst, sent)
        except (TeacherRequestError, BudgetExhausted) as exc:
            exc.attempts = len(sent)  # type: ignore[attr-defined]
            raise
        completion = sent[-1]
        self.cache.put(key, completion)
        return completion, len(sent), False

    async def _attempts(self, retrying, messages, prompt_est: int, worst: float, sent: list) -> None:
        """Run the retry loop; ``sent`` gets one entry per HTTP attempt (the completion on success)."""
        async for attempt in retrying:
            with attempt:
                if self.stopped:
                    raise BudgetExhausted
                self.budget.reserve(worst)
                await self.limiter.acquire(prompt_est + self.cfg.max_tokens)
                sent.append(None)
                self.counters.requests += 1
                try:
                    completion = await self.teacher.complete(messages)
                except TeacherRequestError:
                    self.budget.settle(worst, 0.0)  # failed requests are not billed
                    self.limiter.settle(prompt_est + self.cfg.max_tokens, prompt_est)
                    raise
                actual = self.cost(completion.prompt_tokens, completion.completion_tokens)
                self.budget.settle(worst, actual)
                self.limiter.settle(prompt_est + self.cfg.max_tokens,
                                    completion.prompt_tokens + completion.completion_tokens)
                self.counters.paid_usd += actual
                sent[-1] = completion

    def _log_retry(self, state) -> None:
        self.counters.retries += 1
        exc = state.outcome.exception()
        log.debug("teacher retry %d after %s", state.attempt_number, redact(str(exc), self.secrets))

    async def capture_one(self, query: "CoachingQuery | QueryHead") -> TeacherRecord:
        messages = as_dicts(query.messages)
        base = {"query_id": query.query_id, "user_id": query.user_id, "kind": query.kind,
                "teacher_model": self.teacher.model}
        attempts = repairs = prompt_tokens = completion_tokens = 0
        cost, all_cached = 0.0, True
        started = time.perf_counter()

        def record(**kw) -> TeacherRecord:
            return TeacherRecord(**base, attempts=attempts, repairs=repairs, prompt_tokens=prompt_tokens,
                                 completion_tokens=completion_tokens, cost_usd=round(cost, 8),
                                 latency_s=round(time.perf_counter() - started, 4) if self.teacher.remote else None,
                                 cache_hit=all_cached and attempts == 0 and prompt_tokens > 0, **kw)

        while True:
            try:
                completion, n, hit = await self.request(messages)
            except BudgetExhausted as exc:
                attempts += getattr(exc, "attempts", 0)
                self.stopped = True
                return record(status="failed", failure_reason="budget_exhausted: teacher.budget reached")
            except TeacherRequestError as exc:
                attempts += getattr(exc, "attempts", 0)
                reason = "retries_exhausted" if exc.retryable else "request_rejected"
                return record(status="failed", failure_reason=f"{reason}: {redact(str(exc), self.secrets)}")
            attempts += n
            all_cached = all_cached and hit
            prompt_tokens += completion.prompt_tokens
            completion_tokens += completion.completion_tokens
            cost += self.cost(completion.prompt_tokens, completion.completion_tokens)
            text = redact(completion.text, self.secrets)
            verdict = self.evaluate(text, query.constraints)
            answer, error, violations = verdict.answer, verdict.error, verdict.violations
            if answer is not None and not violations:
                return record(status="ok", response_text=text, answer=verdict.answer_dict,
                              schema_valid=True, safety_flags=list(answer.safety.flags),
                              referral_required=answer.safety.referral_required)
            if repairs >= self.cfg.max_repairs:
                return record(status="failed", response_text=text, failure_reason=f"invalid_answer: {error}"[:500],
                              schema_valid=verdict.schema_valid, constraint_violations=list(violations),
                              safety_flags=list(answer.safety.flags) if answer else [],
                              referral_required=bool(answer and answer.safety.referral_required))
            repairs += 1
            messages = messages + [
                {"role": "assistant", "content": text},
                {"role": "user", "content": f"That answer is invalid: {error}. "
                                            "Reply with the corrected JSON object only."},
            ]


# --------------------------------------------------------------------------- the stage


def _journal_path(ctx: RunContext, queries_path: Path, shard: tuple[int, int] | None) -> Path:
    """Journal name bound to what makes answers differ, so a changed teacher never reuses old records."""
    cfg = ctx.params.teacher
    ident = json.dumps([cfg.provider, cfg.model, cfg.base_url, cfg.temperature, cfg.max_tokens, cfg.max_repairs,
                        file_sha256(queries_path)])
    fp = hashlib.sha256(ident.encode()).hexdigest()[:16]
    stem = f"records.shard-{shard[0]}-of-{shard[1]}" if shard else "records"
    return ctx.stage_dir(STAGE) / ".partial" / f"{stem}.{fp}.jsonl"


async def _run(capture: _Capture, todo: list[CoachingQuery], journal: Journal, results: dict) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    for q in todo:
        queue.put_nowait(q)
    workers = min(capture.cfg.concurrency if capture.teacher.remote else 1, max(1, len(todo)))
    columns = [TextColumn("teacher"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=True, disable=len(todo) < 50) as progress:
        task = progress.add_task("capture", total=len(todo))

        async def worker():
            while not queue.empty():
                query = queue.get_nowait()
                rec = await capture.capture_one(query)
                results[query.query_id] = rec
                if rec.status == "ok" or violation_code(rec.failure_reason or "") in FINAL_FAILURES:
                    journal.write(rec)
                progress.advance(task)

        try:
            await asyncio.gather(*(worker() for _ in range(workers)))
        finally:
            await capture.teacher.aclose()


def _loop_factory():
    """uvloop when installed (it comes with ``uvicorn[standard]``): its event loop and sockets cost the
    client noticeably less CPU per request than asyncio's own; else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


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


@contextlib.contextmanager
def _few_collections() -> Iterator[bool]:
    """Garbage collection tuned for holding ~10^5 long-lived objects (queries, records): with the default
    gen-0 threshold (700) the collector re-scanned them so often that it took about half the CPU of a
    fully cached rerun. Collections run 50x less often, and the loaded queries are frozen (never scanned)
    unless the process already froze objects for its own reasons (forking servers do); undone on exit."""
    threshold = gc.get_threshold()
    freeze = gc.get_freeze_count() == 0
    gc.set_threshold(max(threshold[0], 50_000), *threshold[1:])
    try:
        yield freeze
    finally:
        gc.set_threshold(*threshold)
        if freeze:
            gc.unfreeze()


def capture_teacher_responses(ctx: RunContext, shard_index: int | None = None, num_shards: int = 1) -> dict:
    """Stage entry (and Airflow shard task): capture teacher records for all queries, or one shard."""
    with _few_collections() as freeze:
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

    journal = Journal(_journal_path(ctx, queries_path, shard))
    wanted = {q.query_id for q in queries}
    results: dict[str, TeacherRecord] = {k: v for k, v in journal.done.items() if k in wanted}
    todo = [q for q in queries if q.query_id not in results]
    secrets = secret_values((cfg.api_key_env,))
    capture = _Capture(
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
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_run(capture, todo, journal, results))
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
    return _finalise(ctx, records, counters, time.perf_counter() - started, [journal.path], journal.lines)


def _finalise(ctx: RunContext, records: list[TeacherRecord], counters: dict, wall_s: float,
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
    with _few_collections():
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
            raise FileNotFoundError(f"{path} is missing: teacher shard {i} of {num_shards} has not finished")
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
    return _finalise(ctx, records, dict(counters), time.perf_counter() - started, [])
