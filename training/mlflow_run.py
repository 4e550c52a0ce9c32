"""MLflow for a training run: one run per training (continued on resume), its params and dataset inputs."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from fitsense.config import Params
from fitsense.runs import RunContext

log = logging.getLogger(__name__)


def start_mlflow_run(params: Params, ctx: RunContext, record: dict, resuming: bool):
    import mlflow
    from mlflow.exceptions import MlflowException

    from fitsense.tracking import setup_mlflow

    setup_mlflow(params)
    if resuming and record.get("mlflow_run_id"):
        try:
            return mlflow.start_run(run_id=record["mlflow_run_id"]), True
        except MlflowException:
            log.warning("MLflow run %s not found in %s: starting a new one",
                        record["mlflow_run_id"], params.registry.tracking_uri)
    return mlflow.start_run(run_name=f"train-{ctx.run_id}"), False


def log_run_inputs(params: Params, info: dict, train_rows, val_rows, dataset_dir: Path, extra: dict) -> None:
    import mlflow
    import pandas as pd

    cfg = params.training
    flat = {f"training.{k}": v for k, v in cfg.model_dump(mode="json").items() if k != "lora"}
    flat.update({f"training.lora.{k}": v for k, v in cfg.lora.model_dump(mode="json").items()})
    flat.update({"seed": params.seed, **extra})
    mlflow.log_params({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flat.items()})
    for split, rows, context in (("train", train_rows, "training"), ("val", val_rows, "validation")):
        if not rows:
            continue
        df = pd.DataFrame({
            "query_id": [r["query_id"] for r in rows],
            "kind": [r["kind"] for r in rows],
            "prompt": [json.dumps(r["prompt"], ensure_ascii=False) for r in rows],
            "completion": [r["completion"][0]["content"] for r in rows],
        })
        with warnings.catch_warnings():  # a local path matches two equivalent MLflow source types; either is right
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(
                df, source=str((dataset_dir / f"{split}.jsonl").resolve()),
                name=f"{info['dataset_run_id']}-{split}", targets="completion",
            )
        mlflow.log_input(dataset, context=context, tags={"dataset_run_id": info["dataset_run_id"]})
