"""Teacher capture figures against the real local OpenAI-compatible server (prints figures).

1. Throughput: 2,000 distinct queries, 100 ms injected latency, concurrency 64.
   Bound = N x latency / concurrency; target: wall <= 1.1 x bound.
2. Fully cached rerun of 10,000 queries (a fresh run ID sharing the cache); target < 2 s.
3. Faults: 30% injected faults (429/500/timeout/truncated/non-JSON): every query ends
   captured or recorded failed, no duplicates.

Queries come from the real synthetic + query stages. Usage:
    python benchmarks/bench_teacher.py [--n-users 300] [--workdir /tmp/fitsense-bench-teacher]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import httpx

from fitsense.config import FaultConfig, load_params
from fitsense.data.queries import build_queries
from fitsense.data.synthetic import generate_synthetic_data
from fitsense.data.teacher.capture import capture_teacher_responses
from fitsense.data.teacher.server import free_port, running_server
from fitsense.records import CoachingQuery, TeacherRecord
from fitsense.runs import RunContext, read_jsonl, write_jsonl

KEY_ENV = "FITSENSE_BENCH_KEY"


def make_ctx(root: Path, run_id: str, url: str | None = None, **teacher) -> RunContext:
    overrides = {"run.artifacts_dir": str(root), "synthetic.n_users": ARGS.n_users, "queries.n_queries": 10_000}
    if url:
        overrides.update({"teacher.provider": "openai", "teacher.base_url": url, "teacher.api_key_env": KEY_ENV,
                          "teacher.cache_dir": str(root / "cache"), "teacher.requests_per_minute": 1e7,
                          "teacher.tokens_per_minute": 1e10})
    overrides.update({f"teacher.{k}": v for k, v in teacher.items()})
    return RunContext.create(load_params(root / "none.yaml", overrides), run_id)


def with_queries(root: Path, run_id: str, queries: list[CoachingQuery], **kw) -> RunContext:
    ctx = make_ctx(root, run_id, **kw)
    write_jsonl(ctx.stage_dir("queries") / "queries.jsonl", queries)
    return ctx


@contextlib.contextmanager
def served(queries_path: Path, latency_ms: float = 0) -> Iterator[str]:
    """``fitsense teacher serve`` in its own process (as in production: client and server do not share a GIL)."""
    port = free_port()
    # the venv's own entry point, so the benchmark also runs without the venv activated
    cmd = [str(Path(sys.executable).with_name("fitsense")), "teacher", "serve", "--queries", str(queries_path), "--port", str(port),
           "--latency-ms", str(latency_ms), "--params", str(queries_path.parent / "none.yaml")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{url}/models", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("fitsense teacher serve did not start") from None
                time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check_records(ctx: RunContext, n: int) -> dict:
    records = read_jsonl(ctx.require("teacher", "records.jsonl"), TeacherRecord)
    ids = Counter(r.query_id for r in records)
    return {"records": len(records), "expected": n, "duplicates": sum(c - 1 for c in ids.values()),
            "ok": sum(r.status == "ok" for r in records), "failed": sum(r.status == "failed" for r in records)}


def main() -> None:
    root = Path(ARGS.workdir)
    shutil.rmtree(root, ignore_errors=True)
    os.environ.setdefault(KEY_ENV, "sk-bench-not-a-real-key")
    base = make_ctx(root, "source")
    t = time.perf_counter()
    generate_synthetic_data(base)
    build_queries(base)
    all_queries = read_jsonl(base.require("queries", "queries.jsonl"), CoachingQuery)
    print(f"queries: {len(all_queries)} generated in {time.perf_counter() - t:.1f}s")
    # Identical messages are served from the cache within a run; throughput needs distinct requests.
    seen, distinct = set(), []
    for q in all_queries:
        key = json.dumps([m.content for m in q.messages])
        if key not in seen:
            seen.add(key)
            distinct.append(q)

    # The SDK is imported on a remote teacher's first request: a one-off cost, timed apart from throughput.
    t = time.perf_counter()
    import openai  # noqa: F401

    print(f"openai SDK import: {time.perf_counter() - t:.2f}s (once per process; not in the figures below)")

    # 1. throughput (a fresh run ID and cache each repetition: every query is a real request)
    n, latency_ms, conc = 2000, 100, 64
    bound = n * latency_ms / 1000 / conc
    ctx = with_queries(root, "throughput", distinct[:n], url="http://unused", concurrency=conc)
    walls = []
    with served(ctx.require("queries", "queries.jsonl"), latency_ms) as (url, pid):
        for rep in range(ARGS.throughput_reps):
            ctx = with_queries(root, f"throughput-{rep}", distinct[:n], url=url, concurrency=conc,
                               cache_dir=str(root / f"cache-throughput-{rep}"))
            server_cpu, client_cpu, t = cpu_s(pid), time.process_time(), time.perf_counter()
            capture_teacher_responses(ctx)
            wall = time.perf_counter() - t
            client_cpu, server_cpu = time.process_time() - client_cpu, cpu_s(pid) - server_cpu
            walls.append(wall)
            print(f"throughput: {n} queries, {latency_ms} ms latency, concurrency {conc}: {wall:.2f}s "
                  f"(bound {bound:.2f}s, ratio {wall / bound:.2f}x, target <= 1.10x); CPU per request: "
                  f"client {1000 * client_cpu / n:.2f} ms, server {1000 * server_cpu / n:.2f} ms; "
                  f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {check_records(ctx, n)}")
    throughput_ratio = statistics.median(walls) / bound

    # 2. fully cached rerun of 10,000
    with served(base.require("queries", "queries.jsonl")) as (url, pid):
        fill = with_queries(root, "fill", all_queries, url=url, concurrency=conc)
        t = time.perf_counter()
        capture_teacher_responses(fill)
        fill_s = time.perf_counter() - t
        print(f"cache: filling {len(all_queries)} took {fill_s:.1f}s")
        cached_walls = []
        for rep in range(ARGS.cached_reps):  # a fresh run ID sharing the cache each time
            rerun = with_queries(root, f"rerun-{rep}", all_queries, url=url, concurrency=conc)
            cpu, t = time.process_time(), time.perf_counter()
            summary = capture_teacher_responses(rerun)
            wall, cpu = time.perf_counter() - t, time.process_time() - cpu
            cached_walls.append(wall)
            print(f"cache: fully cached rerun of {len(all_queries)}: {wall:.2f}s wall, {cpu:.2f}s CPU (target < 2s), "
                  f"{summary['requests']} requests, {summary['cached_records']} cached records, "
                  f"load average {os.getloadavg()[0]:.1f}")
    cached_wall = statistics.median(cached_walls)

    # 3. 30% faults
    n_fault = ARGS.fault_queries
    faults = FaultConfig(latency_ms=20, rate=0.3)
    with running_server(all_queries, faults, hang_s=3, retry_after_s=0.2) as (url, app):
        ctx = with_queries(root, "faults", distinct[:n_fault], url=url, concurrency=conc, timeout_s=1.0,
                           backoff_base_s=0.05, backoff_max_s=1.0, cache_dir=str(root / "cache-faults"))
        t = time.perf_counter()
        summary = capture_teacher_responses(ctx)
        wall = time.perf_counter() - t
        faults_seen = {k: v for k, v in app.state.stats.items() if k.startswith("fault_")}
        checked = check_records(ctx, n_fault)
        print(f"faults: {n_fault} queries at 30% injected faults {faults_seen}: {wall:.1f}s, {checked}, "
              f"accounted {100 * checked['records'] / n_fault:.1f}%, retries {summary['retries']}, "
              f"repairs {summary['repairs']}, failure reasons {summary['failure_reasons']}")

    accounted = checked["records"] == n_fault and checked["duplicates"] == 0
    print("\nFIGURES")
    print(f"  throughput  median {statistics.median(walls):.2f}s over {len(walls)} runs = {throughput_ratio:.2f}x "
          f"the bound {bound:.2f}s (target <= 1.10x): {'PASS' if throughput_ratio <= 1.10 else 'MISS'}")
    print(f"  cached      rerun of {len(all_queries)} queries median {cached_wall:.2f}s over {len(cached_walls)} runs "
          f"(target < 2s): "
          f"{'PASS' if cached_wall < 2 else 'MISS'}")
    print(f"  faults      {checked['ok']} ok + {checked['failed']} failed of {n_fault}, "
          f"{checked['duplicates']} duplicates: {'PASS' if accounted else 'MISS'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-users", type=int, default=300)
    parser.add_argument("--fault-queries", type=int, default=1000)
    parser.add_argument("--throughput-reps", type=int, default=3, help="throughput runs (the median is the figure)")
    parser.add_argument("--cached-reps", type=int, default=3, help="cached reruns (the median is the figure)")
    parser.add_argument("--workdir", default="/tmp/fitsense-bench-teacher")
    ARGS = parser.parse_args()
    main()
