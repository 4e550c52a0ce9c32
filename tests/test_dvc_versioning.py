"""DVC knows what every run produced: `fitsense run` and the DAG record the DVC pipeline's run in
dvc.lock and push it to the default remote; a second clone pulls byte-identical data; experiments
stay out of the lock; a bad remote only warns; hand-edited outputs are not trusted.

Each test works on a copy of the project in a fresh git repository whose params.yaml is the tiny
configuration, with HOME in the test folder (the default remote lives under ~/.cache).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from test_orchestration import BIN, GIT_USER, _env, make_dvc_project

from fitsense.app.dvcsync import not_the_pipeline_run
from fitsense.config import load_params
from fitsense.runs import RunContext

REMOTE = Path(".cache") / "fitsense" / "dvc-remote"  # under HOME, as .dvc/config says


def _sh(cwd: Path, env: dict, *cmd: str, ok: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _dvc_status(cwd: Path, env: dict, *targets: str) -> dict:
    return json.loads(_sh(cwd, env, "dvc", "status", "--json", *targets).stdout or "{}")


def _locked_stages(project: Path) -> set[str]:
    lock = project / "dvc.lock"
    return set(yaml.safe_load(lock.read_text())["stages"]) if lock.exists() else set()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def home_env(tmp_path) -> dict:
    (tmp_path / "home").mkdir()
    return _env(HOME=str(tmp_path / "home"), COLUMNS="1000")  # COLUMNS: log lines unwrapped


@pytest.mark.slow
def test_main_job_is_recorded_pushed_and_restored_in_a_second_clone(tmp_path, tiny_model_dir, home_env):
    env = home_env
    project, params = make_dvc_project(tmp_path, tiny_model_dir, env)
    run = _sh(project, env, str(BIN / "fitsense"), "run")
    assert "recorded registry" in run.stderr and "pushed" in run.stderr, run.stderr[-3000:]

    # DVC is in step: nothing to rerun, and the run already pushed everything.
    assert _dvc_status(project, env) == {}
    assert any((Path(env["HOME"]) / REMOTE).rglob("*")), "the run pushed nothing to the default remote"
    assert "Everything is up to date" in _sh(project, env, "dvc", "push").stdout
    _sh(project, env, "git", "add", "dvc.lock")
    _sh(project, env, "git", *GIT_USER, "commit", "-qm", "pipeline run")
    recorded_at = _sh(project, env, "git", "rev-parse", "HEAD").stdout.strip()

    # A second clone on the same machine pulls byte-identical data and has nothing to rerun.
    clone = tmp_path / "clone"
    _sh(tmp_path, env, "git", "clone", "-q", str(project), str(clone))
    _sh(clone, env, "dvc", "pull")
    run_dir = Path("artifacts") / params["run"]["run_id"]
    original = _files(project / run_dir / "dataset")
    assert original and _files(clone / run_dir / "dataset") == original
    pulled, built = _files(clone / run_dir / "quality"), _files(project / run_dir / "quality")
    assert {"gate.json", "report.md", "stats.json"} <= set(pulled) and all(built[k] == v for k, v in pulled.items())
    assert "Running stage" not in _sh(clone, env, "dvc", "repro").stdout

    # The registered version says how to restore its exact dataset; the printed command works.
    lineage = json.loads(_sh(clone, env, str(BIN / "fitsense"), "registry", "lineage", "1").stdout)
    restore = lineage["restore"]
    assert restore["recorded"] and restore["git_commit"] == recorded_at, restore
    assert restore["paths"][0] == str(run_dir / "dataset") and restore["commands"][0] == f"git checkout {recorded_at}"
    _sh(clone, env, *shlex.split(restore["get_command"]))
    assert _files(clone / restore["get_command"].split()[-1]) == original

    # A hand-edited output is not trusted: it shows as changed and `dvc repro` rebuilds it.
    train = clone / run_dir / "dataset" / "train.jsonl"
    train.write_text(train.read_text() + '{"edited": "by hand"}\n')
    assert "dataset" in _dvc_status(clone, env)
    _sh(clone, env, "dvc", "repro")
    assert _files(clone / run_dir / "dataset") == original
    assert _dvc_status(clone, env) == {}


@pytest.mark.slow
@pytest.mark.parametrize("remote", ["unreachable", "unknown", "none"])
def test_a_bad_remote_warns_and_the_run_still_records(tmp_path, tiny_model_dir, home_env, remote):
    env = home_env
    project, _ = make_dvc_project(tmp_path, tiny_model_dir, env)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    setup = {"unreachable": ["remote", "modify", "--local", "local", "url", str(blocker / "store")],
             "unknown": ["config", "--local", "core.remote", "nowhere"],
             "none": ["remote", "remove", "local"]}[remote]
    _sh(project, env, "dvc", *setup)

    run = _sh(project, env, str(BIN / "fitsense"), "run", "--to", "synthetic")
    warnings = [line for line in run.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "dvc push" in warnings[0] and "Traceback" not in run.stderr, run.stderr[-3000:]
    named = {"unreachable": f"'local' ({blocker / 'store'})", "unknown": "'nowhere'", "none": ".dvc/config"}[remote]
    assert named in warnings[0], warnings
    assert _locked_stages(project) == {"synthetic"}
    assert _dvc_status(project, env, "synthetic") == {}


@pytest.mark.slow
def test_experiments_stay_out_of_the_lock(tmp_path, tiny_model_dir, home_env):
    env = home_env
    project, _ = make_dvc_project(tmp_path, tiny_model_dir, env)
    fitsense = str(BIN / "fitsense")
    override = _sh(project, env, fitsense, "run", "--to", "synthetic", "--set", "synthetic.n_users=41")
    other_id = _sh(project, env, fitsense, "run", "--to", "synthetic", "--run-id", "exp1")
    for proc, why in ((override, "synthetic.n_users"), (other_id, "'exp1'")):
        text = " ".join(proc.stderr.split())
        assert "not the DVC pipeline's run" in text and why in text and "dvc exp run" in text, proc.stderr[-2000:]
    assert not (project / "dvc.lock").exists()
    assert not (Path(env["HOME"]) / REMOTE).exists()


@pytest.mark.slow
def test_dag_tasks_record_the_dvc_pipelines_run_only(tmp_path, tiny_model_dir, home_env, monkeypatch):
    from fitsense.app import orchestration

    project, params = make_dvc_project(tmp_path, tiny_model_dir, home_env)
    monkeypatch.setenv("HOME", home_env["HOME"])
    monkeypatch.setattr(orchestration, "PROJECT_ROOT", project)
    monkeypatch.chdir(project)

    orchestration.run_stage_task("synthetic", {}, "manual__2026-01-05T10:00:00+00:00")
    assert (project / "artifacts" / "manual__2026-01-05T10-00-00-00-00" / "synthetic" / "manifest.json").exists()
    assert not (project / "dvc.lock").exists()

    orchestration.run_stage_task("synthetic", {"run_id": params["run"]["run_id"]}, "manual__2026-01-05")
    assert _locked_stages(project) == {"synthetic"}
    assert _dvc_status(project, home_env, "synthetic") == {}
    assert any((Path(home_env["HOME"]) / REMOTE).rglob("*"))


def test_the_dvc_pipelines_run_is_params_yaml_exactly(tmp_path):
    (tmp_path / "params.yaml").write_text("synthetic:\n  n_users: 40\n")

    def reason(run_id: str | None = None, **overrides) -> str | None:
        params = load_params(tmp_path / "params.yaml", {"run.artifacts_dir": str(tmp_path / "artifacts"),
                                                        **overrides})
        return not_the_pipeline_run(RunContext.create(params, run_id), tmp_path)

    assert reason(**{"run.artifacts_dir": "artifacts"}) is not None  # relative to the cwd, not the project
    (tmp_path / "params.yaml").write_text("synthetic:\n  n_users: 40\nrun:\n  artifacts_dir: " + str(tmp_path / "artifacts"))
    assert reason() is None
    assert reason(**{"dvc.push": False}) is None  # dvc.yaml does not read it
    assert "training.lora.r" in reason(**{"training.lora.r": 4})
    assert "'exp1'" in reason("exp1")


def test_lineage_finds_the_commit_that_records_the_dataset(tmp_path):
    from fitsense.registry.lineage import restore_commands

    env = _env()
    tags = {"dvc_dataset_path": "artifacts/default/dataset", "dvc_dataset_hash": "0123abcd.dir",
            "dvc_quality_paths": "artifacts/default/quality/gate.json", "git_commit": "c0de", "pipeline_run_id": "default"}
    _sh(tmp_path, env, "git", "init", "-q")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    _sh(tmp_path, env, "git", "add", "dvc.lock")
    _sh(tmp_path, env, "git", *GIT_USER, "commit", "-qm", "before the run")
    pending = restore_commands(tags, tmp_path)
    assert pending["git_commit"] is None and "git add dvc.lock" in pending["note"]

    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {dataset: {outs: [{md5: 0123abcd.dir}]}}\n")
    _sh(tmp_path, env, "git", *GIT_USER, "commit", "-qam", "the run")
    commit = _sh(tmp_path, env, "git", "rev-parse", "HEAD").stdout.strip()
    restore = restore_commands(tags, tmp_path)
    assert restore["commands"] == [f"git checkout {commit}",
                                   "dvc pull artifacts/default/dataset artifacts/default/quality/gate.json"]
    assert restore["get_command"].startswith(f"dvc get . artifacts/default/dataset --rev {commit}")

    experiment = restore_commands({"pipeline_run_id": "exp1", "run_dir": "/x/artifacts/exp1"}, tmp_path)
    assert not experiment["recorded"] and "exp1" in experiment["note"]
