"""Lineage of a registered student version: dataset, data-quality reports, training and evaluation runs."""

from __future__ import annotations

from pathlib import Path

from fitsense.config import Params
from fitsense.registry.register import _client, resolve_version, version_metrics
from fitsense.runs import read_json
from fitsense.versioning import commit_recording, dvc_project_root

QUALITY_REPORTS = ("gate.json", "report.md", "validation.json", "data_docs", "stats.json", "anomalies.json",
                   "drift.json", "bias.json")


def _run_summary(client, run_id: str | None) -> dict | None:
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return {"run_id": run_id, "missing": True}
    return {"run_id": run_id, "run_name": run.info.run_name, "status": run.info.status,
            "metrics": dict(run.data.metrics), "params": dict(run.data.params)}


def lineage(params: Params, version: str | int) -> dict:
    """Everything behind a model version (a number or an alias such as ``champion``)."""
    client = _client(params)
    name = params.registry.model_name
    mv = resolve_version(client, name, version)
    tags = dict(mv.tags or {})
    pipeline_run_id = tags.get("pipeline_run_id")
    run_dir = Path(tags["run_dir"]) if tags.get("run_dir") else Path(params.run.artifacts_dir) / str(pipeline_run_id)

    manifest_path = run_dir / "dataset" / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.exists() else None
    quality_dir = run_dir / "quality"
    reports = {r: str(quality_dir / r) for r in QUALITY_REPORTS if (quality_dir / r).exists()}
    docs_index = quality_dir / "data_docs" / "index.html"
    if docs_index.exists():
        reports["data_docs_index"] = str(docs_index)
    gate_path = quality_dir / "gate.json"
    eval_dir = run_dir / "evaluation"

    return {
        "model_name": name,
        "version": str(mv.version),
        "aliases": sorted(mv.aliases or []),
        "dataset_run_id": tags.get("dataset_run_id"),
        "dataset_digest": tags.get("dataset_digest"),
        "pipeline_run_id": pipeline_run_id,
        "code_version": tags.get("code_version"),
        "params_hash": tags.get("params_hash"),
        "base_model": tags.get("base_model"),
        "dataset_manifest_path": str(manifest_path),
        "dataset_manifest": manifest,
        # The manifest on disk must describe the dataset the version was trained on.
        "dataset_manifest_matches": bool(manifest) and manifest.get("dataset_run_id") == tags.get("dataset_run_id"),
        "missing": [] if manifest is not None else [f"{manifest_path} (artifacts of run {pipeline_run_id} are gone)"],
        "quality_reports": reports,
        "quality_gate": read_json(gate_path) if gate_path.exists() else None,
        "evaluation_report": str(eval_dir / "comparison.md") if (eval_dir / "comparison.md").exists() else None,
        "metrics": version_metrics(mv),
        "training_run": _run_summary(client, tags.get("training_run_id")),
        "evaluation_run_id": tags.get("evaluation_run_id"),
        "source": mv.source,
        "restore": restore_commands(tags),
    }


def restore_commands(tags: dict, root: Path | None = None) -> dict:
    """How to restore a version's exact dataset and quality reports on a fresh clone: the git commit
    whose dvc.lock records them, then ``dvc pull`` (or ``dvc get`` by path and revision)."""
    path, digest = tags.get("dvc_dataset_path"), tags.get("dvc_dataset_hash")
    if not path or not digest:
        return {"recorded": False,
                "note": f"run {tags.get('pipeline_run_id')} was not recorded in dvc.lock (an experiment, or a run "
                        f"outside the DVC project): its dataset is only in {tags.get('run_dir')}"}
    root = root or dvc_project_root() or Path.cwd()
    commit = commit_recording(root, digest)
    paths = [path, *(p for p in tags.get("dvc_quality_paths", "").split(",") if p)]
    rev = commit or "<commit>"
    out = {"recorded": True, "git_commit": commit or None, "code_commit": tags.get("git_commit"),
           "dvc_dataset_hash": digest, "paths": paths,
           "commands": [f"git checkout {rev}", f"dvc pull {' '.join(paths)}"],
           "get_command": f"dvc get . {path} --rev {rev} -o dataset-{rev[:12]}"}
    if not commit:
        out["note"] = (f"no git commit of dvc.lock records dataset {digest} yet: commit it "
                       "(`git add dvc.lock && git commit`) and `dvc push`, then rerun this command")
    return out
