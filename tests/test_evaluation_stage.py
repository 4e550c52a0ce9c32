"""The evaluation stage end to end on the tiny model: reports, computed metrics, MLflow runs per model."""

from __future__ import annotations

import csv
import json

import pytest
from eval_factories import make_adapter, make_eval_run

from fitsense.evaluation.evaluate import EvaluationError, evaluate_models
from fitsense.plan import AnswerParseError, parse_coach_answer
from fitsense.runs import read_jsonl


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, adapter_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    ctx = make_eval_run(tmp, tiny_model_dir, adapter_dir, **{
        "evaluation.max_examples": 5, "evaluation.max_new_tokens": 12, "evaluation.batch_size": 2})
    result = evaluate_models(ctx)
    return ctx, result


def _valid(text: str) -> bool:
    try:
        parse_coach_answer(text)
        return True
    except AnswerParseError:
        return False


def test_reports_are_written(evaluated):
    ctx, result = evaluated
    out = ctx.run_dir / "evaluation"
    for name in ("metrics.json", "comparison.md", "per_slice.csv", "mlflow_runs.json", "manifest.json",
                 "answers_base.jsonl", "answers_student.jsonl", "answers_teacher.jsonl"):
        assert (out / name).exists(), name
    charts = sorted(p.name for p in (out / "charts").glob("*.png"))
    assert charts and all((out / "charts" / c).stat().st_size > 1000 for c in charts)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base", "student", "teacher"}
    assert metrics["n_examples"] == 5 == result["examples"]
    for key in ("student_validity", "student_adherence", "base_validity", "teacher_adherence"):
        assert key in metrics  # flat summary for `dvc metrics show`
    comparison = (out / "comparison.md").read_text()
    assert "| Schema validity |" in comparison and "| base | student | teacher |" in comparison
    rows = list(csv.DictReader((out / "per_slice.csv").open()))
    assert {r["model"] for r in rows} == {"base", "student", "teacher"}
    assert {"sex", "equipment_tier", "has_condition"} <= {r["tag"] for r in rows}


def test_metrics_are_computed_from_the_answers(evaluated):
    ctx, _ = evaluated
    out = ctx.run_dir / "evaluation"
    metrics = json.loads((out / "metrics.json").read_text())
    for role in ("base", "student", "teacher"):
        answers = read_jsonl(out / f"answers_{role}.jsonl")
        assert len(answers) == 5
        recomputed = sum(_valid(a["response"]) for a in answers) / len(answers)
        assert metrics["models"][role]["validity"] == pytest.approx(recomputed), role
        assert metrics["models"][role]["n"] == 5
        assert metrics["models"][role]["latency_p50_s"] > 0
        assert all(a["prompt_tokens"] > 0 and a["completion_tokens"] > 0 for a in answers), role
    # The dataset keeps only valid, adherent teacher answers; the tiny random student writes no JSON.
    assert metrics["models"]["teacher"]["validity"] == 1.0 and metrics["models"]["teacher"]["adherence"] == 1.0
    assert metrics["models"]["student"]["validity"] == 0.0
    assert metrics["models"]["student"]["usd_per_1k_answers"] > 0
    base = [a["response"] for a in read_jsonl(out / "answers_base.jsonl")]
    tuned = [a["response"] for a in read_jsonl(out / "answers_student.jsonl")]
    assert base != tuned  # the adapter is on for the student and off for the base
    per_kind_n = sum(m["n"] for m in metrics["per_kind"]["student"].values())
    assert per_kind_n == 5
    assert all(sum(v["n"] for v in values.values()) == 5 for values in metrics["per_slice"]["student"].values())


def test_each_model_is_an_mlflow_run_with_the_same_metric_names(evaluated):
    from mlflow import MlflowClient

    from fitsense.tracking import setup_mlflow

    ctx, result = evaluated
    run_ids = json.loads((ctx.run_dir / "evaluation" / "mlflow_runs.json").read_text())
    assert run_ids == result["mlflow_runs"]
    setup_mlflow(ctx.params)
    client = MlflowClient()
    runs = {role: client.get_run(rid) for role, rid in run_ids.items()}
    assert {r.data.tags["model_role"] for r in runs.values()} == {"base", "student", "teacher"}
    for run in runs.values():
        assert run.data.tags["role"] == "evaluation" and run.data.tags["pipeline_run_id"] == ctx.run_id
        assert run.data.tags["dataset_run_id"].startswith("ds-")
        for key in ("validity", "adherence", "teacher_exercise_overlap", "latency_p50_s", "usd_per_1k_answers"):
            assert key in run.data.metrics
        assert any(k.startswith("slice/sex/") for k in run.data.metrics)
    assert runs["teacher"].data.metrics["validity"] == 1.0
    metrics = json.loads((ctx.run_dir / "evaluation" / "metrics.json").read_text())
    assert runs["student"].data.metrics["adherence"] == metrics["models"]["student"]["adherence"]


def test_missing_adapter_is_a_clear_error(tiny_model_dir, tmp_path):
    ctx = make_eval_run(tmp_path, tiny_model_dir, tmp_path / "no-such-adapter")
    with pytest.raises(EvaluationError, match="adapter_dir"):
        evaluate_models(ctx)


def test_missing_training_stage_names_the_stage(tiny_model_dir, tmp_path, adapter_dir):
    ctx = make_eval_run(tmp_path, tiny_model_dir, adapter_dir)
    (ctx.run_dir / "training" / "student.json").unlink()
    with pytest.raises(FileNotFoundError, match="training"):
        evaluate_models(ctx)


def test_every_model_is_audited_with_the_coaching_rules(evaluated):
    from fitsense.audit import RULE_NAMES

    ctx, _ = evaluated
    audit = json.loads((ctx.run_dir / "evaluation" / "metrics.json").read_text())["audit"]
    assert set(audit) == {"base", "student", "teacher"}
    teacher = audit["teacher"]
    assert set(teacher) == set(RULE_NAMES)
    assert teacher["no_repeat_in_day"]["n"] >= 1 and teacher["no_repeat_in_day"]["ci95"] is not None
    assert all(r["n"] == 0 and r["rate"] is None for r in audit["student"].values())  # nothing parses
