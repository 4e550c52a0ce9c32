"""The local OpenAI-compatible teacher server: protocol, auth, deterministic injected faults, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest
from teacher_factories import query_set

from fitsense.config import FaultConfig
from fitsense.data.teacher.offline import answer_query
from fitsense.data.teacher.server import NON_JSON_ANSWER, free_port, running_server
from fitsense.plan import AnswerParseError, parse_coach_answer
from fitsense.runs import write_jsonl

AUTH = {"Authorization": "Bearer sk-test"}


@pytest.fixture(scope="module")
def queries():
    return query_set(6)


def body(q) -> dict:
    return {"model": "fitsense-expert-v1", "messages": [m.model_dump() for m in q.messages]}


def test_chat_completions_speak_the_openai_protocol(queries):
    with running_server(queries) as (url, app):
        client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)
        assert [m.id for m in client.models.list()] == ["fitsense-expert-v1"]
        q = queries[0]
        resp = client.chat.completions.create(model="fitsense-expert-v1", messages=body(q)["messages"])
        assert resp.choices[0].message.content == answer_query(q).to_json()
        assert resp.choices[0].finish_reason == "stop"
        assert resp.usage.completion_tokens == len(resp.choices[0].message.content) // 4
        # a repair turn appended after the original messages still maps to the same query
        repair = body(q)["messages"] + [{"role": "assistant", "content": "oops"}, {"role": "user", "content": "fix"}]
        again = client.chat.completions.create(model="fitsense-expert-v1", messages=repair)
        assert again.choices[0].message.content == answer_query(q).to_json()


def test_auth_and_unknown_queries_are_rejected(queries):
    with running_server(queries, api_key="sk-right") as (url, app):
        assert httpx.post(f"{url}/chat/completions", json=body(queries[0])).status_code == 401
        wrong = httpx.post(f"{url}/chat/completions", json=body(queries[0]), headers=AUTH)
        assert wrong.status_code == 401
        unknown = {"model": "m", "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]}
        resp = httpx.post(f"{url}/chat/completions", json=unknown, headers={"Authorization": "Bearer sk-right"})
        assert resp.status_code == 400 and "no known query" in resp.json()["error"]["message"]
        bad = httpx.post(f"{url}/chat/completions", content=b"{not json", headers={"Authorization": "Bearer sk-right"})
        assert bad.status_code == 400


def _fault_trace(queries, faults, **kw) -> list:
    with running_server(queries, faults, hang_s=0.05, **kw) as (url, app):
        out = []
        for q in queries:
            for _ in range(3):
                r = httpx.post(f"{url}/chat/completions", json=body(q), headers=AUTH, timeout=5)
                out.append((r.status_code, r.headers.get("retry-after"),
                            r.json()["choices"][0]["finish_reason"] if r.status_code == 200 else None))
        return out, app.state.requests


def test_injected_faults_are_deterministic_and_of_every_kind(queries):
    faults = FaultConfig(rate=0.6)
    first, log = _fault_trace(queries, faults, retry_after_s=0.25)
    second, _ = _fault_trace(queries, faults, retry_after_s=0.25)
    assert first == second
    kinds = {fault for _, _, fault in log if fault}
    assert len(kinds) >= 4
    assert all(ra == "0.25" for status, ra, _ in first if status == 429)
    assert {status for status, _, _ in first} >= {200, 500}


def test_truncated_and_non_json_answers_fail_parsing(queries):
    for kind, finish in (("truncated", "length"), ("non_json", "stop")):
        with running_server(queries, FaultConfig(rate=1.0, kinds=[kind])) as (url, app):
            r = httpx.post(f"{url}/chat/completions", json=body(queries[0]), headers=AUTH).json()
        text = r["choices"][0]["message"]["content"]
        assert r["choices"][0]["finish_reason"] == finish
        assert kind != "non_json" or text == NON_JSON_ANSWER
        with pytest.raises(AnswerParseError):
            parse_coach_answer(text)


def test_timeout_fault_outlasts_the_client_timeout(queries):
    with running_server(queries, FaultConfig(rate=1.0, kinds=["timeout"]), hang_s=3) as (url, app):
        client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="m", messages=body(queries[0])["messages"])
        assert time.monotonic() - started < 2


def test_fitsense_teacher_serve_cli(tmp_path, queries):
    path = tmp_path / "queries.jsonl"
    write_jsonl(path, queries)
    (tmp_path / "params.yaml").write_text("{}\n")  # all defaults
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fitsense.app.cli", "teacher", "serve", "--queries", str(path),
                             "--port", str(port), "--latency-ms", "30", "--params", str(tmp_path / "params.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/models", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        started = time.monotonic()
        r = httpx.post(f"{url}/chat/completions", json=body(queries[1]), headers=AUTH, timeout=10)
        assert time.monotonic() - started >= 0.03
        assert json.loads(r.json()["choices"][0]["message"]["content"]) == json.loads(answer_query(queries[1]).to_json())
    finally:
        proc.terminate()
        proc.wait(timeout=20)
