"""The two teachers behind one async interface: ``await teacher.complete(messages) -> Completion``.

- ``OfflineTeacher`` (provider ``offline``): the rule-based expert, answering
  the query whose system + first user message match; free and deterministic.
- ``OpenAITeacher`` (provider ``openai``): any OpenAI-compatible endpoint via
  the official SDK. SDK retries are off (``max_retries=0``): capture owns
  retries, backoff and Retry-After. The API key is read from the environment
  variable named by ``teacher.api_key_env`` only, and never written anywhere.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from fitsense.config import TeacherConfig
from fitsense.errors import ConfigError, StageError
from fitsense.logs import redact, secret_values
from fitsense.records import ChatMessage, CoachingQuery

# Offline answers have no tokenizer behind them: ~4 characters per token is the usual English estimate.
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str | None = None  # the model the endpoint says answered (fitsense serve: <name>/<version>)


class TeacherConfigError(ConfigError):
    """The teacher cannot be used as configured (e.g. the API key variable is not set)."""


class TeacherRequestError(StageError):
    """A request that failed; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool, retry_after_s: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class Teacher(Protocol):
    model: str
    remote: bool  # remote teachers go through the rate limiter, retries, the cache and the budget

    async def complete(self, messages: list[dict], extra: dict | None = None) -> Completion: ...

    async def aclose(self) -> None: ...


def as_dicts(messages: Iterable[ChatMessage | dict]) -> list[dict]:
    return [{"role": m.role, "content": m.content} if isinstance(m, ChatMessage)
            else {"role": m["role"], "content": m["content"]} for m in messages]


def query_key(messages: list[dict]) -> tuple[str | None, str | None]:
    """Identity of a query from its messages: the system and first user message (repair turns excluded).
    The texts themselves: a dictionary hashes them for less than encoding and digesting them would cost."""
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    return system, next((m["content"] for m in messages if m["role"] == "user"), None)


class OfflineTeacher:
    """The embedded expert; knows the queries it may be asked (indexed by their messages).

    Queries given up front are answered when asked. ``prepare`` takes a batch of queries as JSON lines and
    answers them ahead of being asked, in a process pool's workers when given one (the expert's answers are
    pure functions of the queries, so any worker gives the same text); the answers are collected in order,
    a batch at a time, when one of them is first asked for, and ``release`` drops those collected."""

    remote = False

    def __init__(self, queries: Iterable[CoachingQuery] = (), model: str = "fitsense-expert-v1"):
        self.model = model
        self._queries = {query_key(as_dicts(q.messages)): q for q in queries}
        self._answers: dict[tuple, str] = {}
        self._pending: deque[Callable[[], list[tuple[tuple, str]]]] = deque()

    def prepare(self, lines: list[str], pool: Executor | None = None, batch: int = 500) -> None:
        if not lines:
            return
        if pool is None:
            self._pending.append(lambda: answer_lines(lines))
            return
        for start in range(0, len(lines), batch):
            self._pending.append(pool.submit(answer_lines, lines[start:start + batch]).result)

    def release(self) -> None:
        """Forget the answers collected so far (batches not yet collected stay)."""
        self._answers.clear()

    def answer_text(self, messages: list[dict]) -> str:
        from fitsense.data.teacher.offline import answer_query

        key = query_key(messages)
        while key not in self._answers and self._pending:
            self._answers.update(self._pending.popleft()())
        if key not in self._answers:
            query = self._queries.get(key)
            if query is None:
                raise TeacherRequestError("offline teacher: no known query matches these messages", retryable=False)
            self._answers[key] = answer_query(query).to_json()
        return self._answers[key]

    async def complete(self, messages: list[dict], extra: dict | None = None) -> Completion:
        text = self.answer_text(messages)  # ``extra`` request fields mean nothing to the offline expert
        prompt = sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN
        return Completion(text=text, prompt_tokens=prompt, completion_tokens=estimate_tokens(text))

    async def aclose(self) -> None:
        return None


def answer_lines(lines: list[str]) -> list[tuple[tuple, str]]:
    """(query key, the offline expert's answer text) for queries given as JSON lines (a worker's batch)."""
    from fitsense.data.teacher.offline import answer_query

    out = []
    for line in lines:
        query = CoachingQuery.model_validate_json(line)
        out.append((query_key(as_dicts(query.messages)), answer_query(query).to_json()))
    return out


def _retry_after(headers) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``Retry-After`` in seconds)."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) / scale)
            except ValueError:
                continue  # an HTTP-date; fall back to our own backoff
    return None


def _http_client(cfg: TeacherConfig):
    """The SDK's aiohttp transport (about half the CPU per request of its default httpx transport), with
    a keep-alive pool sized to ``teacher.concurrency`` so no worker ever waits for, or reopens, a connection.
    Falls back to the SDK default when aiohttp is not installed."""
    import openai

    try:
        import httpx2  # the SDK's HTTP layer from openai 3.x on
    except ImportError:
        import httpx as httpx2

    limits = httpx2.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
    try:
        return openai.DefaultAioHttpClient(timeout=cfg.timeout_s, limits=limits)
    except RuntimeError:  # the SDK's "install the aiohttp extra" error
        return openai.DefaultAsyncHttpxClient(timeout=cfg.timeout_s, limits=limits)


class OpenAITeacher:
    """Chat completions on any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, ``fitsense teacher serve``,
    ``fitsense serve``). ``key_required=False`` is for an endpoint that may run without auth: with the
    variable unset, requests carry a placeholder key."""

    remote = True

    def __init__(self, cfg: TeacherConfig, key_required: bool = True):
        key = os.environ.get(cfg.api_key_env) or ("" if key_required else "unused")
        if not key:
            raise TeacherConfigError(
                f"teacher.provider is 'openai' but the environment variable {cfg.api_key_env} "
                f"(teacher.api_key_env) is not set; export it with your API key"
            )
        self.model = cfg.model
        self.cfg = cfg
        self._secrets = secret_values((cfg.api_key_env,))
        self._key = key
        self._client = None  # made on the first request: a fully cached run never imports the SDK (~0.8 s)

    @property
    def client(self):
        if self._client is None:
            import openai

            self._client = openai.AsyncOpenAI(base_url=self.cfg.base_url, api_key=self._key, max_retries=0,
                                              timeout=self.cfg.timeout_s, http_client=_http_client(self.cfg))
        return self._client

    async def complete(self, messages: list[dict], extra: dict | None = None) -> Completion:
        """One chat completion; ``extra`` adds request fields (``fitsense serve``'s ``constraints``)."""
        import openai

        try:
            # ``post`` is the SDK's documented call for raw endpoints (auth, errors, timeouts as usual). Unlike
            # ``chat.completions.create`` it skips walking the ~35-field params TypedDict (~1.5 ms CPU per
            # request, a no-op for role/content messages), and ``cast_to=object`` returns the decoded JSON
            # instead of building a ChatCompletion model of which we read two fields (~0.3 ms).
            data = await self.client.post(
                "/chat/completions", cast_to=object,
                body={"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature,
                      "max_tokens": self.cfg.max_tokens, **(extra or {})},
            )
        except openai.APIStatusError as exc:
            retryable = exc.status_code in (408, 409, 429) or exc.status_code >= 500
            raise TeacherRequestError(self._clean(f"HTTP {exc.status_code}: {exc.message}"), retryable,
                                      _retry_after(exc.response.headers)) from None
        except openai.APITimeoutError:
            raise TeacherRequestError(f"timeout after {self.cfg.timeout_s:g}s", retryable=True) from None
        except openai.APIConnectionError as exc:
            raise TeacherRequestError(self._clean(f"connection error: {exc}"), retryable=True) from None
        except (openai.APIResponseValidationError, ValueError) as exc:  # a malformed (e.g. truncated) body
            raise TeacherRequestError(self._clean(f"malformed response: {exc}"), retryable=True) from None
        try:
            choices = data["choices"]
            if not choices:
                raise TeacherRequestError("response has no choices", retryable=True)
            text = choices[0]["message"]["content"] or ""
            usage = data.get("usage") or {}
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise TeacherRequestError(self._clean(f"malformed response: no {exc} in {str(data)[:200]}"),
                                      retryable=True) from None
        if not isinstance(text, str) or not isinstance(prompt or 0, int) or not isinstance(completion or 0, int):
            raise TeacherRequestError(self._clean(f"malformed response: {str(data)[:200]}"), retryable=True)
        if prompt is None:
            prompt = sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN
        if completion is None:
            completion = estimate_tokens(text)
        model = data.get("model")
        return Completion(text=text, prompt_tokens=prompt, completion_tokens=completion,
                          model=model if isinstance(model, str) else None)

    def _clean(self, text: str) -> str:
        return redact(text, self._secrets)[:500]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()


def make_teacher(cfg: TeacherConfig, queries: Iterable[CoachingQuery] = ()) -> Teacher:
    if cfg.provider == "offline":
        return OfflineTeacher(queries, model=cfg.model)
    return OpenAITeacher(cfg)
