"""``fitsense serve``: the registered student as an OpenAI-compatible chat-completions endpoint.

``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health`` (FastAPI +
uvicorn). A request is an OpenAI chat request; two optional parts steer it:

- ``constraints``: the user's constraints, the same record as a query's
  (``fitsense.records.QueryConstraints``); with the ``openai`` SDK pass it as
  ``extra_body={"constraints": {...}}``. The answer is checked against it.
- ``response_format``: ``{"type": "json_schema", "json_schema": {"schema": ...}}``;
  the answer is validated against the schema.

The response is a ``chat.completion`` whose ``model`` is
``<registered model>/<version>``, ``system_fingerprint`` the adapter digest and
``usage`` counted in tokens, plus a ``fitsense`` block: the screen decision,
whether the student's answer was valid and adherent, and whether the teacher's
answer replaced it (``fallback``). Errors have the OpenAI shape
``{"error": {"message", "type", "param", "code"}}``; none stops the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import time
from typing import Any, Iterator, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fitsense.config import Params
from fitsense.records import ChatMessage, QueryConstraints
from fitsense.registry.serving.service import CoachService, GenerationTimeout, PromptTooLongError, ServedAnswer

log = logging.getLogger(__name__)


class ChatRequest(BaseModel):
    """The accepted request fields: OpenAI's that make sense for this model, and ``constraints``."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None  # informational: the server answers with the version it serves
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)  # decoding is greedy; accepted for compatibility
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    n: Literal[1] | None = None
    stream: Literal[False] | None = None
    user: str | None = Field(default=None, max_length=256)  # the end user's id: logged, not used
    response_format: dict[str, Any] | None = None
    constraints: dict[str, Any] | None = None  # validated as QueryConstraints (422 naming the field)


class RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, self.status)


def _field(loc) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def parse_request(body: bytes) -> tuple[ChatRequest, QueryConstraints | None, dict | None]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RequestError(400, "the request body must be a JSON object")
    try:
        chat = ChatRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _field(err["loc"])
        if err["type"] == "extra_forbidden":
            raise RequestError(400, f"Unrecognized request argument supplied: {where}", param=where) from None
        raise RequestError(400, f"{where}: {err['msg']}", param=where) from None
    constraints = None
    if chat.constraints is not None:
        try:
            constraints = QueryConstraints.model_validate(chat.constraints)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                where = _field(("constraints", *err["loc"]))
                problems.append(f"{where}: unknown field" if err["type"] == "extra_forbidden"
                                else f"{where}: {err['msg']}")
            raise RequestError(422, "; ".join(problems), param=_field(("constraints", *exc.errors()[0]["loc"])),
                               code="invalid_constraints") from None
    return chat, constraints, _response_schema(chat.response_format)


def _response_schema(response_format: dict | None) -> dict | None:
    if not response_format or response_format.get("type") in ("text", "json_object"):
        return None
    if response_format.get("type") != "json_schema":
        raise RequestError(400, f"response_format.type {response_format.get('type')!r}: expected text, "
                                "json_object or json_schema", param="response_format.type")
    schema = (response_format.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        raise RequestError(400, "response_format.json_schema.schema must be a JSON schema object",
                           param="response_format.json_schema.schema")
    return schema


def completion_payload(served: ServedAnswer, max_new_tokens: int) -> dict:
    digest = hashlib.sha256(f"{time.time_ns()}{served.text}".encode()).hexdigest()[:24]
    finish = "length" if not served.fallback and served.completion_tokens >= max_new_tokens else "stop"
    return {
        "id": f"chatcmpl-{digest}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served.model_id,
        "system_fingerprint": served.fingerprint,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": served.text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": served.prompt_tokens, "completion_tokens": served.completion_tokens,
                  "total_tokens": served.prompt_tokens + served.completion_tokens},
        "fitsense": served.summary(),
    }


def create_app(service: CoachService, api_key: str | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="FitSense coach student", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.service = service

    def authorised(request: Request) -> bool:
        if api_key is None:
            return True
        sent = request.headers.get("authorization", "")
        token = sent[7:] if sent.startswith("Bearer ") else ""
        return hmac.compare_digest(token.encode(), api_key.encode())

    def unauthorised() -> JSONResponse:
        # Never echo what was sent: it may be a real key for another service.
        return RequestError(401, "missing or incorrect API key (send it as 'Authorization: Bearer <key>')",
                            kind="authentication_error", code="invalid_api_key").response()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": service.model_id, "system_fingerprint": service.ref.fingerprint,
                "batches": len(service.batcher.batch_sizes)}

    @app.get("/v1/models")
    async def models(request: Request):
        if not authorised(request):
            return unauthorised()
        return {"object": "list", "data": [{"id": service.model_id, "object": "model", "created": 0,
                                            "owned_by": "fitsense"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        if not authorised(request):
            return unauthorised()
        try:
            chat, constraints, schema = parse_request(await request.body())
            try:
                serve_request = service.prepare([m.model_dump() for m in chat.messages], constraints,
                                                chat.max_completion_tokens or chat.max_tokens, schema, chat.user)
            except PromptTooLongError as exc:
                raise RequestError(400, str(exc), param="messages", code="context_length_exceeded") from None
            try:
                served = await service.answer(serve_request)
            except GenerationTimeout as exc:
                raise RequestError(504, str(exc), kind="timeout", code="timeout") from None
        except RequestError as exc:
            return exc.response()
        except Exception as exc:  # a bug or a failed batch: this request fails, the server keeps serving
            log.exception("request failed")
            return RequestError(500, f"the server failed to answer: {type(exc).__name__}",
                                kind="server_error").response()
        return JSONResponse(completion_payload(served, serve_request.max_new_tokens))

    return app


def build_service(params: Params, model_uri: str | None = None, **kwargs) -> CoachService:
    """A service with the configured fallback teacher and inference log (each may be passed in instead)."""
    from fitsense.registry.serving.inference_log import InferenceLog, default_log_url
    from fitsense.registry.serving.service import make_fallback_teacher

    kwargs.setdefault("teacher", make_fallback_teacher(params))
    kwargs.setdefault("inference_log", InferenceLog(default_log_url(params)))
    return CoachService(params, model_uri, **kwargs)


def serve(params: Params, model_uri: str | None = None, host: str | None = None, port: int | None = None) -> None:
    """Run the server in the foreground (``fitsense serve``); a URI that does not resolve fails before it listens."""
    import uvicorn

    from fitsense.logs import configure_logging

    cfg = params.serving
    configure_logging(extra_env_names=(cfg.api_key_env, params.teacher.api_key_env))
    service = build_service(params, model_uri)
    service.load()
    api_key = os.environ.get(cfg.api_key_env) or None
    host, port = host or cfg.host, port or cfg.port
    log.info("serving %s on http://%s:%d/v1 (auth %s, fallback %s, batches of up to %d or %g ms)",
             service.model_id, host, port, "on" if api_key else "off", cfg.fallback, cfg.max_batch_size,
             cfg.max_wait_ms)
    uvicorn.run(create_app(service, api_key), host=host, port=port, log_level="warning", access_log=False)


@contextlib.contextmanager
def running_server(service: CoachService, api_key: str | None = None) -> Iterator[str]:
    """Start the server for ``service`` in a background thread on a free port; yields the base URL (``.../v1``)."""
    from fitsense.data.teacher.server import serve_in_thread

    with serve_in_thread(create_app(service, api_key), name="student-server", lifespan="on") as base_url:
        yield base_url
