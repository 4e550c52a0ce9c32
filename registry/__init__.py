"""MLflow tracking and model registry with dataset lineage."""
