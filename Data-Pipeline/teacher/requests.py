"""The request loop: one validated teacher record per query, with retries, repairs and the budget.

``CaptureSession.capture_one`` asks the teacher (cached, rate-limited,
retried with exponential backoff and full jitter, honouring Retry-After),
parses and checks the answer, and sends up to ``teacher.max_repairs`` repair
turns; ``run_capture`` drives it over a queue with bounded concurrency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

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
from fitsense.data.teacher.budget import Budget, BudgetExhausted
from fitsense.data.teacher.cache import ResponseCache, cache_key
from fitsense.data.teacher.client import (
    CHARS_PER_TOKEN,
    Completion,
    Teacher,
    TeacherRequestError,
    as_dicts,
)
from fitsense.data.teacher.journal import Journal
from fitsense.data.teacher.limiter import RateLimiter
from fitsense.data.teacher.loading import QueryHead
from fitsense.logs import redact
from fitsense.plan import AnswerParseError, CoachAnswer, parse_coach_answer
from fitsense.records import CoachingQuery, QueryConstraints, TeacherRecord

log = logging.getLogger(__name__)

# Failure reasons that are final for these params (journaled); others are retried by the next run.
FINAL_FAILURES = ("invalid_answer",)


def _parse(text: str) -> CoachAnswer:
    """``parse_coach_answer``, with a fast path for the common case of a bare JSON answer."""
    try:
        return CoachAnswer.model_validate_json(text)
    except ValueError:
        return parse_coach_answer(text)  # fences, reasoning blocks, prose: extract, and say why it fails


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
class CaptureSession:
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

    def evaluate(self, text: str, constraints: QueryConstraints) -> _Verdict:
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

    async def request(self, messages: list[dict], extra: dict | None = None) -> tuple[Completion, int, bool]:
        """One completion (cached unless ``cache`` is None, limited, retried): (completion, HTTP attempts, cache
        hit). ``extra`` adds request fields (evaluation sends a served student its query's constraints)."""
        if not self.teacher.remote:
            return await self.teacher.complete(messages, extra), 0, False
        key = None
        if self.cache is not None:
            ident = tuple((m["role"], m["content"]) for m in messages)
            if extra:
                ident += (json.dumps(extra, sort_keys=True),)
            key = self.keys.get(ident)
            if key is None:
                key = self.keys[ident] = cache_key(self.teacher.model, messages, {**self.gen_params, **(extra or {})})
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
            await self._attempts(retrying, messages, prompt_est, worst, sent, extra)
        except (TeacherRequestError, BudgetExhausted) as exc:
            exc.attempts = len(sent)  # type: ignore[attr-defined]
            raise
        completion = sent[-1]
        if self.cache is not None:
            self.cache.put(key, completion)
        return completion, len(sent), False

    async def _attempts(self, retrying, messages, prompt_est: int, worst: float, sent: list,
                        extra: dict | None = None) -> None:
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
                    completion = await self.teacher.complete(messages, extra)
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


async def run_capture(capture: CaptureSession, todo: list[CoachingQuery], journal: Journal, results: dict) -> None:
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

        await asyncio.gather(*(worker() for _ in range(workers)))  # the caller closes the teacher after its last chunk


def loop_factory():
    """uvloop when installed (it comes with ``uvicorn[standard]``): its event loop and sockets cost the
    client noticeably less CPU per request than asyncio's own; else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
