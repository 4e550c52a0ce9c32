"""Client side of ``scripts/airflow-cluster.sh``: trigger the DAG over Airflow's REST API and report.

``python -m fitsense.app.cluster trigger --conf '{...}'`` logs in to the API
server (simple auth manager: ``POST /auth/token``), starts a run of
``fitsense_distillation`` (``POST /api/v2/dags/{dag}/dagRuns``), waits for it
to finish and prints each task's worker, queue, state, duration and tries, and
whether mapped teacher shards overlapped in time on different workers. With
``--kill-worker-during-shard NAME`` it kills that Celery worker (its whole
process session, as if the machine died) while it runs a teacher shard.

``worker_hostname`` is the ``[core] hostname_callable`` of the cluster: the
workers share one machine, so each reports the name in ``FITSENSE_WORKER_NAME``
instead of the machine's hostname.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

DAG_ID = "fitsense_distillation"
SHARD_TASK = "capture_teacher_shard"
TERMINAL = {"success", "failed"}


def worker_hostname() -> str:
    return os.environ.get("FITSENSE_WORKER_NAME") or socket.getfqdn()


class AirflowApi:
    """The few calls of Airflow's public REST API (/api/v2) the cluster check needs."""

    def __init__(self, base_url: str, username: str, password: str):
        import httpx

        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=30)
        resp = self.http.post("/auth/token", json={"username": username, "password": password})
        if resp.status_code not in (200, 201):
            raise SystemExit(f"error: {base_url}/auth/token: {resp.status_code} {resp.text[:200]}")
        self.http.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def get(self, path: str, **params) -> dict:
        resp = self.http.get(f"/api/v2{path}", params=params)
        resp.raise_for_status()
        return resp.json()

    def wait_for_dag(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.http.get(f"/api/v2/dags/{DAG_ID}").status_code == 200:
                self.http.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
                return
            time.sleep(2)
        errors = self.get("/importErrors").get("import_errors", [])
        raise SystemExit(f"error: DAG {DAG_ID} not parsed after {timeout_s:.0f}s; import errors: {errors}")

    def trigger(self, conf: dict) -> str:
        resp = self.http.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
        if resp.status_code not in (200, 201):
            raise SystemExit(f"error: trigger {DAG_ID}: {resp.status_code} {resp.text[:300]}")
        return resp.json()["dag_run_id"]

    def dag_run(self, run_id: str) -> dict:
        return self.get(f"/dags/{DAG_ID}/dagRuns/{run_id}")

    def task_instances(self, run_id: str) -> list[dict]:
        return self.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", limit=200)["task_instances"]

    def returned(self, run_id: str, ti: dict):
        resp = self.http.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{ti['task_id']}"
                             "/xcomEntries/return_value", params={"map_index": ti["map_index"]})
        return resp.json().get("value") if resp.status_code == 200 else None

    def tries(self, run_id: str, ti: dict) -> list[dict]:
        path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{ti['task_id']}"
        if ti["map_index"] >= 0:
            path += f"/{ti['map_index']}"
        return self.get(f"{path}/tries")["task_instances"]


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def task_label(ti: dict) -> str:
    return f"{ti['task_id']}[{ti['map_index']}]" if ti["map_index"] >= 0 else ti["task_id"]


def overlapping_shards(tasks: list[dict]) -> list[list[str]]:
    """Pairs of teacher shards that ran at the same time on different workers (any of their tries)."""
    runs = [(t["task"], x["hostname"], x["start"], x["end"]) for t in tasks if t["task_id"] == SHARD_TASK
            for x in t.get("tries") or [t] if x["start"] is not None and x["end"] is not None]
    pairs = {tuple(sorted((a[0], b[0]))) for i, a in enumerate(runs) for b in runs[i + 1:]
             if a[0] != b[0] and a[1] != b[1] and max(a[2], b[2]) < min(a[3], b[3])}
    return [list(p) for p in sorted(pairs)]


def _task_row(api: AirflowApi, run_id: str, ti: dict) -> dict:
    row = {"task": task_label(ti), "task_id": ti["task_id"], "map_index": ti["map_index"],
           "hostname": ti.get("hostname") or "", "queue": ti.get("queue"), "state": ti.get("state"),
           "duration_s": round(ti["duration"], 1) if ti.get("duration") is not None else None,
           "start": _ts(ti.get("start_date")), "end": _ts(ti.get("end_date")), "try_number": ti.get("try_number"),
           "skipped": ti.get("state") == "success" and api.returned(run_id, ti) == {"skipped": True}}
    if (ti.get("try_number") or 1) > 1:
        row["tries"] = [{"try_number": t["try_number"], "hostname": t.get("hostname") or "", "state": t.get("state"),
                         "start": _ts(t.get("start_date")), "end": _ts(t.get("end_date"))}
                        for t in api.tries(run_id, ti)]
    return row


def _kill_worker(kill_command: str, worker: str) -> None:
    subprocess.run([*shlex.split(kill_command), worker], check=True)


def run_and_wait(api: AirflowApi, conf: dict, timeout_s: float, kill_worker: str | None = None,
                 kill_command: str = "", kill_after_s: float = 3.0) -> dict:
    started = time.monotonic()
    run_id = api.trigger(conf)
    print(f"triggered {DAG_ID} run {run_id}", flush=True)
    killed = None
    while True:
        run = api.dag_run(run_id)
        if run["state"] in TERMINAL:
            break
        if time.monotonic() - started > timeout_s:
            raise SystemExit(f"error: run {run_id} still {run['state']} after {timeout_s:.0f}s")
        if kill_worker and killed is None:
            for ti in api.task_instances(run_id):
                start = _ts(ti.get("start_date"))
                if (ti["task_id"] == SHARD_TASK and ti["state"] == "running" and ti.get("hostname") == kill_worker
                        and start and time.time() - start >= kill_after_s):
                    _kill_worker(kill_command, kill_worker)
                    killed = {"worker": kill_worker, "task": task_label(ti), "after_s": round(time.time() - start, 1)}
                    print(f"killed worker {kill_worker} while it ran {killed['task']}", flush=True)
                    break
        time.sleep(1)
    wall = time.monotonic() - started
    tasks = sorted((_task_row(api, run_id, ti) for ti in api.task_instances(run_id)),
                   key=lambda t: (t["start"] or float("inf"), t["task"]))
    report = {"dag_run_id": run_id, "state": run["state"], "wall_s": round(wall, 1), "conf": conf,
              "tasks": tasks, "overlapping_shards": overlapping_shards(tasks), "killed": killed}
    report.update(_pipeline_outputs(conf))
    return report


def _pipeline_outputs(conf: dict) -> dict:
    """The registration and dataset run ID the run left in the shared artifacts directory."""
    artifacts = (conf.get("overrides") or {}).get("run.artifacts_dir")
    pipeline_run = conf.get("run_id")
    if not artifacts or not pipeline_run:
        return {}
    run_dir = Path(artifacts) / pipeline_run
    out: dict = {"run_dir": str(run_dir)}
    for key, rel in (("dataset_info", "dataset/dataset_info.json"), ("registration", "registry/registration.json"),
                     ("teacher_summary", "teacher/summary.json")):
        if (run_dir / rel).exists():
            out[key] = json.loads((run_dir / rel).read_text())
    return out


def format_report(report: dict) -> str:
    lines = [f"{'task':26} {'worker':11} {'queue':8} {'state':16} {'seconds':>7}  {'stage':8} tries"]
    for t in report["tasks"]:
        tries = " -> ".join(f"{x['hostname'] or '?'}:{x['state']}" for x in t.get("tries", [])) or t["try_number"]
        seconds = t["duration_s"] if t["duration_s"] is not None else "-"
        lines.append(f"{t['task']:26} {t['hostname']:11} {t['queue'] or '':8} {t['state'] or '':16} {seconds:>7}  "
                     f"{'skipped' if t['skipped'] else 'ran':8} {tries}")
    overlap = report["overlapping_shards"]
    lines.append("teacher shards overlapped on different workers: "
                 + (", ".join(" & ".join(pair) for pair in overlap) if overlap else "no"))
    if report.get("killed"):
        k = report["killed"]
        lines.append(f"killed worker {k['worker']} {k['after_s']}s into {k['task']}")
    lines.append(f"run {report['dag_run_id']}: {report['state']} in {report['wall_s']}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fitsense.app.cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    trig = sub.add_parser("trigger", help="trigger the DAG through the REST API and wait for its outcome")
    trig.add_argument("--api", required=True, help="API server URL, e.g. http://127.0.0.1:48080")
    trig.add_argument("--user", default="fitsense")
    trig.add_argument("--passwords-file", type=Path, required=True, help="the simple auth manager's passwords")
    trig.add_argument("--conf", default="{}", help="DAG run conf (JSON)")
    trig.add_argument("--report", type=Path, help="also write the report as JSON here")
    trig.add_argument("--timeout", type=float, default=900)
    trig.add_argument("--kill-worker-during-shard", metavar="WORKER", help="kill this worker mid-shard")
    trig.add_argument("--kill-command", default="", help="command that kills a worker, given its name")
    args = parser.parse_args(argv)

    password = json.loads(args.passwords_file.read_text())[args.user]
    api = AirflowApi(args.api, args.user, password)
    api.wait_for_dag(timeout_s=180)
    report = run_and_wait(api, json.loads(args.conf), args.timeout, args.kill_worker_during_shard, args.kill_command)
    print(format_report(report))
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
    return 0 if report["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
