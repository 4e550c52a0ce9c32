"""FitSense distillation DAG: wiring only; every task calls a stage function.

One task per stage of ``STAGES`` (app/pipeline.py), in its order; teacher
capture is sharded into mapped, pooled tasks and merged:

synthetic -> queries -> teacher shards (mapped, pooled) -> merge -> dataset
-> quality gate -> training (own queue) -> evaluation -> registry

Trigger with overrides, e.g.:
  airflow dags trigger fitsense_distillation --conf '{"n_users": 100, "training_max_steps": 5}'
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

from fitsense.app.pipeline import STAGE_NAMES

TEACHER_POOL = os.environ.get("FITSENSE_TEACHER_POOL", "fitsense_teacher")
TRAINING_QUEUE = os.environ.get("FITSENSE_TRAINING_QUEUE", "default")  # e.g. "gpu" under Celery/Kubernetes

DATASET_ASSET = Asset(name="fitsense_distillation_dataset", uri="file:///fitsense/artifacts/dataset")
STUDENT_ASSET = Asset(name="fitsense_student_adapter", uri="file:///fitsense/artifacts/training/adapter")

# Per-stage task settings; every other stage is a plain task.
TASK_OPTIONS: dict[str, dict] = {
    "dataset": {"outlets": [DATASET_ASSET]},
    "quality": {"task_id": "quality_gate"},
    "training": {"queue": TRAINING_QUEUE, "outlets": [STUDENT_ASSET]},
}


def _dag_run() -> tuple[dict, str]:
    ctx = get_current_context()
    return dict(ctx["params"]), ctx["run_id"]


def _stage_task(name: str):
    options = {"task_id": name, **TASK_OPTIONS.get(name, {})}

    @task(**options)
    def run_stage() -> dict:
        from fitsense.app.orchestration import run_stage_task

        params, run_id = _dag_run()
        return run_stage_task(name, params, run_id)

    return run_stage()


def _teacher_tasks(upstream):
    """Teacher capture as mapped shards (one per ``teacher_shards``), then one merge."""

    @task
    def teacher_shards() -> list[int]:
        params, _ = _dag_run()
        return list(range(int(params["teacher_shards"])))

    @task(
        pool=TEACHER_POOL,
        retries=3,
        retry_delay=pendulum.duration(seconds=10),
        retry_exponential_backoff=2.0,
        max_retry_delay=pendulum.duration(minutes=10),
    )
    def capture_teacher_shard(shard_index: int) -> dict:
        from fitsense.app.orchestration import capture_shard_task

        params, run_id = _dag_run()
        return capture_shard_task(shard_index, int(params["teacher_shards"]), params, run_id)

    @task
    def merge_teacher_shards(shard_results: list[dict]) -> dict:
        from fitsense.app.orchestration import merge_shards_task

        params, run_id = _dag_run()
        return merge_shards_task(int(params["teacher_shards"]), params, run_id)

    shards = teacher_shards()
    upstream >> shards
    return merge_teacher_shards(capture_teacher_shard.expand(shard_index=shards))


@dag(
    dag_id="fitsense_distillation",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["fitsense", "distillation", "mlops"],
    default_args={"retries": 0},
    params={
        "params_file": Param("params.yaml", type="string", description="params file, relative to the project"),
        "run_id": Param(None, type=["null", "string"], pattern=r"^[A-Za-z0-9._-]{1,128}$",
                        description="pipeline run ID (null: from Airflow's run ID); params.yaml's run.run_id "
                                    "with no overrides is the DVC pipeline's run, recorded in dvc.lock"),
        "seed": Param(None, type=["null", "integer"], minimum=0),
        "n_users": Param(None, type=["null", "integer"], minimum=1),
        "n_queries": Param(None, type=["null", "integer"], minimum=1),
        "teacher_provider": Param(None, type=["null", "string"], enum=[None, "offline", "openai"]),
        "teacher_model": Param(None, type=["null", "string"]),
        "teacher_base_url": Param(None, type=["null", "string"]),
        "teacher_shards": Param(2, type="integer", minimum=1, maximum=64, description="mapped capture tasks"),
        "base_model": Param(None, type=["null", "string"]),
        "training_max_steps": Param(None, type=["null", "integer"], minimum=-1),
        "eval_max_examples": Param(None, type=["null", "integer"], minimum=1),
        "overrides": Param({}, type="object", description="any params.yaml key: {\"training.lora.r\": 8}"),
    },
)
def fitsense_distillation():
    previous = None
    for name in STAGE_NAMES:
        current = _teacher_tasks(previous) if name == "teacher" else _stage_task(name)
        if previous is not None and name != "teacher":
            previous >> current
        previous = current


fitsense_distillation()
