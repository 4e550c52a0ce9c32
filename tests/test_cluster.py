"""The DAG on a distributed Airflow: ``scripts/airflow-cluster.sh`` (Celery executor, PostgreSQL, Redis,
two workers, a ``gpu`` queue, an MLflow server), driven through Airflow's REST API.

Runs when Redis and PostgreSQL are installed (``scripts/test.sh`` installs Redis as root); skipped otherwise.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "airflow-cluster.sh"
PORT_OFFSETS = (32, 50, 65, 79, 80, 93, 94, 95)  # the script's ports, relative to its port base


def _missing() -> str | None:
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    if not (shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb")):
        return "PostgreSQL is not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a postgres user to run PostgreSQL as"
    try:
        import airflow.providers.celery  # noqa: F401
    except ImportError:
        return "the Celery provider is not installed (bash scripts/setup.sh)"
    return None



def _free_port_base() -> int:
    """A port base whose ports are all free, so the test never meets another cluster."""
    for base in range(41000, 60000, 100):
        try:
            for offset in PORT_OFFSETS:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range for the cluster")


class Cluster:
    def __init__(self, root: Path):
        self.dir = root / "cluster"
        self.env = dict(os.environ, FITSENSE_CLUSTER_DIR=str(self.dir),
                        FITSENSE_CLUSTER_PORT_BASE=str(_free_port_base()),
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout)

    def trigger(self, name: str, *args: str) -> dict:
        report = self.dir / f"{name}.json"
        proc = self.run("trigger", "--report", str(report), *args)
        print(proc.stdout)
        assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads(report.read_text())

    def leftover_pids(self) -> list[int]:
        """Processes that carry this cluster's environment (every one the script started does)."""
        marker = f"FITSENSE_CLUSTER_ID={self.dir}".encode()
        pids = []
        for environ in glob.glob("/proc/[0-9]*/environ"):
            try:
                if marker in Path(environ).read_bytes().split(b"\0"):
                    pids.append(int(environ.split("/")[2]))
            except OSError:
                pass
        return pids


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_model_dir):
    c = Cluster(tmp_path_factory.mktemp("airflow-cluster"))
    up = c.run("up", timeout=600)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield c
    finally:
        down = c.run("down", timeout=300)
        assert down.returncode == 0, down.stderr
        assert c.leftover_pids() == []


def _by_task(report: dict) -> dict[str, dict]:
    return {t["task"]: t for t in report["tasks"]}


# --------------------------------------------------------------------------- the pieces, without a cluster


def _shard(index: int, host: str, start: float, end: float, tries: list | None = None) -> dict:
    return {"task": f"capture_teacher_shard[{index}]", "task_id": "capture_teacher_shard", "hostname": host,
            "start": start, "end": end, **({"tries": tries} if tries else {})}


def test_shards_overlap_only_in_time_and_on_different_workers():
    from fitsense.app.cluster import overlapping_shards

    assert overlapping_shards([_shard(0, "a", 0, 10), _shard(1, "b", 5, 15)]) == [
        ["capture_teacher_shard[0]", "capture_teacher_shard[1]"]]
    assert overlapping_shards([_shard(0, "a", 0, 10), _shard(1, "a", 5, 15)]) == []  # one worker
    assert overlapping_shards([_shard(0, "a", 0, 10), _shard(1, "b", 10, 15)]) == []  # one after the other
    # A killed try counts: shard 0 ran on "a" beside shard 1 on "b" before its retry went to "b".
    tries = [{"hostname": "a", "start": 0, "end": 8}, {"hostname": "b", "start": 20, "end": 30}]
    assert overlapping_shards([_shard(0, "b", 20, 30, tries), _shard(1, "b", 1, 12)]) == [
        ["capture_teacher_shard[0]", "capture_teacher_shard[1]"]]


def test_a_reused_pipeline_run_skips_complete_stages_until_an_upstream_one_reruns(tmp_path):
    from fitsense.app.orchestration import context_for_task, up_to_date
    from fitsense.app.pipeline import mark_complete

    dag_params = {"run_id": "reused", "overrides": {"run.artifacts_dir": str(tmp_path)}}
    ctx = context_for_task(dag_params, "manual__2026-01-05T10:00:00+00:00")
    assert ctx.run_id == "reused"
    assert not up_to_date(ctx, "synthetic")
    for stage in ("synthetic", "queries"):
        mark_complete(ctx, stage)
    assert up_to_date(ctx, "synthetic") and up_to_date(ctx, "queries")

    later = (ctx.run_dir / "synthetic" / "manifest.json").stat().st_mtime + 5
    os.utime(ctx.run_dir / "synthetic" / "manifest.json", (later, later))  # synthetic reran after queries
    assert up_to_date(ctx, "synthetic") and not up_to_date(ctx, "queries")

    other = context_for_task({**dag_params, "overrides": {**dag_params["overrides"], "queries.n_queries": 7}}, "x")
    assert not up_to_date(other, "queries")  # other params: not complete for them


# --------------------------------------------------------------------------- the cluster


@pytest.mark.slow
@pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
def test_cluster_run_survives_a_killed_worker_then_skips_completed_stages(cluster):
    # One full run (a full run costs minutes on 2 cores): worker-cpu dies while it captures a teacher shard.
    first = cluster.trigger("first", "--kill-worker-during-shard", "worker-cpu")
    tasks = _by_task(first)
    assert first["state"] == "success", first["tasks"]
    assert tasks["training"]["queue"] == "gpu" and tasks["training"]["hostname"] == "worker-gpu", tasks["training"]
    assert first["overlapping_shards"], [(t["task"], t.get("tries"), t["start"], t["end"]) for t in first["tasks"]]

    # The killed shard was retried on the other worker, and no teacher record is duplicated.
    assert first["killed"], "worker-cpu never ran a teacher shard"
    killed = tasks[first["killed"]["task"]]
    assert killed["tries"][0]["hostname"] == "worker-cpu", killed
    assert killed["hostname"] == "worker-gpu" and killed["state"] == "success", killed
    records = (Path(first["run_dir"]) / "teacher" / "records.jsonl").read_text().splitlines()
    ids = [json.loads(r)["query_id"] for r in records]
    assert len(ids) == first["conf"]["overrides"]["queries.n_queries"] == len(set(ids))

    # The registered version carries this run's dataset run ID, read back from the MLflow server.
    from mlflow import MlflowClient

    registration = first["registration"]
    client = MlflowClient(first["conf"]["overrides"]["registry.tracking_uri"])
    version = client.get_model_version(registration["model_name"], str(registration["version"]))
    assert version.tags["dataset_run_id"] == first["dataset_info"]["dataset_run_id"]
    assert version.tags["pipeline_run_id"] == first["conf"]["run_id"]

    # The same params again: every stage is complete in this pipeline run, so each task skips it.
    run_dir = Path(first["run_dir"])
    manifests = {p: p.stat().st_mtime_ns for p in run_dir.glob("*/manifest.json")}
    second = cluster.trigger("second")
    assert second["state"] == "success", second["tasks"]
    assert [t["task"] for t in second["tasks"] if not t["skipped"]] == ["teacher_shards"], second["tasks"]
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("*/manifest.json")} == manifests
    assert second["registration"]["version"] == registration["version"]
    print(f"first run (a worker killed) {first['wall_s']} s, skip-rerun {second['wall_s']} s")
    assert second["wall_s"] < 0.5 * first["wall_s"]
