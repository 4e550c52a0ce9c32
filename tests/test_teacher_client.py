"""OpenAITeacher against endpoints that answer 200 with a body that is not a usable chat completion."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from fitsense.config import load_params
from fitsense.data.teacher.client import OpenAITeacher, TeacherRequestError
from fitsense.data.teacher.server import free_port

BODIES = {
    "invalid_json": ('{"choices": [{"message": {"content": "{\\"plan', "application/json"),
    "not_json": ("<html>gateway says hi</html>", "text/html"),
    "no_choices": ('{"id": "x", "choices": []}', "application/json"),
    "wrong_shape": ('{"choices": [{"text": "legacy completion"}]}', "application/json"),
    "no_usage": ('{"choices": [{"message": {"role": "assistant", "content": "twelve chars"}}]}', "application/json"),
}


@pytest.fixture(scope="module")
def endpoint():
    async def chat(request):
        body, media = BODIES[request.path_params["case"]]
        return Response(body, media_type=media)

    app = Starlette(routes=[Route("/{case}/chat/completions", chat, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "test endpoint did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def complete(endpoint: str, case: str, tmp_path, monkeypatch):
    monkeypatch.setenv("FITSENSE_TEST_KEY", "sk-test")
    params = load_params(None, {"teacher.provider": "openai", "teacher.base_url": f"{endpoint}/{case}",
                                                  "teacher.api_key_env": "FITSENSE_TEST_KEY", "teacher.timeout_s": 5})
    teacher = OpenAITeacher(params.teacher)

    async def go():
        try:
            return await teacher.complete([{"role": "user", "content": "a question of 32 characters long"}])
        finally:
            await teacher.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("case", ["invalid_json", "not_json", "no_choices", "wrong_shape"])
def test_unusable_bodies_are_retryable_errors(endpoint, case, tmp_path, monkeypatch):
    with pytest.raises(TeacherRequestError) as err:
        complete(endpoint, case, tmp_path, monkeypatch)
    assert err.value.retryable
    assert "no choices" in str(err.value) if case == "no_choices" else "malformed response" in str(err.value)


def test_missing_usage_falls_back_to_estimated_tokens(endpoint, tmp_path, monkeypatch):
    completion = complete(endpoint, "no_usage", tmp_path, monkeypatch)
    assert completion.text == "twelve chars"
    assert (completion.prompt_tokens, completion.completion_tokens) == (8, 3)
