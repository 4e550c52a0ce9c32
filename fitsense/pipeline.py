"""The pipeline's stages, in order, and a runner that resumes completed ones.

Each stage is one entry function ``fn(ctx: RunContext) -> dict`` living in its
stage module. The CLI, ``dvc.yaml`` and the Airflow DAG all call the same
functions through this table.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import time
from dataclasses import dataclass
from typing import Callable

from fitsense.runs import MANIFEST, RunContext, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str  # "module:function"
    params: tuple[str, ...]  # params.yaml sections this stage reads (besides upstream ones)
    summary: str

    def load(self) -> Callable[[RunContext], dict]:
        module, func = self.entry.split(":")
        return getattr(importlib.import_module(module), func)


STAGES: tuple[Stage, ...] = (
    Stage("synthetic", "fitsense.data.synthetic:generate_synthetic_data", ("seed", "synthetic"),
          "synthetic users, profiles, plans, workouts and daily logs"),
    Stage("queries", "fitsense.data.queries:build_queries", ("queries",),
          "coaching requests with slice tags and constraints"),
    Stage("teacher", "fitsense.data.teacher.capture:capture_teacher_responses", ("teacher",),
          "validated teacher answers for every query"),
    Stage("dataset", "fitsense.data.dataset:build_distillation_dataset", ("dataset",),
          "filtered, de-duplicated, user-grouped train/val/test splits"),
    Stage("quality", "fitsense.data.quality:run_data_quality", ("quality",),
          "validation, statistics, anomalies, drift and bias: the gate before training"),
    Stage("training", "fitsense.training.train:train_student", ("training",),
          "LoRA / QLoRA fine-tune of the student"),
    Stage("evaluation", "fitsense.evaluation.evaluate:evaluate_models", ("evaluation",),
          "base student vs fine-tuned student vs teacher on the test split"),
    Stage("registry", "fitsense.registry.register:register_student", ("registry",),
          "register the student in MLflow with its dataset lineage"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"unknown stage {name!r}; stages are {', '.join(STAGE_NAMES)}")


def fingerprint(ctx: RunContext, name: str) -> str:
    """Hash of the params this stage and every upstream stage read."""
    sections: list[str] = []
    for stage in STAGES:
        sections.extend(stage.params)
        if stage.name == name:
            break
    blob = ctx.params.section_hash(*[s for s in sections if s != "seed"]) + f"|seed={ctx.params.seed}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
    log.info("stage %s: %s (run %s)", name, stage.summary, ctx.run_id)
    started = time.perf_counter()
    result = stage.load()(ctx) or {}
    manifest = mark_complete(ctx, name, seconds=round(time.perf_counter() - started, 2))
    log.info("stage %s done in %.1fs", name, manifest["seconds"])
    return result


def run_pipeline(
    ctx: RunContext, start: str | None = None, stop: str | None = None, force: bool = False
) -> dict[str, dict]:
    """Run stages in order, skipping those already complete with the same params (resume)."""
    names = list(STAGE_NAMES)
    lo = names.index(start) if start else 0
    hi = names.index(stop) + 1 if stop else len(names)
    results: dict[str, dict] = {}
    for name in names[lo:hi]:
        if not force and is_complete(ctx, name):
            log.info("stage %s: complete for these params, skipped", name)
            results[name] = {"skipped": True}
            continue
        force = True  # everything downstream of a rerun stage reruns too
        results[name] = run_stage(ctx, name)
    return results
