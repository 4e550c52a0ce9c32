"""One served answer: safety screen -> generation (micro-batched) -> parse and check -> teacher fallback -> log.

``CoachService`` owns the loaded model version. It re-resolves an alias URI
every ``serving.reload_interval_s`` and swaps in a new champion once it has
loaded, without a restart; each batch takes the current version once, so an
answer (and its log row) always names the version that wrote it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from fitsense.config import Params
from fitsense.constraints import check_answer
from fitsense.errors import UserError
from fitsense.plan import AnswerParseError, CoachAnswer, extract_json_text, parse_coach_answer
from fitsense.registry.serving.batching import MicroBatcher
from fitsense.registry.serving.inference_log import InferenceLog, LogRow
from fitsense.registry.serving.protocol import Answerer, ScreenDecision, ServeAnswer, ServeRequest
from fitsense.registry.serving.screen import referral_answer
from fitsense.registry.serving.student import ModelRef, default_model_uri, load_version, resolve_model_uri

log = logging.getLogger(__name__)


class PromptTooLongError(UserError):
    """A prompt over ``serving.max_prompt_tokens``."""


class GenerationTimeout(Exception):
    """No answer within ``serving.timeout_s``."""


@dataclass
class Check:
    valid: bool
    violations: list[str]
    answer: CoachAnswer | None = None
    error: str | None = None  # why the text is not a valid answer


@dataclass
class ServedAnswer:
    text: str
    model_id: str  # <registered model>/<version>
    fingerprint: str
    screen: ScreenDecision
    student: Check  # the student's answer, as checked
    prompt_tokens: int
    completion_tokens: int
    decoding: str = "raw"
    fallback: bool = False  # the text is the teacher's answer
    fallback_model: str | None = None
    fallback_check: Check | None = None
    fallback_error: str | None = None  # the teacher was asked and failed
    latency_s: float = 0.0
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """The ``fitsense`` block of a response: how this answer came about."""
        out = {"model_version": self.model_id, "screen": self.screen.label, "screen_flags": self.screen.flags,
               "decoding": self.decoding, "valid": self.student.valid, "violations": self.student.violations,
               "fallback": self.fallback}
        if self.student.error:
            out["error"] = self.student.error
        if self.fallback:
            out.update(fallback_model=self.fallback_model, fallback_valid=self.fallback_check.valid,
                       fallback_violations=self.fallback_check.violations)
        if self.fallback_error:
            out["fallback_error"] = self.fallback_error
        return out


def check_text(text: str, request: ServeRequest) -> Check:
    """Parse ``text`` as a coach answer, then check it against the request's constraints and JSON schema."""
    try:
        answer = parse_coach_answer(text)
    except AnswerParseError as exc:
        return Check(valid=False, violations=[], error=exc.reason)
    if request.response_schema is not None:
        import jsonschema

        try:
            jsonschema.validate(json.loads(extract_json_text(text)), request.response_schema)
        except jsonschema.ValidationError as exc:
            return Check(valid=False, violations=[], answer=answer, error=f"response_format: {exc.message}")
    violations = check_answer(answer, request.constraints) if request.constraints is not None else []
    return Check(valid=True, violations=violations, answer=answer)


def make_fallback_teacher(params: Params):
    """The teacher asked when the student's answer is invalid or breaks a constraint (``serving.fallback``)."""
    mode = params.serving.fallback
    if mode == "off":
        return None
    from fitsense.data.teacher.client import OfflineTeacher, OpenAITeacher

    if mode == "offline":
        from fitsense.data.teacher.server import load_queries

        return OfflineTeacher(load_queries(params, params.serving.fallback_queries), model=params.teacher.model)
    return OpenAITeacher(params.teacher)


class CoachService:
    def __init__(self, params: Params, model_uri: str | None = None,
                 loader: Callable[[Params, ModelRef], Answerer] = load_version, teacher=None,
                 inference_log: InferenceLog | None = None):
        self.params = params
        self.cfg = params.serving
        self.model_uri = model_uri or default_model_uri(params)
        self.loader = loader
        self.teacher = teacher
        self.log = inference_log
        self._loaded: tuple[Answerer, ModelRef] | None = None  # swapped as one value: never a mixed pair
        self.batcher = MicroBatcher(self._run_batch, self.cfg.max_batch_size, self.cfg.max_wait_ms)
        self._log_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference-log")
        self._reloader: asyncio.Task | None = None
        self._reload_lock = asyncio.Lock()

    # --- model versions -------------------------------------------------------------------------------------
    def load(self) -> None:
        """Resolve the URI and load its version (blocking; a URI that does not resolve raises ``ModelUriError``)."""
        ref = resolve_model_uri(self.params, self.model_uri)
        self._loaded = (self.loader(self.params, ref), ref)

    @property
    def current(self) -> Answerer | None:
        return self._loaded[0] if self._loaded else None

    @property
    def ref(self) -> ModelRef | None:
        return self._loaded[1] if self._loaded else None

    @property
    def model_id(self) -> str:
        return self.ref.model_id if self.ref else "none"

    async def refresh(self) -> bool:
        """Re-resolve the URI; load and swap in a new version if it moved. True when it swapped."""
        async with self._reload_lock:
            ref = await asyncio.to_thread(resolve_model_uri, self.params, self.model_uri)
            if self.ref is not None and ref.version == self.ref.version:
                return False
            answerer = await asyncio.to_thread(self.loader, self.params, ref)
            old = self.model_id
            self._loaded = (answerer, ref)  # batches already running keep the version they took
            log.info("serving %s (was %s)", ref.model_id, old)
            return True

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.reload_interval_s)
            try:
                await self.refresh()
            except Exception as exc:  # keep serving the loaded version; say why the new one is not served
                log.warning("model reload failed, still serving %s: %s", self.model_id, exc)

    async def start(self) -> None:
        if self.current is None:
            await asyncio.to_thread(self.load)
        self.batcher.start()
        if self.cfg.reload_interval_s > 0 and "@" in self.model_uri:
            self._reloader = asyncio.get_running_loop().create_task(self._reload_loop())

    async def stop(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
        await self.batcher.stop()
        self._log_executor.shutdown(wait=True)
        if self.teacher is not None:
            await self.teacher.aclose()
        if self.log is not None:
            self.log.close()

    def _run_batch(self, requests: list[ServeRequest]) -> list[tuple[Answerer, ModelRef, ServeAnswer]]:
        answerer, ref = self._loaded  # once per batch: no batch mixes versions
        return [(answerer, ref, a) for a in answerer.answer_batch(requests)]

    # --- one request ----------------------------------------------------------------------------------------
    def prepare(self, messages: list[dict], constraints=None, max_tokens: int | None = None,
                response_schema: dict | None = None, user: str | None = None) -> ServeRequest:
        """A checked request: the version's system prompt added when the client sent none; size limits applied."""
        from fitsense.data.prompts import SYSTEM_PROMPT

        if not any(m["role"] == "system" for m in messages):
            prompt = self.current.system_prompt or SYSTEM_PROMPT
            messages = [{"role": "system", "content": prompt}, *messages]
        n = self.current.prompt_tokens(messages)
        if n > self.cfg.max_prompt_tokens:
            raise PromptTooLongError(f"the prompt has {n} tokens; this server accepts at most "
                                     f"{self.cfg.max_prompt_tokens} (serving.max_prompt_tokens)")
        max_new = min(max_tokens or self.cfg.max_new_tokens, self.cfg.max_new_tokens)
        return ServeRequest(messages=messages, constraints=constraints, max_new_tokens=max_new,
                            response_schema=response_schema, user=user)

    async def answer(self, request: ServeRequest) -> ServedAnswer:
        started = time.perf_counter()
        try:
            served = await self._answer(request)
        except GenerationTimeout:
            self._write_log(request, None, started, status=504)
            raise
        served.latency_s = time.perf_counter() - started
        self._write_log(request, served, started, status=200)
        return served

    async def _answer(self, request: ServeRequest) -> ServedAnswer:
        answerer, ref = self._loaded
        decision = answerer.screen.screen(request)  # each version ships (or defaults) its own screen
        if decision.refer:
            answer = referral_answer(decision)
            violations = check_answer(answer, request.constraints) if request.constraints else []
            return ServedAnswer(text=answer.to_json(), model_id=ref.model_id, fingerprint=ref.fingerprint,
                                screen=decision, student=Check(True, violations, answer),
                                prompt_tokens=answerer.prompt_tokens(request.messages), completion_tokens=0,
                                decoding="screen")
        try:
            answerer, ref, generated = await asyncio.wait_for(self.batcher.submit(request), self.cfg.timeout_s)
        except asyncio.TimeoutError:
            raise GenerationTimeout(f"no answer within {self.cfg.timeout_s:g}s (serving.timeout_s)") from None
        check = Check(valid=False, violations=[], error=generated.error) if generated.error \
            else check_text(generated.text, request)
        served = ServedAnswer(text=generated.text, model_id=ref.model_id, fingerprint=ref.fingerprint,
                              screen=decision, student=check, prompt_tokens=generated.prompt_tokens,
                              completion_tokens=generated.completion_tokens, decoding=generated.decoding)
        if (not check.valid or check.violations) and self.teacher is not None:
            await self._fall_back(request, served)
        return served

    async def _fall_back(self, request: ServeRequest, served: ServedAnswer) -> None:
        from fitsense.data.teacher.client import TeacherRequestError

        try:
            completion = await self.teacher.complete(request.messages)
        except TeacherRequestError as exc:
            served.fallback_error = str(exc)
            return
        served.fallback, served.fallback_model = True, self.teacher.model
        served.fallback_check = check_text(completion.text, request)
        served.text = completion.text
        served.prompt_tokens += completion.prompt_tokens
        served.completion_tokens += completion.completion_tokens

    def flush_log(self) -> None:
        """Wait until every log row submitted so far is written."""
        self._log_executor.submit(lambda: None).result()

    def _write_log(self, request: ServeRequest, served: ServedAnswer | None, started: float, status: int) -> None:
        if self.log is None:
            return
        row = LogRow(messages=request.messages, constraints=request.constraints, user=request.user,
                     model_version=served.model_id if served else self.model_id,
                     screen_decision=served.screen.label if served else "pass",
                     valid=served.student.valid if served else None,
                     violations=served.student.violations if served else None,
                     fallback=bool(served and served.fallback), status=status,
                     latency_ms=(time.perf_counter() - started) * 1000,
                     prompt_tokens=served.prompt_tokens if served else 0,
                     completion_tokens=served.completion_tokens if served else 0)
        future = self._log_executor.submit(self.log.write, row)
        future.add_done_callback(lambda f: f.exception() and log.error("inference log write failed: %s",
                                                                          f.exception()))
