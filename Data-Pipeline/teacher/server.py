"""``fitsense teacher serve``: the offline teacher as a real OpenAI-compatible HTTP endpoint.

``POST /v1/chat/completions`` and ``GET /v1/models`` (FastAPI + uvicorn). The
server loads a ``queries.jsonl`` and finds the query a request is about by
its system + first user message (``client.query_key``), so repair turns
appended after them still map to the same query.

Injected faults (``FaultConfig``): ``latency_ms`` on every request; with
probability ``rate`` one of ``kinds``: ``429`` (with Retry-After),
``500``, ``timeout`` (sleeps past the client timeout), ``truncated`` (the
answer cut in half, finish_reason ``length``), ``non_json`` (prose instead of
JSON). The choice is deterministic: a hash of the seed, the full request
messages and how many times this server has seen that exact request, so a
retried request can succeed and runs are reproducible.

With ``api_key`` set, other keys get a 401 that echoes the key (as some
providers do), to prove the client redacts it.

``running_server(...)`` starts it in-process on a free port (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from fitsense.config import FaultConfig, Params
from fitsense.data.teacher.client import CHARS_PER_TOKEN, OfflineTeacher, TeacherRequestError, estimate_tokens
from fitsense.errors import StageError
from fitsense.records import CoachingQuery
from fitsense.runs import RunContext, read_jsonl

log = logging.getLogger(__name__)

NON_JSON_ANSWER = "Sure! Train three days a week, mix squats, pushes and pulls, and rest well between sessions."


def _unit(*parts) -> float:
    """A deterministic number in [0, 1) from the parts."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def create_app(queries: Iterable[CoachingQuery], faults: FaultConfig, model: str = "fitsense-expert-v1",
               hang_s: float = 120.0, retry_after_s: float = 1.0, seed: int = 0, precompute: bool = True,
               api_key: str | None = None):
    queries = list(queries)
    teacher = OfflineTeacher(queries, model=model)
    if precompute:  # answer every query up front so a request costs HTTP handling only
        for q in queries:
            teacher.answer_text([m.model_dump() for m in q.messages])
    seen: Counter = Counter()
    app = FastAPI(title="FitSense offline teacher", docs_url=None, redoc_url=None)
    app.state.stats = Counter()
    app.state.requests = []  # (monotonic time, request hash, fault or None), for tests and benchmarks

    def error(status: int, message: str, kind: str, headers: dict | None = None):
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers=headers)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "fitsense"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        app.state.stats["requests"] += 1
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return error(401, "missing bearer token", "authentication_error")
        if api_key is not None and auth[7:] != api_key:
            # echoes the key like some real providers do: the client must redact it
            return error(401, f"Incorrect API key provided: {auth[7:]}", "authentication_error")
        try:
            body = json.loads(await request.body())
            messages = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
        except (ValueError, KeyError, TypeError):
            return error(400, "body must be JSON with messages[{role, content}]", "invalid_request_error")
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        request_key = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        seen[request_key] += 1
        fault = None
        if faults.rate and faults.kinds and _unit(seed, request_key, seen[request_key]) < faults.rate:
            fault = faults.kinds[int(_unit(seed, request_key, seen[request_key], "kind") * len(faults.kinds))]
            app.state.stats[f"fault_{fault}"] += 1
        app.state.requests.append((time.monotonic(), request_key, fault))
        if fault == "429":
            return error(429, "rate limit reached (injected)", "rate_limit_error",
                         headers={"retry-after": f"{retry_after_s:g}"})
        if fault == "500":
            return error(500, "internal error (injected)", "server_error")
        if fault == "timeout":  # hang past the client's timeout; stop once the client has given up
            until = time.monotonic() + hang_s
            while time.monotonic() < until and not await request.is_disconnected():
                await asyncio.sleep(0.05)
        try:
            text = teacher.answer_text(messages)
        except TeacherRequestError as exc:
            return error(400, str(exc), "invalid_request_error")
        finish = "stop"
        if fault == "truncated":
            text, finish = text[: len(text) // 2], "length"
        elif fault == "non_json":
            text = NON_JSON_ANSWER
        prompt_tokens = sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN
        completion_tokens = estimate_tokens(text)
        payload = {
            "id": f"chatcmpl-{request_key[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        return Response(json.dumps(payload), media_type="application/json")

    return app


def load_queries(params: Params, queries_path: str | Path | None) -> list[CoachingQuery]:
    if queries_path is None:
        queries_path = RunContext.create(params).require("queries", "queries.jsonl")
    return read_jsonl(queries_path, CoachingQuery)


def serve(params: Params, host: str, port: int, faults: FaultConfig, queries_path: str | Path | None = None) -> None:
    """Run the server in the foreground (``fitsense teacher serve``)."""
    import uvicorn

    from fitsense.logs import configure_logging

    configure_logging(extra_env_names=(params.teacher.api_key_env,))
    queries = load_queries(params, queries_path)
    app = create_app(queries, faults, model=params.teacher.model, hang_s=2 * params.teacher.timeout_s + 1,
                     seed=params.seed)
    log.info("offline teacher for %d queries on http://%s:%d/v1 (latency %gms, fault rate %g)",
             len(queries), host, port, faults.latency_ms, faults.rate)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, name: str = "server", lifespan: str = "off") -> Iterator[str]:
    """Run an ASGI app with uvicorn in a background thread on a free port; yields its base URL (``.../v1``)."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                            lifespan=lifespan, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise StageError(f"the local {name} did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def running_server(queries: Iterable[CoachingQuery], faults: FaultConfig | None = None, **app_kwargs) -> Iterator:
    """Start the server in a background thread on a free port; yields (base_url, app)."""
    app = create_app(list(queries), faults or FaultConfig(), **app_kwargs)
    with serve_in_thread(app, name="teacher server") as base_url:
        yield base_url, app
