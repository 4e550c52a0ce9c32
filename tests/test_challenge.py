"""The unseen-phrasing challenge split: test users only, held-out wordings only, same structure and teacher answer."""

from __future__ import annotations

import pytest

from fitsense.app.pipeline import run_pipeline
from fitsense.config import load_params
from fitsense.data.dataset import CHALLENGE, SPLITS
from fitsense.data.teacher.offline import answer_query
from fitsense.records import CoachingQuery, DistillRecord
from fitsense.runs import RunContext, read_json, read_jsonl


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("challenge")
    params = load_params(None, {"synthetic.n_users": 80, "queries.n_queries": 240, "run.artifacts_dir": str(root),
                                "teacher.cache_dir": str(root / "cache")})
    ctx = RunContext.create(params, "ch")
    run_pipeline(ctx, stop="dataset")
    folder = ctx.run_dir / "dataset"
    splits = {s: read_jsonl(folder / f"{s}.jsonl", DistillRecord) for s in (*SPLITS, CHALLENGE)}
    queries = {q.query_id: q for q in read_jsonl(ctx.require("queries", "queries.jsonl"), CoachingQuery)}
    return ctx, splits, queries


def test_challenge_is_the_test_split_reworded(built):
    _, splits, _ = built
    test, challenge = splits["test"], splits[CHALLENGE]
    assert challenge and [r.query_id for r in challenge] == [r.query_id for r in test]
    for t, c in zip(test, challenge):
        assert c.user_id == t.user_id and c.kind == t.kind and c.constraints == t.constraints
        assert c.messages[0] == t.messages[0] and c.messages[2] == t.messages[2]  # system prompt, teacher answer
        assert c.messages[1] != t.messages[1]
        assert c.phrasing.intent == t.phrasing.intent and c.phrasing.slots == t.phrasing.slots
    assert {r.user_id for r in challenge}.isdisjoint({r.user_id for s in ("train", "val") for r in splits[s]})


def test_no_paraphrase_template_is_in_both_training_and_challenge(built):
    _, splits, _ = built
    seen = {r.phrasing.template for s in SPLITS for r in splits[s]}
    unseen = {r.phrasing.template for r in splits[CHALLENGE]}
    assert unseen and seen and seen.isdisjoint(unseen)
    assert all(r.phrasing.held_out for r in splits[CHALLENGE])
    assert not any(r.phrasing.held_out for s in SPLITS for r in splits[s])


def test_reused_teacher_answer_is_the_offline_teachers_answer_to_the_new_wording(built):
    """The offline teacher answers from the structure, so reusing its answer for the new wording is exact."""
    _, splits, queries = built
    for c in splits[CHALLENGE]:
        reworded = queries[c.query_id].model_copy(update={"messages": c.messages[:2], "phrasing": c.phrasing})
        assert answer_query(reworded).to_json() == c.messages[2].content


def test_dataset_info_counts_the_challenge(built):
    ctx, splits, _ = built
    info = read_json(ctx.run_dir / "dataset" / "dataset_info.json")
    assert info[CHALLENGE]["rows"] == len(splits[CHALLENGE])
    assert info[CHALLENGE]["referral_required"] == sum(r.constraints.referral_required for r in splits[CHALLENGE])
    assert (ctx.run_dir / "dataset" / f"{CHALLENGE}.parquet").exists()
