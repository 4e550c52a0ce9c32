"""Glue between Airflow and the stage functions, so the DAG file stays pure wiring.

Each Airflow task calls ``run_stage_task(stage, dag_params, airflow_run_id)``: it
loads ``params.yaml``, applies the DAG run's Params as overrides, derives the
pipeline run ID from Airflow's run ID (or takes the ``run_id`` Param), and calls
the same stage function that the CLI and ``dvc.yaml`` call. A task that completes
a stage of the DVC pipeline's run records it in dvc.lock (app/dvcsync.py).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fitsense.config import Params, load_params
from fitsense.runs import RunContext

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# DAG Param name -> params.yaml key. None values mean "use params.yaml".
DAG_PARAM_KEYS: dict[str, str] = {
    "seed": "seed",
    "n_users": "synthetic.n_users",
    "n_queries": "queries.n_queries",
    "teacher_provider": "teacher.provider",
    "teacher_model": "teacher.model",
    "teacher_base_url": "teacher.base_url",
    "base_model": "training.base_model",
    "training_max_steps": "training.max_steps",
    "eval_max_examples": "evaluation.max_examples",
}


def pipeline_run_id(airflow_run_id: str) -> str:
    """A filesystem-safe pipeline run ID from Airflow's (``manual__2026-01-05T10:00:00+00:00``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", airflow_run_id).strip("-")[:128] or "airflow"


def params_from_dag(dag_params: dict) -> Params:
    overrides = {key: dag_params[name] for name, key in DAG_PARAM_KEYS.items() if dag_params.get(name) is not None}
    overrides.update(dag_params.get("overrides") or {})
    params_file = dag_params.get("params_file") or "params.yaml"
    return load_params(PROJECT_ROOT / params_file, overrides)


def context_for_task(dag_params: dict, airflow_run_id: str) -> RunContext:
    # Relative paths in params.yaml (artifacts, caches, sqlite:///mlruns.db) mean the
    # same under Airflow as on the CLI: tasks run from the project root.
    os.chdir(PROJECT_ROOT)
    from fitsense.logs import configure_logging

    params = params_from_dag(dag_params)
    configure_logging(extra_env_names=(params.teacher.api_key_env,))
    return RunContext.create(params, dag_params.get("run_id") or pipeline_run_id(airflow_run_id))


def run_stage_task(stage: str, dag_params: dict, airflow_run_id: str) -> dict:
    from fitsense.app.dvcsync import record_and_push
    from fitsense.app.pipeline import run_stage

    ctx = context_for_task(dag_params, airflow_run_id)
    result = run_stage(ctx, stage)
    record_and_push(ctx, [stage])  # only for the DVC pipeline's run (DAG Param run_id = params.yaml's)
    return result


def capture_shard_task(shard_index: int, num_shards: int, dag_params: dict, airflow_run_id: str) -> dict:
    from fitsense.data.teacher.capture import capture_teacher_responses

    ctx = context_for_task(dag_params, airflow_run_id)
    return capture_teacher_responses(ctx, shard_index=shard_index, num_shards=num_shards)


def merge_shards_task(num_shards: int, dag_params: dict, airflow_run_id: str) -> dict:
    """Merge shard outputs into the teacher stage's records and manifest."""
    from fitsense.app.pipeline import mark_complete
    from fitsense.data.teacher.capture import merge_teacher_shards

    ctx = context_for_task(dag_params, airflow_run_id)
    result = merge_teacher_shards(ctx, num_shards)
    mark_complete(ctx, "teacher")
    from fitsense.app.dvcsync import record_and_push

    record_and_push(ctx, ["teacher"])
    return result
