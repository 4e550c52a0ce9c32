"""FitSense distillation DAG: wiring only; every task calls a stage function.

synthetic -> queries -> teacher shards (mapped, pooled) -> merge -> dataset
-> quality gate -> training (own queue) -> evaluation -> registry

Trigger with overrides, e.g.:
  airflow dags trigger fitsense_distillation --conf '{"n_users": 100, "training_max_steps": 5}'
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

TEACHER_POOL = os.environ.get("FITSENSE_TEACHER_POOL", "fitsense_teacher")
TRAINING_QUEUE = os.environ.get("FITSENSE_TRAINING_QUEUE", "default")  # e.g. "gpu" under Celery/Kubernetes

DATASET_ASSET = Asset(name="fitsense_distillation_dataset", uri="file:///fitsense/artifacts/dataset")
STUDENT_ASSET = Asset(name="fitsense_student_adapter", uri="file:///fitsense/artifacts/training/adapter")


def _dag_run() -> tuple[dict, str]:
    ctx = get_current_context()
    return dict(ctx["params"]), ctx["run_id"]


def _stage(name: str) -> dict:
    from fitsense.orchestration import run_stage_task

    params, run_id = _dag_run()
    return run_stage_task(name, params, run_id)


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
    @task
    def synthetic() -> dict:
        return _stage("synthetic")

    @task
    def queries() -> dict:
        return _stage("queries")

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
        from fitsense.orchestration import capture_shard_task

        params, run_id = _dag_run()
        return capture_shard_task(shard_index, int(params["teacher_shards"]), params, run_id)

    @task
    def merge_teacher_shards(shard_results: list[dict]) -> dict:
        from fitsense.orchestration import merge_shards_task

        params, run_id = _dag_run()
        return merge_shards_task(int(params["teacher_shards"]), params, run_id)

    @task(outlets=[DATASET_ASSET])
    def dataset() -> dict:
        return _stage("dataset")

    @task
    def quality_gate() -> dict:
        return _stage("quality")

    @task(queue=TRAINING_QUEUE, outlets=[STUDENT_ASSET])
    def training() -> dict:
        return _stage("training")

    @task
    def evaluation() -> dict:
        return _stage("evaluation")

    @task
    def registry() -> dict:
        return _stage("registry")

    shards = teacher_shards()
    synthetic() >> queries() >> shards
    merged = merge_teacher_shards(capture_teacher_shard.expand(shard_index=shards))
    merged >> dataset() >> quality_gate() >> training() >> evaluation() >> registry()


fitsense_distillation()
