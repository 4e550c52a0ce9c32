"""Resume bookkeeping: which checkpoint a rerun continues from, and the MLflow run it continues.

Checkpoints are saved every ``eval_steps`` to ``training/checkpoints/`` with a
``resume.json`` saying what they belong to (seed, training params, dataset
digest, base model). A killed run with the same key continues; other params or
data, or a rerun after a completed training, start afresh.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from fitsense.config import Params
from fitsense.runs import read_json

log = logging.getLogger(__name__)

RESUME_FILE = "resume.json"  # in checkpoints/: what the checkpoints belong to, and the MLflow run to continue


def resume_key(params: Params, dataset_digest: str, base_model_path: Path) -> str:
    return f"{params.section_hash('seed', 'training')}|{dataset_digest}|{base_model_path.resolve()}"


def prepare_checkpoints(ckpt_dir: Path, key: str) -> tuple[str | None, dict]:
    """The checkpoint to resume from (or None) and the resume record; stale checkpoints are cleared."""
    from transformers.trainer_utils import get_last_checkpoint

    record_path = ckpt_dir / RESUME_FILE
    if ckpt_dir.exists():
        record = read_json(record_path) if record_path.exists() else {}
        last = get_last_checkpoint(str(ckpt_dir))
        if last and record.get("completed"):
            log.info("the previous training of this run completed: training afresh")
        elif last and record.get("key") == key:
            log.info("resuming from %s", last)
            return last, record
        elif last:
            log.warning("checkpoints in %s belong to other params or data: starting afresh", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True)
    return None, {"key": key}


def tokens_at(checkpoint: str | None) -> int:
    if not checkpoint:
        return 0
    state = read_json(Path(checkpoint) / "trainer_state.json")
    return int(state.get("num_input_tokens_seen", 0) or 0)
