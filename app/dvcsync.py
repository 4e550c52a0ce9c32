"""DVC kept in step with ``fitsense run`` and the Airflow DAG.

When either completes stages of *the DVC pipeline's run*, the run ``dvc.yaml``
describes, it records them in ``dvc.lock`` as ``dvc commit`` would (outputs into
the DVC cache, hashes of deps, params and outputs into the lock), so ``dvc status``
is clean and ``dvc repro`` is a no-op afterwards; then it pushes their outputs to
the DVC remote (``dvc.push``). The DVC pipeline's run is the one under params.yaml's
``run.run_id`` in its ``run.artifacts_dir``, with exactly the values params.yaml
gives the params ``dvc.yaml`` reads. Any other run (another run ID, ``--set``
overrides, another params file) is an experiment and stays out of the lock:
``dvc exp run`` is the way to track experiments. ``fitsense stage`` records
nothing: it is what ``dvc repro`` runs, and DVC records those runs itself.

DVC is bookkeeping here: when it cannot record or push, the run warns and says
how to catch up, and does not fail.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from fitsense.app.pipeline import STAGES
from fitsense.config import load_params
from fitsense.errors import ConfigError
from fitsense.runs import RunContext
from fitsense.versioning import dvc_project_root, open_repo

log = logging.getLogger(__name__)

PARAMS_FILE = "params.yaml"  # what dvc.yaml reads (`vars` and each stage's `params`)


def _leaves(node, prefix: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, node


def dvc_param_keys() -> list[str]:
    """The params.yaml sections and keys that dvc.yaml's stages depend on."""
    keys: list[str] = []
    for stage in STAGES:
        keys.extend(k for k in stage.params if k not in keys)
    return keys


def differing_params(a, b) -> list[str]:
    """Dotted keys read by dvc.yaml whose values differ between two ``Params``."""
    keys = dvc_param_keys()
    left, right = dict(_leaves(a.model_dump(mode="json"))), dict(_leaves(b.model_dump(mode="json")))
    return sorted(k for k in left.keys() | right.keys()
                  if left.get(k) != right.get(k) and any(k == p or k.startswith(p + ".") for p in keys))


def not_the_pipeline_run(ctx: RunContext, root: Path) -> str | None:
    """Why ``ctx`` is not the run that ``root``'s dvc.yaml describes (None when it is)."""
    params_file = root / PARAMS_FILE
    try:
        declared = load_params(params_file)
    except ConfigError as exc:
        return str(exc).splitlines()[0]
    if ctx.run_id != declared.run.run_id:
        return f"run ID {ctx.run_id!r} is not {params_file}'s run.run_id {declared.run.run_id!r}"
    expected = (root / declared.run.artifacts_dir / declared.run.run_id).resolve()
    if ctx.run_dir.resolve() != expected:
        return f"its folder {ctx.run_dir.resolve()} is not {expected}"
    differing = differing_params(ctx.params, declared)
    if differing:
        more = f" (+{len(differing) - 5} more)" if len(differing) > 5 else ""
        return f"its params differ from {params_file} in {', '.join(differing[:5])}{more}"
    return None


def pipeline_project(ctx: RunContext) -> Path | None:
    """The DVC project whose pipeline run ``ctx`` is, or None (logged) when it is not one."""
    root = dvc_project_root(ctx.run_dir) if ctx.run_dir.exists() else None
    if root is None:
        log.debug("run %s is outside a DVC project: nothing to record", ctx.run_id)
        return None
    reason = not_the_pipeline_run(ctx, root)
    if reason:
        log.info("run %s is not the DVC pipeline's run (%s): dvc.lock left as is; "
                 "`dvc exp run` is the way to track experiments", ctx.run_id, reason)
        return None
    return root


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def record_stages(root: Path, stages: list[str]) -> list[str]:
    """Record completed ``stages`` in ``root``'s dvc.lock, as ``dvc commit <stage>`` does.

    Returns the recorded stages: none when DVC cannot record them (a warning says how to catch up).
    """
    from dvc.exceptions import DvcException

    try:
        with open_repo(root) as repo:
            for name in stages:
                repo.commit(name, force=True)
    except (DvcException, OSError) as exc:
        log.warning("could not record %s in %s: %s; record them later with `dvc commit %s`",
                    ", ".join(stages), root / "dvc.lock", _one_line(exc), " ".join(stages))
        return []
    log.info("recorded %s in %s", ", ".join(stages), root / "dvc.lock")
    return stages


def push_stages(root: Path, stages: list[str], remote: str | None = None) -> bool:
    """Push the recorded stages' outputs to a DVC remote (None: the default one).

    A missing or unreachable remote only warns, naming it and how to push later.
    """
    name, url = remote, None
    try:
        with open_repo(root) as repo:
            name = name or repo.config["core"].get("remote")
            if not name:
                log.warning("no default DVC remote in %s: outputs are recorded in dvc.lock and the local "
                            "DVC cache only; add one (`dvc remote add -d <name> <url>`), then `dvc push`",
                            root / ".dvc" / "config")
                return False
            url = repo.config["remote"].get(name, {}).get("url")
            pushed = repo.push(targets=stages, remote=name)
    except Exception as exc:  # noqa: BLE001  each remote's filesystem raises its own errors (OSError, botocore, ...)
        where = f"DVC remote {name!r}" + (f" ({url})" if url else "")
        later = f"dvc push -r {remote}" if remote else "dvc push"
        log.warning("could not push to %s: %s; outputs are recorded in dvc.lock and the local DVC cache: "
                    "push them later with `%s` (remotes: `dvc remote list`)", where, _one_line(exc), later)
        return False
    log.info("pushed %d new files of %s to DVC remote %r (%s)", pushed, ", ".join(stages), name, url)
    return True


class DvcRecorder:
    """Records each completed stage of the DVC pipeline's run in dvc.lock as it completes (so a later
    stage, registration, finds its inputs there), and pushes what it recorded once, at the end."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.root: Path | None = None
        self.checked = False
        self.recorded: list[str] = []

    def stage_done(self, name: str) -> None:
        if not self.checked:  # the run folder exists once a stage has completed
            self.root, self.checked = pipeline_project(self.ctx), True
        if self.root is not None:
            self.recorded += record_stages(self.root, [name])

    def push(self) -> None:
        if self.root is not None and self.recorded and self.ctx.params.dvc.push:
            push_stages(self.root, self.recorded, self.ctx.params.dvc.remote)


def record_and_push(ctx: RunContext, stages: Iterable[str]) -> list[str]:
    """Record completed stages of the DVC pipeline's run in dvc.lock, then push their outputs."""
    recorder = DvcRecorder(ctx)
    for name in stages:
        recorder.stage_done(name)
    recorder.push()
    return recorder.recorded
