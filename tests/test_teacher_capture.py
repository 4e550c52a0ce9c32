"""Teacher capture against the real local OpenAI-compatible server: retries, Retry-After, rate limits,
budget, cache, repairs, resume after kill -9, shards, and the API key never leaking."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from teacher_factories import make_query, query_set

from fitsense.config import FaultConfig, load_params
from fitsense.data.teacher.budget import Budget
from fitsense.data.teacher.capture import (
    RUN_FIELDS,
    capture_teacher_responses,
    merge_teacher_shards,
)
from fitsense.data.teacher.client import Completion, TeacherConfigError, make_teacher
from fitsense.data.teacher.journal import Journal
from fitsense.data.teacher.limiter import RateLimiter
from fitsense.data.teacher.offline import answer_query
from fitsense.data.teacher.requests import CaptureSession
from fitsense.data.teacher.server import running_server
from fitsense.errors import InputDataError
from fitsense.records import TeacherRecord
from fitsense.runs import RunContext, read_jsonl, write_jsonl

KEY_ENV = "FITSENSE_TEST_TEACHER_KEY"
FAKE_KEY = "sk-fitsense-LEAKCHECK-7f3a9c1e5b"
FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 2.0}


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)


@pytest.fixture(scope="module")
def queries():
    return query_set(12)


def make_ctx(root: Path, queries, url: str | None, run_id: str = "r1", cache: str = "cache", **teacher) -> RunContext:
    overrides = {"run.artifacts_dir": str(root / "artifacts")}
    if url is not None:
        overrides.update({"teacher.provider": "openai", "teacher.base_url": url, "teacher.api_key_env": KEY_ENV,
                          "teacher.cache_dir": str(root / cache), "teacher.requests_per_minute": 1e6})
    overrides.update({f"teacher.{k}": v for k, v in {**FAST, **teacher}.items()})
    ctx = RunContext.create(load_params(None, overrides), run_id)
    write_jsonl(ctx.stage_dir("queries") / "queries.jsonl", queries)
    return ctx


def records(ctx) -> list[TeacherRecord]:
    return read_jsonl(ctx.require("teacher", "records.jsonl"), TeacherRecord)


def content(recs) -> list[dict]:
    """Records without the fields that describe the run (latency, attempts, cache hit)."""
    return [r.model_dump(exclude=set(RUN_FIELDS)) for r in recs]


def test_clean_capture_matches_the_offline_teacher(tmp_path, queries):
    with running_server(queries) as (url, app):
        ctx = make_ctx(tmp_path, queries, url)
        summary = capture_teacher_responses(ctx)
    recs = records(ctx)
    assert [r.query_id for r in recs] == [q.query_id for q in queries]
    assert all(r.status == "ok" and r.attempts == 1 and r.prompt_tokens > 0 for r in recs)
    assert [r.response_text for r in recs] == [answer_query(q).to_json() for q in queries]
    assert summary["ok"] == 12 and summary["requests"] == 12 and app.state.stats["requests"] == 12
    assert sum(r.referral_required for r in recs) == sum(q.constraints.referral_required for q in queries)
    assert ctx.manifest("teacher")["rows"]["records"] == 12
    saved = json.loads((ctx.stage_dir("teacher") / "summary.json").read_text())
    assert saved["by_kind"]["safety_adjustment"]["ok"] > 0 and saved["latency_s"]["p95"] is not None


@pytest.mark.parametrize("kind,counter", [("429", "retries"), ("500", "retries"), ("timeout", "retries"),
                                          ("truncated", "repairs"), ("non_json", "repairs")])
def test_each_fault_kind_is_retried_or_repaired(tmp_path, queries, kind, counter):
    faults = FaultConfig(rate=0.5, kinds=[kind])
    with running_server(queries, faults, hang_s=1.5, retry_after_s=0.01) as (url, app):
        # Faults are a deterministic hash per attempt: at rate 0.5, 20 retries or 10 repairs leave ~0.01 chance to fail.
        ctx = make_ctx(tmp_path, queries, url, timeout_s=0.3, max_retries=20, max_repairs=10)
        summary = capture_teacher_responses(ctx)
    assert app.state.stats[f"fault_{kind}"] > 0
    assert summary[counter] > 0
    assert summary["ok"] == 12, summary["failure_reasons"]
    assert [r.response_text for r in records(ctx)] == [answer_query(q).to_json() for q in queries]


def test_retry_after_is_honoured(tmp_path, queries):
    wait = 0.4
    with running_server(queries, FaultConfig(rate=0.5, kinds=["429"]), retry_after_s=wait) as (url, app):
        ctx = make_ctx(tmp_path, queries, url, max_retries=10, backoff_base_s=0.001, backoff_max_s=0.002)
        capture_teacher_responses(ctx)
    log = app.state.requests
    gaps = [later[0] - t for i, (t, key, fault) in enumerate(log) if fault == "429"
            for later in log[i + 1:] if later[1] == key][:50]
    assert gaps and min(gaps) >= wait * 0.95  # our own backoff alone would retry within milliseconds


def test_retries_exhausted_are_recorded_failed_and_retried_by_the_next_run(tmp_path, queries):
    with running_server(queries, FaultConfig(rate=1.0, kinds=["500"])) as (url, app):
        ctx = make_ctx(tmp_path, queries, url, max_retries=2)
        summary = capture_teacher_responses(ctx)
        assert app.state.stats["requests"] == 3 * 12
    recs = records(ctx)
    assert all(r.status == "failed" and r.failure_reason.startswith("retries_exhausted: HTTP 500")
               and r.attempts == 3 for r in recs)
    assert summary["failure_reasons"] == {"retries_exhausted": 12}
    with running_server(queries) as (url, app):  # the provider recovered: the rerun captures everything
        ctx = make_ctx(tmp_path, queries, url, max_retries=2)
        assert capture_teacher_responses(ctx)["ok"] == 12


def test_rate_limiter_bounds_requests_per_minute():
    async def go():
        limiter = RateLimiter(requests_per_minute=1200, tokens_per_minute=1e9)  # 20/s, burst 20
        stamps = []
        for _ in range(50):
            await limiter.acquire(10)
            stamps.append(time.monotonic())
        return stamps

    stamps = asyncio.run(go())
    assert stamps[-1] - stamps[0] >= (50 - 20) / 20 * 0.95
    for i, t in enumerate(stamps):  # any 1 s window: at most burst + rate x 1 s
        assert sum(1 for u in stamps[i:] if u - t <= 1.0) <= 40


def test_rate_limiter_bounds_tokens_per_minute():
    async def go():
        limiter = RateLimiter(requests_per_minute=1e6, tokens_per_minute=60_000)  # 1000 tokens/s
        start = time.monotonic()
        for _ in range(5):
            await limiter.acquire(500)
        return time.monotonic() - start

    assert asyncio.run(go()) >= (2500 - 1000) / 1000 * 0.95


def test_capture_respects_requests_per_minute_against_the_server(tmp_path, queries):
    with running_server(queries) as (url, app):
        ctx = make_ctx(tmp_path, queries, url, requests_per_minute=300, concurrency=8)  # 5/s, burst 5
        capture_teacher_responses(ctx)
    times = [t for t, _, _ in app.state.requests]
    assert len(times) == 12 and times[-1] - times[0] >= (12 - 5) / 5 * 0.9


def test_budget_cap_stops_cleanly_and_a_bigger_budget_resumes_without_repaying(tmp_path, queries):
    with running_server(queries) as (url, app):
        ctx = make_ctx(tmp_path, queries, url, concurrency=3, **{"budget.max_requests": 5})
        summary = capture_teacher_responses(ctx)
        assert app.state.stats["requests"] == 5
        recs = records(ctx)
        assert sum(r.status == "ok" for r in recs) == 5
        assert all(r.failure_reason.startswith("budget_exhausted") for r in recs if r.status == "failed")
        assert summary["budget_exhausted"] == 7 and len(recs) == 12
        ctx = make_ctx(tmp_path, queries, url, concurrency=3)
        summary = capture_teacher_responses(ctx)
        assert summary["ok"] == 12 and app.state.stats["requests"] == 12  # the first 5 came from the cache


def test_usd_budget_is_never_exceeded(tmp_path, queries):
    prices = {"price_per_1k_input": 1.0, "price_per_1k_output": 1.0, "max_tokens": 400}
    with running_server(queries) as (url, app):
        ctx = make_ctx(tmp_path, queries, url, concurrency=4, **prices, **{"budget.max_usd": 3.0})
        summary = capture_teacher_responses(ctx)
    assert 0 < summary["ok"] < 12 and summary["paid_usd"] <= 3.0
    assert summary["failure_reasons"]["budget_exhausted"] == 12 - summary["ok"]


def test_fully_cached_rerun_makes_no_requests(tmp_path, queries):
    with running_server(queries) as (url, app):
        first = make_ctx(tmp_path, queries, url, run_id="first")
        capture_teacher_responses(first)
        second = make_ctx(tmp_path, queries, url, run_id="second")
        summary = capture_teacher_responses(second)
        assert app.state.stats["requests"] == 12
    assert summary["requests"] == 0 and summary["cache_hits"] == 12 and summary["paid_usd"] == 0
    assert all(r.cache_hit and r.attempts == 0 for r in records(second))
    assert content(records(second)) == content(records(first))


def test_bad_answers_are_repaired_with_the_exact_error(tmp_path):
    """A constraint violation gets a repair turn that names it; the corrected answer is kept."""
    q = make_query(days=3)
    good = answer_query(q)
    bad = good.model_copy(update={"days": good.days[:2]})
    sent = []

    class Scripted:
        model, remote = "scripted", False

        async def complete(self, messages, extra=None):
            sent.append(messages)
            return Completion(bad.to_json() if len(sent) == 1 else good.to_json(), 10, 10)

        async def aclose(self):
            pass

    cfg = load_params(None).teacher
    capture = CaptureSession(Scripted(), cfg, None, None, Budget(None, None), [])
    rec = asyncio.run(capture.capture_one(q))
    assert rec.status == "ok" and rec.repairs == 1 and rec.response_text == good.to_json()
    assert sent[1][-2] == {"role": "assistant", "content": bad.to_json()}
    assert "days_per_week: 2 days, asked for 3" in sent[1][-1]["content"]


def test_answers_that_stay_bad_are_recorded_failed_with_the_reason(tmp_path, queries):
    with running_server(queries, FaultConfig(rate=1.0, kinds=["non_json"])) as (url, app):
        ctx = make_ctx(tmp_path, queries, url, max_repairs=2)
        summary = capture_teacher_responses(ctx)
    recs = records(ctx)
    assert all(r.status == "failed" and r.repairs == 2 and not r.schema_valid and r.answer is None
               and r.failure_reason == "invalid_answer: no JSON object in the response" for r in recs)
    assert summary["failure_reasons"] == {"invalid_answer": 12} and app.state.stats["requests"] == 36


def test_torn_journal_line_is_dropped(tmp_path, queries):
    path = tmp_path / "journal.jsonl"
    rec = TeacherRecord(query_id="q1", user_id=1, kind="plan_creation", teacher_model="m", status="ok")
    path.write_text(rec.model_dump_json() + "\n" + rec.model_dump_json()[:25])
    journal = Journal(path)
    assert list(journal.done) == ["q1"]
    journal.close()
    assert path.read_text().count("\n") == 1


CHILD = """
import sys
from fitsense.config import load_params
from fitsense.runs import RunContext
from fitsense.data.teacher.capture import capture_teacher_responses
ctx = RunContext.create(load_params(sys.argv[1], None), sys.argv[2])
capture_teacher_responses(ctx)
"""


def test_resume_after_kill_9_gives_the_same_records_as_a_clean_run(tmp_path):
    queries = query_set(40)
    with running_server(queries, FaultConfig(latency_ms=60)) as (url, app):
        clean = make_ctx(tmp_path, queries, url, run_id="clean", cache="cache-clean", concurrency=2)
        capture_teacher_responses(clean)

        killed = make_ctx(tmp_path, queries, url, run_id="killed", cache="cache-killed", concurrency=2)
        params_file = tmp_path / "killed.yaml"
        params_file.write_text(json.dumps(killed.params.model_dump(mode="json")))
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(params_file), "killed"], env=env)
        partial = killed.stage_dir("teacher") / ".partial"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = sum(p.read_text().count("\n") for p in partial.glob("*.jsonl")) if partial.exists() else 0
            if lines >= 8:
                break
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert not (killed.stage_dir("teacher") / "records.jsonl").exists()
        before = app.state.stats["requests"]
        summary = capture_teacher_responses(killed)
        resent = app.state.stats["requests"] - before
    assert 8 <= summary["resumed"] < 40 and resent <= 40 - summary["resumed"]
    recs = records(killed)
    assert len({r.query_id for r in recs}) == len(recs) == 40
    assert content(recs) == content(records(clean))


def test_shards_merge_into_the_same_records(tmp_path, queries):
    with running_server(queries) as (url, app):
        whole = make_ctx(tmp_path, queries, url, run_id="whole", cache="cache-whole")
        capture_teacher_responses(whole)
        sharded = make_ctx(tmp_path, queries, url, run_id="sharded", cache="cache-sharded")
        with pytest.raises(FileNotFoundError, match="shard 1 of 3"):
            capture_teacher_responses(sharded, shard_index=0, num_shards=3)
            merge_teacher_shards(sharded, 3)
        for i in (1, 2):
            capture_teacher_responses(sharded, shard_index=i, num_shards=3)
        summary = merge_teacher_shards(sharded, 3)
    assert summary["queries"] == 12 and summary["requests"] == 12
    assert content(records(sharded)) == content(records(whole))
    assert sharded.manifest("teacher")["rows"]["records"] == 12


def test_api_key_never_appears_in_logs_or_artifacts(tmp_path, queries, caplog):
    caplog.set_level(logging.DEBUG)
    faults = FaultConfig(rate=0.4)
    with running_server(queries, faults, hang_s=1.0, retry_after_s=0.01) as (url, app):
        ctx = make_ctx(tmp_path, queries, url, timeout_s=0.3, max_retries=8)
        capture_teacher_responses(ctx)
        # a request the server rejects (unknown model messages) also carries no key into the record
        bad = make_ctx(tmp_path, [make_query(qid="zz")], url, run_id="unknown")
        bad_queries = bad.stage_dir("queries") / "queries.jsonl"
        bad_queries.write_text(bad_queries.read_text().replace("Please write my weekly plan.", "Anything?"))
        summary = capture_teacher_responses(bad)
    assert summary["failure_reasons"] == {"request_rejected": 1}
    with running_server(queries, api_key="sk-the-right-key") as (url, app):  # echoes the wrong key in its 401
        wrong = make_ctx(tmp_path, queries, url, run_id="wrong-key", cache="cache-wrong")
        summary = capture_teacher_responses(wrong)
    assert summary["failure_reasons"] == {"request_rejected": 12}
    assert "Incorrect API key provided: ***" in records(wrong)[0].failure_reason
    assert FAKE_KEY not in caplog.text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_missing_api_key_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_ENV)
    cfg = load_params(None, {"teacher.provider": "openai", "teacher.api_key_env": KEY_ENV}).teacher
    with pytest.raises(TeacherConfigError, match=KEY_ENV):
        make_teacher(cfg, [])


def test_offline_provider_captures_every_query_without_a_server(tmp_path, queries):
    ctx = make_ctx(tmp_path, queries, None)
    summary = capture_teacher_responses(ctx)
    assert summary["ok"] == 12 and summary["requests"] == 0
    assert [r.response_text for r in records(ctx)] == [answer_query(q).to_json() for q in queries]


def test_offline_chunks_answered_by_forked_workers_give_the_records_of_one_pass(tmp_path, queries, monkeypatch):
    """Queries captured 5 at a time with the expert's answers from two forked workers: the same records and
    summary as a single in-process pass; the journal is gone afterwards."""
    import fitsense.data.teacher.capture as stage
    from fitsense.runs import read_json

    whole = make_ctx(tmp_path / "whole", queries, None)
    capture_teacher_responses(whole)
    chunked = make_ctx(tmp_path / "chunked", queries, None)
    monkeypatch.setattr(stage, "CHUNK", 5)
    monkeypatch.setattr(stage, "PARALLEL_FROM", 0)
    monkeypatch.setattr(stage, "available_cpus", lambda: 2)
    summary = capture_teacher_responses(chunked)
    one, many = (ctx.require("teacher", "records.jsonl").read_bytes() for ctx in (whole, chunked))
    assert many == one
    expected = read_json(whole.require("teacher", "summary.json"))
    assert {k: v for k, v in summary.items() if k != "wall_s"} == {k: v for k, v in expected.items() if k != "wall_s"}
    assert not (chunked.stage_dir("teacher") / ".partial").exists()


def test_malformed_query_in_a_later_chunk_is_named_by_file_and_line(tmp_path, queries, monkeypatch):
    import fitsense.data.teacher.capture as stage

    ctx = make_ctx(tmp_path, queries, None)
    path = ctx.stage_dir("queries") / "queries.jsonl"
    lines = path.read_text().splitlines()
    lines[10] = lines[10].replace('"kind":"', '"kind":"x')  # line 11, in the third chunk of 5
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(stage, "CHUNK", 5)
    with pytest.raises(InputDataError, match=r"queries\.jsonl:11: invalid query record: kind"):
        capture_teacher_responses(ctx)
