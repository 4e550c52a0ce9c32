"""Registry stage: register the fine-tuned student in MLflow with its lineage; promotion and rollback.

Every registration is a new version of ``registry.model_name`` and gets the
``candidate`` alias. The ``champion`` alias moves only when the promotion gate
passes: the student's evaluation metrics clear ``registry.promotion.*`` and
(``require_beats_champion``) are no worse than the current champion's, which
are stored as ``metric.*`` tags on each version. Each promotion pushes the
previous champion onto the model's ``champion_history`` tag, so ``rollback``
can move ``champion`` back step by step.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from pathlib import Path

from fitsense.config import Params
from fitsense.data.prompts import SYSTEM_PROMPT
from fitsense.errors import LineageError, StageError
from fitsense.registry.model_card import model_card
from fitsense.runs import (
    RunContext,
    code_version,
    locate_artifact,
    read_json,
    tree_sha256,
    write_json,
    write_manifest,
)
from fitsense.tracking import setup_mlflow
from fitsense.versioning import dvc_project_root, git_commit, locked_outputs

log = logging.getLogger(__name__)

STAGE = "registry"
CANDIDATE, CHAMPION = "candidate", "champion"
PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
# Evaluation metric -> promotion threshold field; all are "higher is better".
GATE_METRICS = {"validity": "min_validity", "adherence": "min_adherence", "referral_recall": "min_safety_recall"}
METRIC_TAG = "metric."
HISTORY_TAG, PREVIOUS_TAG = "champion_history", "previous_champion"
# Runtime requirements of the pyfunc model, pinned to what is installed (never inferred: that takes ~13 s).
RUNTIME_PACKAGES = ("mlflow", "torch", "transformers", "peft", "accelerate", "safetensors", "pandas",
                    "xgrammar", "scikit-learn", "joblib", "pydantic")
# The evaluation row the registered model is gated on: it decodes guided by default (the screen and the grammar).
REGISTERED_ROLE, FALLBACK_ROLE = "student_guided", "student"


class RegistryError(StageError):
    """A registration that cannot be done (the training outputs it needs are missing)."""


class UnknownVersionError(LineageError, RegistryError):
    """An unknown model version or alias, or no previous champion to roll back to."""


def _client(params: Params):
    from mlflow import MlflowClient

    setup_mlflow(params)
    return MlflowClient()


def pip_requirements() -> list[str]:
    reqs = []
    for name in RUNTIME_PACKAGES:
        try:
            reqs.append(f"{name}=={pkg_version(name).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(name)
    return reqs


def resolve_version(client, name: str, ref: str | int):
    """A model version by number or by alias (``champion``, ``candidate``)."""
    from mlflow.exceptions import MlflowException

    ref = str(ref)
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        kind = "version" if ref.isdigit() else "alias"
        raise UnknownVersionError(f"registered model {name!r} has no {kind} {ref!r} ({exc.message})") from None


def current_champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def version_metrics(mv) -> dict[str, float | None]:
    """The evaluation metrics a version was registered with (from its ``metric.*`` tags)."""
    out: dict[str, float | None] = {}
    for key, value in (mv.tags or {}).items():
        if key.startswith(METRIC_TAG):
            out[key[len(METRIC_TAG):]] = None if value in ("", "None") else float(value)
    return out


def promotion_gate(params: Params, metrics: dict, champion_metrics: dict | None = None,
                   champion_version: str | None = None) -> dict:
    """Check a candidate's metrics against the thresholds and (optionally) the current champion."""
    promo = params.registry.promotion
    checks = []
    for metric, field in GATE_METRICS.items():
        threshold = getattr(promo, field)
        value = metrics.get(metric)
        if value is None:
            # Referral recall is undefined when the test split has no referral-required query.
            ok = metric == "referral_recall"
            checks.append({"check": f"{metric} >= {threshold}", "value": None, "passed": ok,
                           "note": "undefined on this test split" if ok else "missing"})
        else:
            checks.append({"check": f"{metric} >= {threshold}", "value": value, "passed": value >= threshold})
    if promo.require_beats_champion and champion_metrics is not None:
        for metric in GATE_METRICS:
            best = champion_metrics.get(metric)
            value = metrics.get(metric)
            if best is None:
                continue
            checks.append({"check": f"{metric} >= champion v{champion_version} ({best})", "value": value,
                           "passed": value is not None and value >= best})
    failures = [c["check"] for c in checks if not c["passed"]]
    return {"passed": not failures, "checks": checks, "failures": failures}


def model_signature(params: Params):
    """The pyfunc's params schema: what ``predict(..., params=...)`` accepts (others are rejected by MLflow)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ModelSignature(params=ParamSchema([
        ParamSpec("max_new_tokens", "long", params.evaluation.max_new_tokens),
        ParamSpec("decoding", "string", "guided"),
    ]))


def _history(client, name: str) -> list[str]:
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG, "")
    return [v for v in raw.split(",") if v]


def _set_champion(client, name: str, version: str, history: list[str]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history))
    client.set_registered_model_tag(name, PREVIOUS_TAG, history[-1] if history else "")
    client.set_registered_model_alias(name, CHAMPION, version)


def _promote(client, params: Params, mv, force: bool) -> dict:
    name = mv.name
    champion = current_champion(client, name)
    if champion is not None and str(champion.version) == str(mv.version):
        return {"promoted": False, "champion": str(mv.version), "gate": None, "reason": "already the champion"}
    gate = promotion_gate(params, version_metrics(mv), version_metrics(champion) if champion else None,
                          str(champion.version) if champion else None)
    if not gate["passed"] and not force:
        log.info("version %s not promoted: %s", str(mv.version), "; ".join(gate["failures"]))
        return {"promoted": False, "champion": str(champion.version) if champion else None, "gate": gate}
    history = _history(client, name)
    if champion is not None:
        history.append(str(champion.version))
    _set_champion(client, name, str(mv.version), history)
    client.set_model_version_tag(name, str(mv.version), "promoted_by", "force" if force and not gate["passed"] else "gate")
    log.info("version %s is now %s (previous: %s)", str(mv.version), CHAMPION, str(champion.version) if champion else None)
    return {"promoted": True, "champion": str(mv.version), "previous_champion": str(champion.version) if champion else None,
            "forced": force and not gate["passed"], "gate": gate}


def promote(params: Params, version: str | int, force: bool = False) -> dict:
    """Move ``champion`` to ``version`` if the promotion gate passes (always with ``force``)."""
    client = _client(params)
    mv = resolve_version(client, params.registry.model_name, version)
    return {"model_name": mv.name, "version": str(mv.version), **_promote(client, params, mv, force)}


def rollback(params: Params) -> dict:
    """Move ``champion`` back to the version it replaced."""
    client = _client(params)
    name = params.registry.model_name
    history = _history(client, name)
    if not history:
        raise UnknownVersionError(f"registered model {name!r} has no previous champion to roll back to")
    current = current_champion(client, name)
    target = history.pop()
    _set_champion(client, name, target, history)
    if current is not None:
        client.set_model_version_tag(name, str(current.version), "rolled_back", "true")
    log.info("champion rolled back from %s to %s", str(current.version) if current else None, target)
    return {"model_name": name, "champion": target, "rolled_back_from": str(current.version) if current else None,
            "previous_champion": history[-1] if history else None}


def _training_run(client, run_id: str | None) -> str | None:
    """The training run's id if it exists in this tracking store."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        return client.get_run(run_id).info.run_id
    except MlflowException:
        log.warning("training run %s is not in %s; logging the model in a new run", run_id,
                    client.tracking_uri if hasattr(client, "tracking_uri") else "this store")
        return None


def register_student(ctx: RunContext) -> dict:
    import mlflow

    params = ctx.params
    name = params.registry.model_name
    student = read_json(ctx.require("training", "student.json"))
    evaluation = read_json(ctx.require("evaluation", "metrics.json"))
    dataset_info = read_json(ctx.require("dataset", "dataset_info.json"))
    eval_runs_path = ctx.run_dir / "evaluation" / "mlflow_runs.json"
    eval_runs = read_json(eval_runs_path) if eval_runs_path.exists() else {}
    role = REGISTERED_ROLE if REGISTERED_ROLE in evaluation["models"] else FALLBACK_ROLE
    metrics = evaluation["models"][role]
    adapter = locate_artifact(student.get("adapter_dir"), ctx.stage_dir("training", create=False))
    if adapter is None or not adapter.exists():
        raise RegistryError(f"training/student.json: adapter_dir {student.get('adapter_dir')} does not exist")

    client = _client(params)
    adapter_sha256 = tree_sha256(adapter)
    current_tags = {
        "evaluation_run_id": eval_runs.get(role, ""),
        "evaluated_decoding": "guided" if role == REGISTERED_ROLE else "raw",
        **{f"{METRIC_TAG}{m}": str(metrics.get(m)) for m in (*GATE_METRICS, "teacher_exercise_overlap",
                                                               "latency_p50_s", "usd_per_1k_answers")},
    }
    existing = _registered_version(client, name, ctx.run_id, adapter_sha256)
    if existing is not None:
        # A rerun of this stage for the same run and adapter: reuse the version (with the latest
        # evaluation's metrics) rather than add a duplicate.
        log.info("run %s's adapter is already %s version %s", ctx.run_id, name, existing.version)
        for key, value in current_tags.items():
            client.set_model_version_tag(name, str(existing.version), key, value)
        client.update_model_version(name, str(existing.version), description=model_card(evaluation, dataset_info))
        return _finish(ctx, client, existing, {**existing.tags, **current_tags}, existing.source, params)

    run_id = _training_run(client, student.get("mlflow_run_id"))
    run_args = {"run_id": run_id} if run_id else {
        "run_name": f"register-{ctx.run_id}", "tags": {"role": "registration", "pipeline_run_id": ctx.run_id}}
    with mlflow.start_run(**run_args) as run:
        model_info = mlflow.pyfunc.log_model(
            name="student",
            python_model=str(PYFUNC_MODEL_FILE),
            artifacts={"adapter": str(adapter), **_screen_artifact(student, ctx)},
            signature=model_signature(params),
            model_config={
                "base_model": student.get("base_model") or params.training.base_model,
                "base_model_path": str(Path(student["base_model_path"]).resolve()) if student.get("base_model_path")
                else None,
                "system_prompt": student.get("system_prompt") or SYSTEM_PROMPT,
                "max_new_tokens": params.evaluation.max_new_tokens,
                "batch_size": params.evaluation.batch_size,
            },
            pip_requirements=pip_requirements(),
        )
        training_run_id = run.info.run_id

    tags = {
        "dataset_run_id": dataset_info.get("dataset_run_id", ""),
        "dataset_digest": dataset_info.get("digest", ""),
        "pipeline_run_id": ctx.run_id,
        "run_dir": str(ctx.run_dir.resolve()),
        "params_hash": params.section_hash(),
        "code_version": code_version(),
        "base_model": student.get("base_model") or params.training.base_model,
        "training_run_id": training_run_id,
        "adapter_sha256": adapter_sha256,
        **data_version_tags(ctx),
        **current_tags,
    }
    mv = mlflow.register_model(model_info.model_uri, name, tags=tags)
    client.update_model_version(name, str(mv.version), description=model_card(evaluation, dataset_info))
    return _finish(ctx, client, mv, tags, model_info.model_uri, params)


def data_version_tags(ctx: RunContext) -> dict[str, str]:
    """The git commit, and the dataset and quality outputs as dvc.lock records them when it records this
    run's: enough to restore the exact dataset on a fresh clone (``fitsense registry lineage`` says how)."""
    root = dvc_project_root(ctx.run_dir)
    tags = {"git_commit": git_commit(root or ctx.run_dir)}
    if root is None:
        return tags
    from dvc.exceptions import DvcException

    try:
        locked = locked_outputs(root, ("dataset", "quality"))
    except DvcException as exc:
        log.warning("could not read %s's dvc.lock: %s; the version gets no DVC paths", root, exc)
        return tags
    dataset = os.path.relpath(ctx.stage_dir("dataset", create=False).resolve(), root)
    if dataset in locked:
        quality = os.path.relpath(ctx.stage_dir("quality", create=False).resolve(), root) + os.sep
        tags.update(dvc_dataset_path=dataset, dvc_dataset_hash=locked[dataset],
                    dvc_quality_paths=",".join(sorted(p for p in locked if p.startswith(quality))))
    return tags


def _screen_artifact(student: dict, ctx: RunContext) -> dict[str, str]:
    screen = locate_artifact(student.get("screen_dir"), ctx.stage_dir("training", create=False)) \
        if student.get("screen_dir") else None
    return {"screen": str(screen)} if screen is not None and screen.exists() else {}


def _registered_version(client, name: str, pipeline_run_id: str, adapter_sha256: str):
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(
            f"name = '{name}' and tags.pipeline_run_id = '{pipeline_run_id}' "
            f"and tags.adapter_sha256 = '{adapter_sha256}'")
    except MlflowException:
        return None
    return max(found, key=lambda v: int(v.version)) if found else None


def _finish(ctx: RunContext, client, mv, tags: dict, logged_model_uri: str, params: Params) -> dict:
    """Alias the version as candidate, apply the promotion gate, write registration.json and the manifest."""
    name = mv.name
    client.set_registered_model_alias(name, CANDIDATE, str(mv.version))
    mv = client.get_model_version(name, str(mv.version))
    outcome = _promote(client, params, mv, force=False)
    aliases = client.get_model_version(name, str(mv.version)).aliases

    out = ctx.stage_dir(STAGE)
    registration = {
        "model_name": name,
        "version": str(mv.version),
        "model_uri": f"models:/{name}/{mv.version}",
        "logged_model_uri": logged_model_uri,
        "aliases": sorted(aliases),
        "tags": tags,
        "promoted": outcome["champion"] == str(mv.version),  # also true when it already was the champion
        "champion": outcome["champion"],
        "gate": outcome["gate"],
    }
    path = write_json(out / "registration.json", registration)
    write_manifest(ctx, STAGE, {"registration": path}, extra={"model_name": name, "version": str(mv.version)})
    log.info("registered %s version %s, aliases %s", name, mv.version, sorted(aliases))
    return {"model_name": name, "version": str(mv.version), "aliases": sorted(aliases),
            "promoted": registration["promoted"]}
