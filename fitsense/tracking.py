"""MLflow tracking set-up: one store and experiment for training, evaluation and registration."""

from __future__ import annotations

import os
from pathlib import Path

from fitsense.config import Params


def setup_mlflow(params: Params) -> str:
    """Point MLflow at the configured tracking store and experiment; return the experiment id.

    A relative ``sqlite:///file.db`` URI and the artifact location are resolved
    against the current directory, so every stage of a run writes to the same store.
    """
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    cfg = params.registry
    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        location = Path(cfg.artifact_location).resolve().as_uri()
        experiment_id = mlflow.create_experiment(cfg.experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
