"""Scoring a served student: the evaluation examples sent to an OpenAI-compatible endpoint (``student_served``).

``evaluation.endpoint`` (off by default) points evaluation at a served student,
e.g. ``fitsense serve``. Requests go through the client teacher capture uses
(``fitsense.data.teacher``: the openai SDK, the rate limiter, retries with
backoff honouring Retry-After), without the response cache: each answer's
latency is the wall time of its request as the client sees it, retries
included, which is how capture measures the teacher's, so the two rows compare
like with like. Token counts are the endpoint's ``usage``. Each request carries
its query's constraints in the extra ``constraints`` field (the referral label
withheld, as for the local student) unless ``send_constraints`` is off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from fitsense.config import BudgetConfig, Params, TeacherConfig
from fitsense.errors import StageError
from fitsense.evaluation.generate import Generation, prompt_messages
from fitsense.evaluation.inference import CoachRequest
from fitsense.logs import secret_values

log = logging.getLogger(__name__)

SERVED_ROLE = "student_served"


class EndpointError(StageError):
    """The served endpoint did not answer an evaluation request (after capture's retries)."""


@dataclass
class ServedRun:
    generations: list[Generation]  # one per request, in order
    models: list[str]  # the distinct ``model`` values the endpoint answered with (fitsense serve: name/version)


def endpoint_client_config(params: Params) -> TeacherConfig:
    """The teacher client's settings for the endpoint: its URL, model and key; greedy, evaluation's token cap.
    Rate limits, retries and backoff are the ``teacher`` section's."""
    ep = params.evaluation.endpoint
    return params.teacher.model_copy(update={
        "provider": "openai", "base_url": ep.base_url, "model": ep.model, "api_key_env": ep.api_key_env,
        "temperature": 0.0, "max_tokens": params.evaluation.max_new_tokens, "concurrency": ep.concurrency,
        "timeout_s": ep.timeout_s, "price_per_1k_input": 0.0, "price_per_1k_output": 0.0, "budget": BudgetConfig(),
    })


def served_answers(params: Params, requests: list[CoachRequest], query_ids: list[str]) -> ServedRun:
    """Ask the endpoint every request (``evaluation.endpoint.concurrency`` at a time); latency measured per request."""
    return asyncio.run(_answer_all(params, requests, query_ids))


async def _answer_all(params: Params, requests: list[CoachRequest], query_ids: list[str]) -> ServedRun:
    from fitsense.data.teacher.budget import Budget
    from fitsense.data.teacher.client import OpenAITeacher, TeacherRequestError
    from fitsense.data.teacher.limiter import RateLimiter
    from fitsense.data.teacher.requests import CaptureSession

    ep = params.evaluation.endpoint
    cfg = endpoint_client_config(params)
    teacher = OpenAITeacher(cfg, key_required=False)
    session = CaptureSession(teacher=teacher, cfg=cfg, cache=None,
                             limiter=RateLimiter(cfg.requests_per_minute, cfg.tokens_per_minute),
                             budget=Budget(None, None), secrets=secret_values((cfg.api_key_env,)))
    gate = asyncio.Semaphore(ep.concurrency)
    models: set[str] = set()

    async def one(request: CoachRequest, query_id: str) -> Generation:
        messages = prompt_messages(request.messages)
        extra = None
        if ep.send_constraints and request.constraints is not None:
            extra = {"constraints": request.constraints.model_dump(mode="json")}
        async with gate:
            started = time.perf_counter()
            try:
                completion, _, _ = await session.request(messages, extra)
            except TeacherRequestError as exc:
                raise EndpointError(f"evaluation.endpoint {ep.base_url}: query {query_id}: {exc}") from None
            latency = time.perf_counter() - started
        if completion.model:
            models.add(completion.model)
        return Generation(text=completion.text, prompt_tokens=completion.prompt_tokens,
                          completion_tokens=completion.completion_tokens, latency_s=latency)

    started = time.perf_counter()
    try:
        generations = await asyncio.gather(*(one(r, q) for r, q in zip(requests, query_ids)))
    finally:
        await teacher.aclose()
    log.info("served student %s (%s): %d answers in %.1f s, %d retries", ep.base_url, ", ".join(sorted(models)),
             len(generations), time.perf_counter() - started, session.counters.retries)
    return ServedRun(list(generations), sorted(models))
