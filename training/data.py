"""Training data: the dataset splits as TRL prompt-completion rows, and the quality gate check.

Examples longer than ``training.max_length`` are dropped, not truncated: a
truncated answer would teach the student to stop mid-JSON.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fitsense.errors import InputDataError, StageError
from fitsense.records import DistillRecord
from fitsense.runs import RunContext, read_json, read_jsonl

log = logging.getLogger(__name__)


def to_prompt_completion(records: list[DistillRecord], source: str) -> list[dict]:
    """DistillRecords -> TRL prompt-completion rows; a malformed record is named by file and query id."""
    rows = []
    for rec in records:
        roles = [m.role for m in rec.messages]
        if len(roles) < 2 or roles[-1] != "assistant" or "assistant" in roles[:-1] or roles[-2] != "user":
            raise InputDataError(f"{source}: record {rec.query_id}: messages must be [system,] user, assistant; got {roles}")
        msgs = [m.model_dump() for m in rec.messages]
        rows.append({"prompt": msgs[:-1], "completion": msgs[-1:], "query_id": rec.query_id, "kind": rec.kind})
    return rows


def system_prompt_of(rows: list[dict]) -> str | None:
    """The system prompt the student is trained with (that of the first row), or None without one."""
    for message in rows[0]["prompt"] if rows else []:
        if message["role"] == "system":
            return message["content"]
    return None


def load_split(ctx: RunContext, split: str) -> list[DistillRecord]:
    path = ctx.require("dataset", f"{split}.jsonl")
    return read_jsonl(path, DistillRecord)


def fits(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """Keep the rows whose full chat rendering fits in max_length tokens."""
    kept = []
    for row in rows:
        ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=True)
        if len(ids["input_ids"]) <= max_length:
            kept.append(row)
    return kept, len(rows) - len(kept)


def sample_rows(rows: list[dict], cap: int | None, seed: int) -> list[dict]:
    if cap is None or len(rows) <= cap:
        return rows
    import random

    return random.Random(seed).sample(rows, cap)


def check_quality_gate(ctx: RunContext) -> None:
    gate = ctx.run_dir / "quality" / "gate.json"
    if not gate.exists():
        log.warning("no quality gate result for run %s (%s): training without it", ctx.run_id, gate)
        return
    result = read_json(gate)
    if not result.get("passed", False):
        raise StageError(f"{gate}: the data quality gate failed ({result.get('failures')}); not training")


@dataclass
class TrainingRows:
    train: list[dict]
    val: list[dict]
    dropped_train: int  # longer than training.max_length
    dropped_val: int


def load_training_rows(ctx: RunContext, tokenizer) -> TrainingRows:
    """The train and val splits as prompt-completion rows that fit ``training.max_length`` (capped, sampled)."""
    cfg, seed = ctx.params.training, ctx.params.seed
    dataset_dir = ctx.run_dir / "dataset"
    train = to_prompt_completion(load_split(ctx, "train"), str(dataset_dir / "train.jsonl"))
    val_path = dataset_dir / "val.jsonl"
    val = to_prompt_completion(load_split(ctx, "val"), str(val_path)) if val_path.exists() else []
    train, dropped_train = fits(sample_rows(train, cfg.max_train_examples, seed), tokenizer, cfg.max_length)
    val, dropped_val = fits(val, tokenizer, cfg.max_length)
    val = sample_rows(val, cfg.max_val_examples, seed)
    if dropped_train or dropped_val:
        log.warning("dropped %d train / %d val examples longer than training.max_length=%d tokens",
                    dropped_train, dropped_val, cfg.max_length)
    if not train:
        raise InputDataError(f"{dataset_dir / 'train.jsonl'}: no training example fits "
                             f"training.max_length={cfg.max_length}")
    return TrainingRows(train, val, dropped_train, dropped_val)
