"""`fitsense serve` against a real server (uvicorn in-process), through the openai SDK and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import openai
import pytest
from serving_factories import register_tiny_student, serving_params

from fitsense.plan import parse_coach_answer
from fitsense.records import CoachingQuery
from fitsense.registry.serving.inference_log import InferenceLog, export_queries
from fitsense.registry.serving.server import build_service, running_server
from fitsense.registry.serving.student import load_version
from fitsense.runs import read_jsonl

RED_FLAG = "I'm 52, I train 3 days a week at home. I fainted during my last workout. How should I train now?"
KEY = "sk-serve-test-0123456789"


@pytest.fixture(scope="module")
def registered(tmp_path_factory, tiny_model_dir):
    return register_tiny_student(tmp_path_factory.mktemp("serving"), tiny_model_dir)


@pytest.fixture(scope="module")
def queries(registered) -> list[CoachingQuery]:
    found = read_jsonl(registered.run_dir / "queries" / "queries.jsonl", CoachingQuery)
    return [q for q in found if not q.constraints.referral_required]


@pytest.fixture(scope="module")
def server(registered):
    service = build_service(serving_params(registered))
    with running_server(service) as base_url:
        yield base_url, service


def _sdk(base_url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)


def _create(client, query: CoachingQuery, **kwargs):
    return client.chat.completions.create(
        model="fitsense-coach-student", messages=[m.model_dump() for m in query.messages],
        extra_body={"constraints": query.constraints.model_dump()}, **kwargs)


def test_protocol_shape_through_the_openai_sdk(server, registered, queries):
    base_url, service = server
    client = _sdk(base_url)
    resp = _create(client, queries[0], max_tokens=8)
    assert resp.object == "chat.completion" and resp.model == "fitsense-coach-student/1"
    from mlflow import MlflowClient

    digest = MlflowClient().get_model_version("fitsense-coach-student", "1").tags["adapter_sha256"]
    assert resp.system_fingerprint == digest and len(digest) == 64
    assert resp.choices[0].message.role == "assistant" and isinstance(resp.choices[0].message.content, str)
    usage = resp.usage
    assert usage.prompt_tokens > 100 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    info = resp.model_extra["fitsense"]
    assert info["model_version"] == resp.model and info["screen"] == "pass"
    assert [m.id for m in client.models.list().data] == ["fitsense-coach-student/1"]
    health = httpx.get(base_url.removesuffix("/v1") + "/health").json()
    assert health["status"] == "ok" and health["model"] == "fitsense-coach-student/1"


def test_an_invalid_student_answer_falls_back_to_the_teacher_and_says_so(server, queries):
    base_url, _ = server
    resp = _create(_sdk(base_url), queries[1])
    info = resp.model_extra["fitsense"]
    # The tiny random student never writes a plan: the offline teacher's answer replaces it.
    assert info["valid"] is False and info["fallback"] is True and info["fallback_model"] == "fitsense-expert-v1"
    assert info["fallback_valid"] is True and info["fallback_violations"] == []
    answer = parse_coach_answer(resp.choices[0].message.content)
    assert len(answer.days) == queries[1].constraints.days_per_week
    assert resp.model == "fitsense-coach-student/1"  # the version the student answer came from


def test_without_fallback_the_students_answer_is_returned_unmarked(registered, queries):
    service = build_service(serving_params(registered, **{"serving.fallback": "off"}))
    with running_server(service) as base_url:
        info = _create(_sdk(base_url), queries[0]).model_extra["fitsense"]
    assert info["fallback"] is False and info["valid"] is False and info["error"]


def test_the_safety_screen_answers_red_flags_with_a_referral_without_generating(server):
    base_url, service = server
    batches = len(service.batcher.batch_sizes)
    resp = _sdk(base_url).chat.completions.create(model="x", messages=[{"role": "user", "content": RED_FLAG}])
    info = resp.model_extra["fitsense"]
    assert info["screen"] == "refer" and info["screen_flags"] == ["fainting"] and info["fallback"] is False
    answer = parse_coach_answer(resp.choices[0].message.content)
    assert answer.safety.referral_required and answer.days == [] and "clinician" in answer.safety.reason
    assert len(service.batcher.batch_sizes) == batches and resp.usage.completion_tokens == 0


def test_guided_answers_keep_to_the_grammar_of_their_constraints(registered, queries):
    import xgrammar as xgr

    from fitsense.catalogue import CATALOGUE
    from fitsense.plan_grammar import constrained_plan_schema

    service = build_service(serving_params(registered, **{"serving.fallback": "off", "serving.max_new_tokens": 40}))
    with running_server(service) as base_url:
        client = _sdk(base_url)
        resp = _create(client, queries[0])
        nothing_safe = queries[0].constraints.model_copy(update={"avoid_exercises": [e.name for e in CATALOGUE]})
        refused = client.chat.completions.create(model="x", messages=[m.model_dump() for m in queries[0].messages],
                                                 extra_body={"constraints": nothing_safe.model_dump()})
        raw = client.chat.completions.create(model="x", messages=[m.model_dump() for m in queries[0].messages])
        compiler = service.current.engine.grammars.compiler
    info = resp.model_extra["fitsense"]
    assert info["decoding"] == "guided" and raw.model_extra["fitsense"]["decoding"] == "raw"
    # The tiny random student writes only what its request's grammar allows (cut off at max_tokens).
    grammar = compiler.compile_json_schema(json.dumps(constrained_plan_schema(queries[0].constraints, False)),
                                           any_whitespace=False, separators=(",", ":"))
    text = resp.choices[0].message.content
    assert text.startswith('{"plan_name":"') and xgr.GrammarMatcher(grammar).accept_string(text), text
    assert refused.model_extra["fitsense"]["error"].startswith("no safe exercise")


def test_concurrent_requests_are_micro_batched(server, queries):
    base_url, service = server

    async def burst():
        client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
        try:
            return await asyncio.gather(*[client.chat.completions.create(
                model="x", messages=[m.model_dump() for m in q.messages], max_tokens=4) for q in queries[:4]])
        finally:
            await client.close()

    before = len(service.batcher.batch_sizes)
    answers = asyncio.run(burst())
    assert len(answers) == 4 and all(a.model == "fitsense-coach-student/1" for a in answers)
    assert max(service.batcher.batch_sizes[before:]) > 1


def test_log_rows_are_written_and_become_next_round_queries(server, queries, tmp_path):
    base_url, service = server
    client = _sdk(base_url)
    _create(client, queries[2])
    client.chat.completions.create(model="x", messages=[{"role": "user", "content": RED_FLAG}])
    service.flush_log()
    log = InferenceLog(str(service.log.engine.url))
    rows = log.rows()
    log.close()
    fallback_row, referral_row = rows[-2], rows[-1]
    assert fallback_row["model_version"] == "fitsense-coach-student/1" and fallback_row["fallback"] is True
    assert fallback_row["constraints"] == queries[2].constraints.model_dump()
    assert fallback_row["user_text"] == queries[2].messages[-1].content and len(fallback_row["request_hash"]) == 64
    assert fallback_row["screen_decision"] == "pass" and fallback_row["valid"] is False
    assert fallback_row["latency_ms"] > 0 and fallback_row["prompt_tokens"] > 0 and fallback_row["status"] == 200
    assert referral_row["screen_decision"] == "refer" and referral_row["fallback"] is False

    out = tmp_path / "next.jsonl"
    summary = export_queries(str(service.log.engine.url), out)
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["queries"] == len(exported) > 0 and exported[0]["source"]["fallback"] is True
    assert all(e["constraints"] for e in exported)  # requests without constraints are not exported
    from fitsense.data.teacher.loading import QueryHead, read_queries

    assert len(read_queries(out, QueryHead)) == len(exported)  # what capture reads for a remote teacher


def test_auth_needs_the_key_and_never_echoes_it(registered, queries, caplog):
    service = build_service(serving_params(registered, **{"serving.fallback": "off"}))
    with running_server(service, api_key=KEY) as base_url:
        for wrong in ("sk-wrong-key-987654321", None):
            headers = {"Authorization": f"Bearer {wrong}"} if wrong else {}
            r = httpx.post(f"{base_url}/chat/completions", headers=headers,
                           json={"messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            assert (wrong or KEY) not in r.text and KEY not in r.text
        with pytest.raises(openai.AuthenticationError):
            _sdk(base_url, "sk-wrong-key-987654321").models.list()
        assert _create(_sdk(base_url, KEY), queries[0], max_tokens=4).model == "fitsense-coach-student/1"
    assert KEY not in caplog.text


def test_bad_requests_get_openai_style_errors_and_the_server_lives_on(server, queries):
    base_url, _ = server
    url = f"{base_url}/chat/completions"
    messages = [m.model_dump() for m in queries[0].messages]
    good = queries[0].constraints.model_dump()

    r = httpx.post(url, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(url, json={"messages": messages, "constraints": {**good, "colour": "red"}})
    assert r.status_code == 422 and r.json()["error"]["message"] == "constraints.colour: unknown field"
    r = httpx.post(url, json={"messages": messages, "constraints": {**good, "days_per_week": 9}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "constraints.days_per_week"
    r = httpx.post(url, json={"messages": [{"role": "user", "content": "squat " * 3000}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(url, json={"messages": messages, "frobnicate": True})
    assert r.status_code == 400 and "frobnicate" in r.json()["error"]["message"]
    r = httpx.post(url, json={"messages": messages, "stream": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    with pytest.raises(openai.BadRequestError):
        _sdk(base_url).chat.completions.create(model="x", messages=[])
    assert httpx.get(base_url.removesuffix("/v1") + "/health").status_code == 200


def test_response_format_json_schema_is_checked(server, queries):
    base_url, _ = server
    schema = {"type": "object", "required": ["plan_name"], "properties": {"plan_name": {"type": "string"}}}
    resp = _create(_sdk(base_url), queries[3], response_format={"type": "json_schema",
                                                               "json_schema": {"name": "plan", "schema": schema}})
    info = resp.model_extra["fitsense"]
    assert info["fallback"] is True and info["fallback_valid"] is True  # the teacher's plan matches the schema
    r = httpx.post(f"{base_url}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                         "response_format": {"type": "xml"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.type"


def test_generation_past_its_timeout_is_a_504(registered, queries):
    def slow_loader(params, ref):
        answerer = load_version(params, ref)
        answer_batch = answerer.answer_batch

        def slow(requests):
            time.sleep(1.0)
            return answer_batch(requests)

        answerer.answer_batch = slow
        return answerer

    service = build_service(serving_params(registered, **{"serving.timeout_s": 0.3, "serving.fallback": "off"}),
                            loader=slow_loader)
    with running_server(service) as base_url:
        r = httpx.post(f"{base_url}/chat/completions", json={"messages": [m.model_dump() for m in queries[0].messages]},
                       timeout=30)
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        assert httpx.get(base_url.removesuffix("/v1") + "/health").status_code == 200
        service.flush_log()
        assert service.log.rows()[-1]["status"] == 504


def test_an_alias_change_is_served_without_restart_and_no_answer_mixes_versions(registered, tiny_model_dir,
                                                                                  queries):
    from fitsense.registry.register import promote

    params = serving_params(registered, **{"serving.reload_interval_s": 0.2, "serving.fallback": "off"})
    service = build_service(params)
    with running_server(service) as base_url:
        client = _sdk(base_url)
        first = _create(client, queries[0], max_tokens=4)
        assert first.model == "fitsense-coach-student/1"
        second = register_tiny_student(registered.run_dir.parent, tiny_model_dir, run_id="serve2",
                                       tracking_uri=params.registry.tracking_uri, adapter_seed=1)
        promote(second.params, "2", force=True)
        seen = {}
        deadline = time.monotonic() + 60
        while "fitsense-coach-student/2" not in seen and time.monotonic() < deadline:
            resp = _create(client, queries[0], max_tokens=4)
            seen[resp.model] = resp.system_fingerprint
        assert set(seen) == {"fitsense-coach-student/1", "fitsense-coach-student/2"} or \
            set(seen) == {"fitsense-coach-student/2"}
        assert seen["fitsense-coach-student/2"] != first.system_fingerprint  # the new adapter answered
        service.flush_log()
        rows = service.log.rows()
    promote(second.params, "1", force=True)  # leave champion where the other tests expect it
    assert {r["model_version"] for r in rows} <= {"fitsense-coach-student/1", "fitsense-coach-student/2"}


def test_cli_serve_with_a_model_uri_that_does_not_resolve_is_a_one_line_error(registered, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from fitsense.app.cli import app

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"registry": {"tracking_uri": registered.params.registry.tracking_uri},
                                           "run": {"artifacts_dir": str(tmp_path / "artifacts")}}))  # the log's folder
    result = CliRunner().invoke(app, ["serve", "--params", str(params_file), "--model-uri",
                                      "models:/fitsense-coach-student@nope"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "models:/fitsense-coach-student@nope" in lines[0] and "does not resolve" in lines[0]


def test_cli_ask_prints_the_answer_and_the_model_version(registered, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from fitsense.app.cli import app

    params = serving_params(registered)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    result = CliRunner().invoke(app, ["ask", RED_FLAG, "--params", str(params_file)])
    assert result.exit_code == 0, result.output
    assert "fitsense-coach-student/1" in result.stdout and "referral_required" in result.stdout


def test_cli_turns_the_inference_log_into_a_runs_queries(server, registered, queries, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from fitsense.app.cli import app

    base_url, service = server
    _create(_sdk(base_url), queries[4])
    service.flush_log()
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"run": {"artifacts_dir": str(tmp_path / "artifacts")}}))
    result = CliRunner().invoke(app, ["teacher", "from-inference-log", "--run-id", "round2", "--params",
                                      str(params_file), "--url", str(service.log.engine.url)])
    assert result.exit_code == 0, result.output
    written = tmp_path / "artifacts" / "round2" / "queries"
    assert json.loads(result.stdout)["queries"] >= 1 and (written / "manifest.json").exists()
    assert any(json.loads(line)["messages"][-1]["content"] == queries[4].messages[-1].content
               for line in (written / "queries.jsonl").read_text().splitlines())


def test_fallback_off_survives_yaml():
    from fitsense.config import load_params

    assert load_params(None, ["serving.fallback=off"]).serving.fallback == "off"  # YAML reads `off` as false


def test_evaluation_scores_the_served_student_through_the_teachers_client(server, tiny_model_dir, tmp_path):
    from eval_factories import make_adapter, make_eval_run
    from mlflow import MlflowClient

    from fitsense.evaluation.evaluate import evaluate_models
    from fitsense.tracking import setup_mlflow

    base_url, service = server
    service.flush_log()
    logged = len(service.log.rows())
    ctx = make_eval_run(tmp_path, tiny_model_dir, make_adapter(tiny_model_dir, tmp_path / "adapter"), run_id="served",
                        **{"evaluation.max_examples": 3, "evaluation.max_new_tokens": 8, "evaluation.batch_size": 3,
                           "evaluation.guided": False, "evaluation.endpoint.base_url": base_url,
                           "evaluation.endpoint.concurrency": 2})
    evaluate_models(ctx)
    out = ctx.run_dir / "evaluation"
    metrics = json.loads((out / "metrics.json").read_text())
    served = metrics["models"]["student_served"]
    assert served["n"] == 3 and served["latency_p50_s"] > 0 and served["latency_p95_s"] >= served["latency_p50_s"]
    assert served["tokens_per_s"] > 0 and served["rates"]["validity"]["n"] == 3
    assert metrics["served"]["models"] == ["fitsense-coach-student/1"]
    assert {"student_served_validity", "student_served_latency_p50_s"} <= set(metrics)
    answers = read_jsonl(out / "answers_student_served.jsonl")
    assert len(answers) == 3 and all(a["latency_s"] > 0 and a["prompt_tokens"] > 100 and a["completion_tokens"] > 0
                                     for a in answers)
    comparison = (out / "comparison.md").read_text()
    assert "| base | student | student_served | teacher |" in comparison and base_url in comparison
    # The server answered exactly these requests, each with its query's constraints and the referral label withheld.
    service.flush_log()
    rows = service.log.rows()[logged:]
    assert len(rows) == 3 and all(r["constraints"]["referral_required"] is False for r in rows)
    setup_mlflow(ctx.params)
    run_id = json.loads((out / "mlflow_runs.json").read_text())["student_served"]
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["model_role"] == "student_served" and run.data.tags["endpoint"] == base_url
    assert run.data.metrics["latency_p50_s"] == served["latency_p50_s"] and "validity" in run.data.metrics
    assert "per_example.json" in {a.path for a in MlflowClient().list_artifacts(run_id)}


def test_an_endpoint_that_does_not_answer_is_an_error_naming_the_setting():
    from fitsense.config import load_params
    from fitsense.evaluation.endpoint import EndpointError, served_answers
    from fitsense.evaluation.inference import CoachRequest
    from fitsense.data.teacher.server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    params = load_params(None, {"evaluation.endpoint.base_url": url, "teacher.max_retries": 0})
    with pytest.raises(EndpointError, match=re.escape(f"evaluation.endpoint {url}: query q7: ")):
        served_answers(params, [CoachRequest([{"role": "user", "content": "hi"}])], ["q7"])


def test_capture_from_the_inference_log_asks_the_teacher_what_the_student_was_asked(registered, tmp_path,
                                                                                     monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from fitsense.app.cli import app
    from fitsense.data.prompts import profile_text
    from fitsense.data.teacher.server import running_server as teacher_server
    from fitsense.records import TeacherRecord

    log_url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    every = read_jsonl(registered.run_dir / "queries" / "queries.jsonl", CoachingQuery)
    latest = {q.user_id: q for q in every}  # `ask --user-id` takes the user's latest query
    user = next(q for q in latest.values() if not q.constraints.referral_required and q.kind == "plan_creation")
    params_file = tmp_path / "serve.yaml"
    params_file.write_text(yaml.safe_dump(serving_params(registered, **{
        "serving.fallback": "off", "serving.log_url": log_url}).model_dump(mode="json")))
    asked = CliRunner().invoke(app, ["ask", "New plan please.", "--user-id", str(user.user_id), "--params",
                                     str(params_file), "--run-id", registered.run_id])
    assert asked.exit_code == 0, asked.output
    log = InferenceLog(log_url)
    row = log.rows()[-1]
    log.close()
    # The student was asked the question with the user's profile and constraint lines, and the constraints sent.
    question = f"New plan please.\n{profile_text(user.constraints, user.context)}"
    assert row["messages"][-1]["content"] == question and row["user_id"] == str(user.user_id)
    assert str(user.context.profile.age) in question and f"{user.constraints.days_per_week}" in question
    assert row["constraints"] == user.constraints.model_dump()

    round2 = tmp_path / "round2.yaml"
    settings = {"run": {"artifacts_dir": str(tmp_path / "artifacts")}, "serving": {"log_url": log_url},
                "teacher": {"cache_dir": str(tmp_path / "cache")}}
    round2.write_text(yaml.safe_dump(settings))
    offline = CliRunner().invoke(app, ["teacher", "capture", "--from-inference-log", "--run-id", "r2",
                                       "--params", str(round2)])
    assert offline.exit_code == 2 and "teacher.provider=openai" in offline.output

    # A remote teacher that knows this user's query answers the logged prompt as the structured query asks.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-teacher-test")
    knows = CoachingQuery.model_validate({**user.model_dump(), "messages": row["messages"]})
    with teacher_server([knows]) as (teacher_url, teacher_app):
        settings["teacher"].update(provider="openai", base_url=teacher_url)
        round2.write_text(yaml.safe_dump(settings))
        result = CliRunner().invoke(app, ["teacher", "capture", "--from-inference-log", "--run-id", "r2",
                                          "--params", str(round2)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inference_log"]["queries"] == 1
    exported = read_jsonl(tmp_path / "artifacts" / "r2" / "queries" / "queries.jsonl")
    assert [(q["user_id"], q["messages"], q["constraints"]) for q in exported] == \
        [(user.user_id, row["messages"], user.constraints.model_dump())]
    records = read_jsonl(tmp_path / "artifacts" / "r2" / "teacher" / "records.jsonl", TeacherRecord)
    assert [(r.status, r.user_id) for r in records] == [("ok", user.user_id)]  # valid and within the constraints
    assert teacher_app.state.stats["requests"] == 1


def test_a_request_without_a_system_prompt_gets_the_one_its_version_was_trained_with(tmp_path, tiny_model_dir):
    ctx = register_tiny_student(tmp_path, tiny_model_dir, run_id="prompted", system_prompt="You are Coach Ada.")
    service = build_service(serving_params(ctx, **{"serving.fallback": "off"}))
    service.load()
    request = service.prepare([{"role": "user", "content": "Please write my weekly plan."}])
    assert request.messages[0] == {"role": "system", "content": "You are Coach Ada."}
    own = service.prepare([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert [m["content"] for m in own.messages] == ["Be brief.", "Hi"]  # a client's own prompt is kept
