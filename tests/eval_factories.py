"""Factories for evaluation and registry tests: a real dataset split, a tiny LoRA adapter, student.json.

The adapter is a PEFT LoRA adapter on the tiny test model with random (non-zero)
LoRA weights, so the "fine-tuned" student answers differently from the base.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from dq_factories import make_ctx, write_inputs

from fitsense.runs import RunContext, atomic_path, write_json

REPO = Path(__file__).resolve().parent.parent


def fresh_tracking_uri(folder: Path) -> str:
    """A new SQLite MLflow store in ``folder``, copied from a migrated template (migrating one takes ~10 s)."""
    import mlflow

    cache = Path(os.environ.get("FITSENSE_TEST_CACHE", REPO / ".cache" / "test"))
    template = cache / f"mlflow-{mlflow.__version__}.db"
    if not template.exists():
        with atomic_path(template) as tmp:
            mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlruns.db"
    shutil.copyfile(template, db)
    return f"sqlite:///{db}"


def make_adapter(model_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Save a random-weight LoRA adapter (and the tokenizer) for ``model_dir`` in ``out_dir`` (reused)."""
    if (out_dir / "adapter_config.json").exists():
        return out_dir
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM", init_lora_weights=False))
    peft_model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(out_dir)
    return out_dir


def make_eval_run(tmp_path: Path, model_dir: Path, adapter_dir: Path, run_id: str = "r1",
                  n_users: int = 30, **overrides) -> RunContext:
    """A run with queries, teacher records, a built dataset and training/student.json (no training)."""
    from fitsense.data.dataset import build_distillation_dataset

    defaults = {
        "registry.artifact_location": str(tmp_path / "mlartifacts"),
        "training.base_model": str(model_dir),
        "training.device": "cpu",
    }
    if "registry.tracking_uri" not in overrides:
        defaults["registry.tracking_uri"] = fresh_tracking_uri(tmp_path)
    ctx = make_ctx(tmp_path, run_id, **{**defaults, **overrides})
    write_inputs(ctx, n_users=n_users)
    build_distillation_dataset(ctx)
    write_student_json(ctx, model_dir, adapter_dir)
    return ctx


def make_pipeline_eval_run(tmp_path: Path, model_dir: Path, adapter_dir: Path, run_id: str = "p1",
                           **overrides) -> RunContext:
    """A run whose data stages really ran (synthetic to dataset, offline teacher, challenge split), no training."""
    from fitsense.app.pipeline import run_pipeline

    defaults = {
        "registry.artifact_location": str(tmp_path / "mlartifacts"), "registry.tracking_uri": fresh_tracking_uri(tmp_path),
        "training.base_model": str(model_dir), "training.device": "cpu", "synthetic.n_users": 80,
        "queries.n_queries": 240, "teacher.cache_dir": str(tmp_path / "cache"),
    }
    ctx = make_ctx(tmp_path, run_id, **{**defaults, **overrides})
    run_pipeline(ctx, stop="dataset")
    write_student_json(ctx, model_dir, adapter_dir)
    return ctx


def write_student_json(ctx: RunContext, model_dir: Path, adapter_dir: Path) -> None:
    write_json(ctx.stage_dir("training") / "student.json", {
        "base_model": str(model_dir), "base_model_path": str(model_dir), "adapter_dir": str(adapter_dir),
        "merged_dir": None, "mlflow_run_id": None,
        "dataset_run_id": json.loads((ctx.run_dir / "dataset" / "dataset_info.json").read_text())["dataset_run_id"],
        "device": "cpu", "quantization": "none",
    })
