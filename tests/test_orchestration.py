"""The three ways to run the pipeline agree: Airflow DAG, `dvc repro`, and `fitsense run`.

Each runs the real stage functions end to end on a tiny configuration
(offline teacher, tiny student, SQLite everywhere).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fitsense.app.pipeline import STAGE_NAMES

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tiny_overrides(tmp: Path, model_dir: Path) -> dict:
    """params.yaml keys for a pipeline that runs in about a minute on 2 cores."""
    return {
        "synthetic.n_users": 40,
        "queries.n_queries": 60,
        "run.artifacts_dir": str(tmp / "artifacts"),
        "teacher.cache_dir": str(tmp / "teacher-cache"),
        "training.base_model": str(model_dir),
        "training.max_steps": 2,
        "training.batch_size": 2,
        "training.eval_steps": 1,
        "training.max_val_examples": 2,
        "training.max_length": 512,
        "evaluation.max_examples": 3,
        "evaluation.max_new_tokens": 8,
        "evaluation.batch_size": 3,
        "registry.tracking_uri": f"sqlite:///{tmp / 'mlruns.db'}",
        "registry.artifact_location": str(tmp / "mlartifacts"),
    }


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


# --------------------------------------------------------------------------- fitsense run


@pytest.mark.slow
def test_cli_run_resumes_completed_stages(tmp_path, tiny_model_dir):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({}))
    sets = [f"--set={k}={v}" for k, v in tiny_overrides(tmp_path, tiny_model_dir).items()]
    cmd = [str(BIN / "fitsense"), "run", "--params", str(params), "--run-id", "cli", "--to", "dataset", *sets]

    first = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "artifacts" / "cli"
    for stage in ("synthetic", "queries", "teacher", "dataset"):
        assert (run_dir / stage / "manifest.json").exists(), stage
    assert not (run_dir / "quality").exists()
    records_before = (run_dir / "teacher" / "records.jsonl").read_bytes()

    second = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    out = second.stdout + second.stderr
    assert out.count("skipped") >= 4, out[-3000:]
    assert (run_dir / "teacher" / "records.jsonl").read_bytes() == records_before

    # A changed dataset param reruns the dataset stage only.
    third = subprocess.run(cmd + ["--set=dataset.splits.train=0.7", "--set=dataset.splits.val=0.2"],
                           capture_output=True, text=True, env=_env(), timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    out = third.stdout + third.stderr
    assert "stage dataset done" in out and "stage teacher done" not in out, out[-3000:]


def test_cli_rejects_bad_config_naming_the_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("training:\n  lora:\n    r: zero\n")
    proc = subprocess.run([str(BIN / "fitsense"), "run", "--params", str(params)],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 2
    assert "training.lora.r" in proc.stderr


# --------------------------------------------------------------------------- Airflow


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> tuple[Path, dict]:
    home = tmp_path_factory.mktemp("airflow")
    env = _env(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
    )
    for cmd in (["airflow", "db", "migrate"], ["airflow", "pools", "set", "fitsense_teacher", "2", "teacher capture"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return home, env


def _task_states(home: Path, logical_date: str) -> dict[str, str]:
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT ti.task_id, ti.map_index, ti.state FROM task_instance ti "
            "JOIN dag_run dr ON dr.run_id = ti.run_id AND dr.dag_id = ti.dag_id "
            "WHERE ti.dag_id = 'fitsense_distillation' AND date(dr.logical_date) = ?",
            (logical_date,),
        ).fetchall()
    return {f"{t}[{m}]" if m >= 0 else t: s for t, m, s in rows}


def _dags_test(env: dict, logical_date: str, conf: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["airflow", "dags", "test", "fitsense_distillation", logical_date, "-c", json.dumps(conf)],
        capture_output=True, text=True, env=env, timeout=900,
    )


@pytest.mark.slow
def test_airflow_dag_runs_every_stage(airflow_home, tmp_path, tiny_model_dir):
    home, env = airflow_home
    conf = {"teacher_shards": 2, "overrides": tiny_overrides(tmp_path, tiny_model_dir)}
    proc = _dags_test(env, "2026-01-05", conf)
    states = _task_states(home, "2026-01-05")
    assert proc.returncode == 0, (states, proc.stdout[-4000:])
    assert states and all(s == "success" for s in states.values()), states
    assert {"capture_teacher_shard[0]", "capture_teacher_shard[1]"} <= set(states)

    runs = list((tmp_path / "artifacts").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("manual__"), runs
    for stage in STAGE_NAMES:
        assert (runs[0] / stage / "manifest.json").exists(), stage
    # Shards were merged into one record per query.
    records = (runs[0] / "teacher" / "records.jsonl").read_text().splitlines()
    assert len(records) == 60 and len({json.loads(r)["query_id"] for r in records}) == 60
    assert json.loads((runs[0] / "registry" / "registration.json").read_text())["version"]


@pytest.mark.slow
def test_airflow_quality_failure_stops_before_training(airflow_home, tmp_path, tiny_model_dir):
    home, env = airflow_home
    overrides = tiny_overrides(tmp_path, tiny_model_dir) | {"quality.min_train_examples": 100_000}
    proc = _dags_test(env, "2026-01-06", {"teacher_shards": 1, "overrides": overrides})
    states = _task_states(home, "2026-01-06")
    assert proc.returncode != 0
    assert states["quality_gate"] == "failed", states
    assert states["training"] == "upstream_failed", states
    run_dir = next((tmp_path / "artifacts").iterdir())
    assert not (run_dir / "training").exists()
    gate = json.loads((run_dir / "quality" / "gate.json").read_text())
    assert gate["passed"] is False and any("min_train_examples" in f for f in gate["failures"])


def test_dag_import_is_fast_and_side_effect_free(tmp_path):
    code = (
        "import sys, time; t = time.perf_counter(); sys.path.insert(0, 'dags');"
        "import fitsense_distillation as m;"
        "heavy = [n for n in ('torch', 'transformers', 'mlflow', 'great_expectations') if n in sys.modules];"
        "print(round(time.perf_counter() - t, 2), heavy)"
    )
    before = set(os.listdir(REPO))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr
    seconds, heavy = proc.stdout.strip().split(" ", 1)
    assert heavy == "[]", f"DAG import pulled in {heavy}"
    assert float(seconds) < 15
    assert set(os.listdir(REPO)) == before


# --------------------------------------------------------------------------- DVC


def _copy_project(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file() and not rel.startswith(("artifacts/", ".cache/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


GIT_USER = ["-c", "user.email=t@t", "-c", "user.name=t"]


def make_dvc_project(tmp_path: Path, model_dir: Path, env: dict) -> tuple[Path, dict]:
    """A git repository with a copy of the project whose params.yaml is the tiny configuration."""
    project = tmp_path / "project"
    _copy_project(project)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in tiny_overrides(tmp_path, model_dir).items():
        node = params
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    params["run"]["artifacts_dir"] = "artifacts"  # DVC outs live inside the project
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", *GIT_USER, "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=project, check=True, env=env, capture_output=True)
    return project, params


@pytest.mark.slow
def test_dvc_repro_runs_all_then_noop_then_only_training_onward(tmp_path, tiny_model_dir):
    env = _env()
    project, params = make_dvc_project(tmp_path, tiny_model_dir, env)

    def repro(*args: str) -> str:
        proc = subprocess.run(["dvc", "repro", *args], cwd=project, capture_output=True, text=True,
                              env=env, timeout=900)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        return proc.stdout

    first = repro()
    for stage in STAGE_NAMES:
        assert f"Running stage '{stage}'" in first, stage

    started = time.perf_counter()
    second = repro()
    assert "Running stage" not in second, second
    assert time.perf_counter() - started < 30

    params["training"]["lora"]["r"] = 4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = repro()
    ran = {s for s in STAGE_NAMES if f"Running stage '{s}'" in third}
    assert ran == {"training", "evaluation", "registry"}, third

    metrics = subprocess.run(["dvc", "metrics", "show", "--json"], cwd=project, capture_output=True,
                             text=True, env=env, timeout=120)
    assert metrics.returncode == 0 and "student" in metrics.stdout, metrics.stdout[-2000:]
