"""``dvc.yaml``, generated from ``STAGES`` so the stage list is declared once.

``fitsense dvc-yaml`` rewrites the file; ``fitsense dvc-yaml --check`` (and a
test) fails when the committed file has drifted from ``STAGES``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from fitsense.app.pipeline import STAGES, Stage

HEADER = """\
# GENERATED from STAGES in app/pipeline.py by `fitsense dvc-yaml`: edit STAGES, then regenerate.
# One DVC stage per pipeline stage; each calls the same stage function as the CLI
# and the Airflow DAG (`fitsense stage <name>`). Paths come from params.yaml.
#   dvc repro                      # run what is out of date
#   dvc exp run -S training.lora.r=8 -S training.max_steps=30
"""
RUN_DIR = "${run.artifacts_dir}/${run.run_id}"

# DVC plot definitions over the stages' plot files.
PLOTS = [
    {"student_loss": {
        "title": "Student loss (train and validation)",
        "x": "step",
        "y": {f"{RUN_DIR}/training/loss.csv": ["train_loss", "val_loss"]},
    }},
    {"per_slice_adherence": {
        "title": "Constraint adherence per slice (base, student, teacher)",
        "template": "bar_horizontal",
        "x": "adherence",
        "y": {f"{RUN_DIR}/evaluation/per_slice.csv": "label"},
    }},
]


def _artifact(stage: str, name: str = "") -> str:
    return f"{RUN_DIR}/{stage}" + (f"/{name}" if name else "")


def dvc_stage(stage: Stage) -> dict:
    # Every output goes to the DVC cache, metrics and plots included: artifacts/ is not in git, so an
    # uncached output would be missing from every other clone, and `dvc repro` there would redo its stage.
    entry: dict = {
        "cmd": f"fitsense stage {stage.name}",
        "deps": [*stage.code, *(_artifact(*dep.split("/", 1)) for dep in stage.inputs)],
        "params": list(stage.params),
        "outs": [_artifact(stage.name, name) for name in stage.outs],
    }
    if stage.metrics:
        entry["metrics"] = [_artifact(stage.name, m) for m in stage.metrics]
    if stage.plots:
        entry["plots"] = [_artifact(stage.name, p) for p in stage.plots]
    return entry


def dvc_yaml() -> dict:
    return {
        "vars": ["params.yaml"],
        "stages": {stage.name: dvc_stage(stage) for stage in STAGES},
        "plots": PLOTS,
    }


def render_dvc_yaml() -> str:
    return HEADER + "\n" + yaml.safe_dump(dvc_yaml(), sort_keys=False, width=120)


def write_dvc_yaml(path: str | Path = "dvc.yaml", check: bool = False) -> bool:
    """Write ``dvc.yaml`` (or with ``check``, only compare); True when the file was already current."""
    path = Path(path)
    text = render_dvc_yaml()
    current = path.exists() and path.read_text() == text
    if not check and not current:
        path.write_text(text)
    return current
