"""Evaluation on real pipeline data: test + challenge splits, base subset, intervals, paired tests, MLflow tables."""

from __future__ import annotations

import json

import pytest
from eval_factories import make_adapter, make_pipeline_eval_run

from fitsense.evaluation.evaluate import PER_EXAMPLE_TABLE, SIDE_BY_SIDE_TABLE, evaluate_models
from fitsense.registry.model_card import model_card
from fitsense.runs import read_json, read_jsonl


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalch")
    adapter = make_adapter(tiny_model_dir, tmp / "adapter")
    ctx = make_pipeline_eval_run(tmp, tiny_model_dir, adapter, **{
        "evaluation.max_examples": 4, "evaluation.max_challenge_examples": 4, "evaluation.base_max_examples": 2,
        "evaluation.max_new_tokens": 8, "evaluation.batch_size": 4})
    evaluate_models(ctx)
    out = ctx.run_dir / "evaluation"
    return ctx, read_json(out / "metrics.json"), out


def test_both_splits_are_scored_and_the_base_on_its_stated_subset(evaluated):
    _, metrics, out = evaluated
    assert metrics["n_examples"] == 4 and metrics["n_challenge"] == 4
    assert metrics["n_base"] == {"test": 2, "challenge": 2}
    answers = {role: read_jsonl(out / f"answers_{role}.jsonl") for role in ("base", "student", "teacher")}
    assert [len(answers[r]) for r in ("base", "student", "teacher")] == [4, 8, 8]
    for role, rows in answers.items():
        assert {a["split"] for a in rows} == {"test", "challenge"}, role
    assert metrics["models"]["student"]["n"] == 4 and metrics["challenge"]["student"]["n"] == 4
    assert metrics["models"]["base"]["n"] == 2
    challenge_ids = {a["query_id"] for a in answers["student"] if a["split"] == "challenge"}
    assert all(a["template"].split(".")[-1].startswith("h") for a in answers["student"] if a["split"] == "challenge")
    assert challenge_ids <= {a["query_id"] for a in read_jsonl(out.parent / "dataset" / "challenge.jsonl")}


def test_rates_carry_n_and_wilson_intervals_everywhere(evaluated):
    _, metrics, out = evaluated
    for block in ("models", "challenge"):
        for role, m in metrics[block].items():
            validity = m["rates"]["validity"]
            assert validity["n"] == m["n"] and validity["ci95"][0] <= m["validity"] <= validity["ci95"][1]
    assert metrics["student_validity_ci95"] == metrics["models"]["student"]["rates"]["validity"]["ci95"]
    comparison = (out / "comparison.md").read_text()
    assert "95% Wilson interval" in comparison and "] n=4" in comparison
    assert "## Unseen phrasing: challenge split" in comparison and "## Paired comparisons" in comparison


def test_paired_comparisons_use_the_same_queries(evaluated):
    _, metrics, _ = evaluated
    paired = metrics["paired"]
    assert paired["student_vs_base"]["test"]["validity"]["n"] == 2  # the base subset
    assert paired["student_vs_teacher"]["test"]["validity"]["n"] == 4
    t = paired["student_vs_teacher"]["challenge"]["validity"]
    assert t["b_rate"] == 1.0 and 0 <= t["p_value"] <= 1  # the teacher's answers are valid by construction
    assert paired["student_seen_vs_unseen"]["pairs"]["adherence"]["n"] == 4


def test_offline_teacher_latency_and_speed_are_not_applicable(evaluated):
    _, metrics, out = evaluated
    teacher = metrics["models"]["teacher"]
    assert teacher["latency_p50_s"] is None and teacher["tokens_per_s"] is None
    latency_row = next(line for line in (out / "comparison.md").read_text().splitlines()
                       if line.startswith("| Latency p50"))
    assert latency_row.rstrip().endswith("| n/a |")


def test_per_example_tables_in_mlflow_have_one_row_per_query_per_model(evaluated):
    import mlflow

    from fitsense.tracking import setup_mlflow

    ctx, _, out = evaluated
    setup_mlflow(ctx.params)
    run_ids = json.loads((out / "mlflow_runs.json").read_text())
    expected = {"base": 4, "student": 8, "student_guided": 8, "teacher": 8}
    for role, run_id in run_ids.items():
        table = mlflow.load_table(PER_EXAMPLE_TABLE, run_ids=[run_id])
        assert len(table) == expected[role] and set(table["model"]) == {role}
        assert not table.duplicated(["split", "query_id"]).any()
        assert table["query"].str.len().min() > 50 and {"answer", "valid", "adherent", "violations"} <= set(table)
    wide = mlflow.load_table(SIDE_BY_SIDE_TABLE, run_ids=[run_ids["student"]])
    assert len(wide) == 8 and {"base_answer", "student_answer", "teacher_answer"} <= set(wide)
    assert wide["base_answer"].notna().sum() == 4


def test_model_card_has_lineage_intervals_and_failure_modes(evaluated):
    ctx, metrics, _ = evaluated
    info = read_json(ctx.run_dir / "dataset" / "dataset_info.json")
    card = model_card(metrics, info)
    assert info["dataset_run_id"] in card and "95% Wilson interval" in card
    assert "## Known failure modes" in card and "not a schema-valid plan" in card  # the tiny student writes no JSON
    assert "## Unseen phrasing" in card
