"""The pipeline's stages, declared once, and a runner that resumes completed ones.

``STAGES`` is the single declaration of the stages: their order, entry
functions, the params they read, their code, inputs and outputs. The CLI runs
them from it, the Airflow DAG builds its task chain from it, and ``dvc.yaml``
is generated from it (``fitsense dvc-yaml``; a test keeps the two equal).
Each entry function is ``fn(ctx: RunContext) -> dict`` in its stage module,
imported when the stage runs (training pulls in torch, seconds to import).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import time
from dataclasses import dataclass
from typing import Callable

from fitsense.errors import UserError
from fitsense.memory import check_stage_memory
from fitsense.runs import MANIFEST, RunContext, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str  # "module:function"
    summary: str
    command: str  # its CLI command: `fitsense <command>`
    params: tuple[str, ...]  # params.yaml sections or dotted keys this stage reads (besides upstream ones)
    code: tuple[str, ...]  # source files and folders, relative to the project root
    inputs: tuple[str, ...] = ()  # upstream artifacts: "stage" (its whole folder) or "stage/file"
    # Outputs are versioned in the DVC cache (app/dvcfile.py says why none is `cache: false`).
    outs: tuple[str, ...] = ()  # artifacts under this stage's folder ("" is the whole folder)
    metrics: tuple[str, ...] = ()  # small JSON files (`dvc metrics show`)
    plots: tuple[str, ...] = ()  # CSV files (`dvc plots show`)

    def load(self) -> Callable[[RunContext], dict]:
        module, func = self.entry.split(":")
        return getattr(importlib.import_module(module), func)


STAGES: tuple[Stage, ...] = (
    Stage("synthetic", "fitsense.data.synthetic:generate_synthetic_data",
          "synthetic users, profiles, plans, workouts and daily logs",
          command="synthetic",
          params=("seed", "synthetic", "run"),
          code=("Data-Pipeline/synthetic.py", "Data-Pipeline/planning.py", "fitsense/catalogue.py",
                "database/schema.sql"),
          outs=("",)),
    Stage("queries", "fitsense.data.queries:build_queries",
          "coaching requests with slice tags and constraints",
          command="queries",
          params=("queries",),
          code=("Data-Pipeline/queries.py", "Data-Pipeline/prompts.py", "Data-Pipeline/phrasings.py",
                "fitsense/records.py"),
          inputs=("synthetic",), outs=("",)),
    Stage("teacher", "fitsense.data.teacher.capture:capture_teacher_responses",
          "validated teacher answers for every query",
          command="teacher capture",
          params=("teacher",),
          code=("Data-Pipeline/teacher", "fitsense/plan.py", "fitsense/constraints.py"),
          inputs=("queries",), outs=("",)),
    Stage("dataset", "fitsense.data.dataset:build_distillation_dataset",
          "filtered, de-duplicated, user-grouped train/val/test splits",
          command="dataset",
          params=("dataset",),
          code=("Data-Pipeline/dataset.py", "Data-Pipeline/dedup.py", "Data-Pipeline/prompts.py", "Data-Pipeline/phrasings.py"),
          inputs=("queries", "teacher"), outs=("",)),
    Stage("quality", "fitsense.data.quality.stage:run_data_quality",
          "validation, statistics, anomalies, drift and bias: the gate before training",
          command="quality",
          params=("quality", "seed", "synthetic.anchor_date", "dataset.require_valid", "teacher.max_retries"),
          code=("Data-Pipeline/quality",),
          inputs=("synthetic", "queries", "teacher", "dataset"),
          outs=("report.md", "gate.json", "data_docs", "charts", "validation.json", "stats.json", "anomalies.json",
                "drift.json", "bias.json", "manifest.json"), metrics=("metrics.json",)),
    Stage("training", "fitsense.training.train:train_student",
          "LoRA / QLoRA fine-tune of the student",
          command="train",
          params=("training", "registry.tracking_uri", "registry.experiment"),
          code=("training",),
          inputs=("dataset", "quality/gate.json"),
          # checkpoints/ is resume state, not an output: not worth versioning, and DVC leaves it alone.
          outs=("adapter", "screen", "student.json", "manifest.json"), metrics=("metrics.json",), plots=("loss.csv",)),
    Stage("evaluation", "fitsense.evaluation.evaluate:evaluate_models",
          "base student vs fine-tuned student vs teacher on the test split",
          command="evaluate",
          params=("evaluation",),
          code=("evaluation",),
          inputs=("queries", "dataset", "teacher", "training/adapter", "training/screen", "training/student.json"),
          outs=("comparison.md", "charts", "manifest.json"), metrics=("metrics.json",), plots=("per_slice.csv",)),
    Stage("registry", "fitsense.registry.register:register_student",
          "register the student in MLflow with its dataset lineage",
          command="register",
          params=("registry",),
          code=("registry",),
          inputs=("evaluation/metrics.json", "training/student.json"),
          outs=("registration.json", "manifest.json")),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


class UnknownStageError(UserError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise UnknownStageError(f"unknown stage {name!r}; stages are {', '.join(STAGE_NAMES)}")


def fingerprint(ctx: RunContext, name: str) -> str:
    """Hash of the params this stage and every upstream stage read."""
    keys: list[str] = []
    for stage in STAGES:
        keys.extend(k for k in stage.params if k not in keys)
        if stage.name == name:
            break
    return hashlib.sha256(ctx.params.section_hash(*keys).encode()).hexdigest()[:16]


def is_complete(ctx: RunContext, name: str) -> bool:
    manifest = ctx.manifest(name)
    return bool(manifest) and manifest.get("fingerprint") == fingerprint(ctx, name)


def mark_complete(ctx: RunContext, name: str, **extra) -> dict:
    """Stamp a finished stage's manifest with its params fingerprint, so reruns can skip it."""
    manifest = ctx.manifest(name) or {}
    manifest.update(fingerprint=fingerprint(ctx, name), **extra)
    write_json(ctx.stage_dir(name) / MANIFEST, manifest)
    return manifest


def run_stage(ctx: RunContext, name: str) -> dict:
    """Run one stage unconditionally and stamp its manifest with the params fingerprint."""
    stage = get_stage(name)
    check_stage_memory(name, ctx.params)  # before any work: a stage too big for memory fails now, not swapping
    log.info("stage %s: %s (run %s)", name, stage.summary, ctx.run_id)
    started = time.perf_counter()
    result = stage.load()(ctx) or {}
    manifest = mark_complete(ctx, name, seconds=round(time.perf_counter() - started, 2))
    log.info("stage %s done in %.1fs", name, manifest["seconds"])
    return result


def stage_range(start: str | None = None, stop: str | None = None) -> list[str]:
    """Stage names from ``start`` to ``stop`` inclusive (unknown names are a ``UserError``)."""
    lo = STAGE_NAMES.index(get_stage(start).name) if start else 0
    hi = STAGE_NAMES.index(get_stage(stop).name) + 1 if stop else len(STAGE_NAMES)
    return list(STAGE_NAMES[lo:hi])


def run_pipeline(
    ctx: RunContext, start: str | None = None, stop: str | None = None, force: bool = False
) -> dict[str, dict]:
    """Run stages in order, skipping those already complete with the same params (resume).

    Stages it runs of the DVC pipeline's run are recorded in dvc.lock and pushed (app/dvcsync.py);
    skipped ones are left as DVC sees them (the resume check above knows params, not code).
    """
    from fitsense.app.dvcsync import DvcRecorder

    results: dict[str, dict] = {}
    dvc = DvcRecorder(ctx)
    try:
        for name in stage_range(start, stop):
            if not force and is_complete(ctx, name):
                log.info("stage %s: complete for these params, skipped", name)
                results[name] = {"skipped": True}
                continue
            force = True  # everything downstream of a rerun stage reruns too
            results[name] = run_stage(ctx, name)
            dvc.stage_done(name)
    finally:
        dvc.push()  # what completed, also when a later stage failed
    return results
