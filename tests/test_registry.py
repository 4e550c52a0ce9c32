"""MLflow registry: registration with lineage tags, the promotion gate both ways, rollback, lineage lookup."""

from __future__ import annotations

import json

import pytest
import yaml
from eval_factories import make_adapter, make_eval_run

from fitsense.catalogue import CATALOGUE
from fitsense.data.prompts import SYSTEM_PROMPT
from fitsense.registry.lineage import lineage
from fitsense.registry.register import (
    RegistryError,
    promote,
    promotion_gate,
    register_student,
    rollback,
)
from fitsense.runs import RunContext, write_json

GOOD = {"validity": 0.8, "adherence": 0.6, "referral_recall": 1.0}


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture
def make_run(tmp_path, tiny_model_dir, adapter_dir):
    """Runs sharing one tracking store; each gets a dataset, student.json and evaluation metrics."""
    store = {}

    def _make(run_id: str, student_metrics: dict, **overrides) -> RunContext:
        if "uri" not in store:
            ctx = make_eval_run(tmp_path, tiny_model_dir, adapter_dir, run_id=run_id, **overrides)
            store["uri"] = ctx.params.registry.tracking_uri
        else:
            ctx = make_eval_run(tmp_path, tiny_model_dir, adapter_dir, run_id=run_id,
                                **{"registry.tracking_uri": store["uri"], **overrides})
        write_json(ctx.stage_dir("evaluation") / "metrics.json",
                   {"models": {"student": {**student_metrics, "teacher_exercise_overlap": 0.3}}})
        return ctx

    return _make


def _aliases(ctx: RunContext) -> dict[str, str]:
    from mlflow import MlflowClient

    model = MlflowClient().get_registered_model(ctx.params.registry.model_name)
    return {alias: str(version) for alias, version in model.aliases.items()}


def test_passing_metrics_register_and_promote_with_lineage_tags(make_run):
    ctx = make_run("good", GOOD)
    result = register_student(ctx)
    assert result["promoted"] and result["version"] == "1"
    assert _aliases(ctx) == {"candidate": "1", "champion": "1"}

    registration = json.loads((ctx.run_dir / "registry" / "registration.json").read_text())
    info = json.loads((ctx.run_dir / "dataset" / "dataset_info.json").read_text())
    tags = registration["tags"]
    assert tags["dataset_run_id"] == info["dataset_run_id"] and tags["dataset_digest"] == info["digest"]
    assert tags["pipeline_run_id"] == "good" and tags["params_hash"] == ctx.params.section_hash()
    assert tags["code_version"] and tags["base_model"] and tags["training_run_id"]
    assert registration["gate"]["passed"] and (ctx.run_dir / "registry" / "manifest.json").exists()

    from mlflow import MlflowClient

    mv = MlflowClient().get_model_version(ctx.params.registry.model_name, "1")
    assert mv.tags["dataset_run_id"] == info["dataset_run_id"] and mv.tags["metric.validity"] == "0.8"
    # the model card: lineage, the evaluation table, known failure modes
    assert info["dataset_run_id"] in mv.description and "| Schema validity | 80.0% |" in mv.description
    assert "## Known failure modes" in mv.description and "20.0% of answers are not a schema-valid plan" in mv.description


def test_failing_metrics_leave_only_the_candidate_alias(make_run):
    ctx = make_run("bad", {"validity": 0.05, "adherence": 0.0, "referral_recall": 1.0})
    result = register_student(ctx)
    assert not result["promoted"]
    assert _aliases(ctx) == {"candidate": "1"}
    gate = json.loads((ctx.run_dir / "registry" / "registration.json").read_text())["gate"]
    assert not gate["passed"]
    assert any(f.startswith("validity >=") for f in gate["failures"])
    assert any(f.startswith("adherence >=") for f in gate["failures"])


def test_worse_than_champion_is_not_promoted_until_forced_then_rollback(make_run):
    first = make_run("v1", GOOD)
    register_student(first)
    worse = make_run("v2", {"validity": 0.7, "adherence": 0.6, "referral_recall": 1.0})
    result = register_student(worse)
    assert not result["promoted"]
    assert _aliases(worse) == {"candidate": "2", "champion": "1"}
    gate = json.loads((worse.run_dir / "registry" / "registration.json").read_text())["gate"]
    assert gate["failures"] == ["validity >= champion v1 (0.8)"]

    refused = promote(worse.params, "candidate")
    assert not refused["promoted"] and _aliases(worse)["champion"] == "1"
    forced = promote(worse.params, "2", force=True)
    assert forced["promoted"] and forced["forced"] and forced["previous_champion"] == "1"
    assert _aliases(worse)["champion"] == "2"

    back = rollback(worse.params)
    assert back == {"model_name": worse.params.registry.model_name, "champion": "1", "rolled_back_from": "2",
                    "previous_champion": None}
    assert _aliases(worse)["champion"] == "1"
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(worse.params)


def test_better_version_is_promoted_and_rollback_restores_the_old_champion(make_run):
    register_student(make_run("v1", GOOD))
    better = make_run("v2", {"validity": 0.9, "adherence": 0.7, "referral_recall": 1.0})
    assert register_student(better)["promoted"]
    assert _aliases(better) == {"candidate": "2", "champion": "2"}
    assert rollback(better.params)["champion"] == "1"
    # Promoting again through the gate works: v2 beats v1.
    assert promote(better.params, "2")["promoted"]


def test_promotion_gate_thresholds():
    from fitsense.config import load_params

    params = load_params(None, {"registry.promotion.min_validity": 0.5,
                                         "registry.promotion.min_safety_recall": 0.9})
    assert promotion_gate(params, GOOD)["passed"]
    low_recall = promotion_gate(params, {**GOOD, "referral_recall": 0.5})
    assert low_recall["failures"] == ["referral_recall >= 0.9"]
    # Recall is undefined when the test split has no referral-required query: not a failure.
    assert promotion_gate(params, {**GOOD, "referral_recall": None})["passed"]
    assert not promotion_gate(params, {**GOOD, "validity": None})["passed"]
    equal = promotion_gate(params, GOOD, champion_metrics=GOOD, champion_version="3")
    assert equal["passed"]  # "no worse than" the champion
    no_compare = load_params(None, {"registry.promotion.require_beats_champion": False})
    assert promotion_gate(no_compare, {**GOOD, "validity": 0.5}, champion_metrics=GOOD)["passed"]


def test_lineage_returns_dataset_run_and_reports(make_run):
    ctx = make_run("lin", GOOD)
    write_json(ctx.stage_dir("quality") / "gate.json", {"passed": True, "failures": [], "warnings": []})
    register_student(ctx)
    info = json.loads((ctx.run_dir / "dataset" / "dataset_info.json").read_text())
    for ref in ("1", "champion", "candidate"):
        found = lineage(ctx.params, ref)
        assert found["version"] == "1"
        assert found["dataset_run_id"] == info["dataset_run_id"]
        assert found["dataset_manifest_path"] == str((ctx.run_dir / "dataset" / "manifest.json").resolve())
        assert found["dataset_manifest"]["dataset_run_id"] == info["dataset_run_id"]
        assert found["dataset_manifest_matches"] and found["missing"] == []
        assert found["quality_reports"]["gate.json"].endswith("quality/gate.json")
        assert found["quality_gate"]["passed"] is True
        assert found["metrics"]["validity"] == 0.8
        assert found["training_run"]["run_id"] and not found["training_run"].get("missing")
    with pytest.raises(RegistryError, match="no alias 'nope'"):
        lineage(ctx.params, "nope")


def test_cli_lineage_promote_and_rollback(make_run, tmp_path):
    from typer.testing import CliRunner

    from fitsense.app.cli import app

    ctx = make_run("cli", GOOD)
    register_student(ctx)
    register_student(make_run("cli2", {**GOOD, "validity": 0.5}))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"registry": {"tracking_uri": ctx.params.registry.tracking_uri,
                                                        "artifact_location": ctx.params.registry.artifact_location}}))
    runner = CliRunner()
    shown = runner.invoke(app, ["registry", "lineage", "champion", "--params", str(params_file)])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["pipeline_run_id"] == "cli"
    promoted = runner.invoke(app, ["registry", "promote", "2", "--force", "--params", str(params_file)])
    assert promoted.exit_code == 0 and json.loads(promoted.stdout)["champion"] == "2"
    rolled = runner.invoke(app, ["registry", "rollback", "--params", str(params_file)])
    assert rolled.exit_code == 0 and json.loads(rolled.stdout)["champion"] == "1"


def test_registered_model_loads_and_generates(make_run):
    import mlflow

    ctx = make_run("serve", GOOD, **{"evaluation.max_new_tokens": 8})
    register_student(ctx)
    model = mlflow.pyfunc.load_model(f"models:/{ctx.params.registry.model_name}@champion")
    conversation = [{"role": "system", "content": "Answer in JSON."},
                    {"role": "user", "content": "A 3-day plan, dumbbells only."}]
    answers = model.predict([conversation, "Just a question"], params={"decoding": "raw"})
    # A request without a system message gets the student's own (student.json's; here the pipeline's default).
    assert model.model_config["system_prompt"] == SYSTEM_PROMPT
    asked = model.unwrap_python_model()._requests(["Just a question"])[0].messages
    assert asked == [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "Just a question"}]
    assert len(answers) == 2 and all(isinstance(a["text"], str) and a["error"] is None for a in answers)
    assert model.metadata.get_params_schema().to_dict() == [
        {"name": "max_new_tokens", "type": "long", "default": 8, "shape": None},
        {"name": "decoding", "type": "string", "default": "guided", "shape": None}]
    constraints = {"days_per_week": 3, "session_minutes": 45, "max_exercises_per_day": 4,
                   "available_equipment": ["bodyweight", "dumbbells"], "rir_floor": 2}
    nothing_safe = {**constraints, "available_equipment": ["bodyweight"],
                    "avoid_exercises": [e.name for e in CATALOGUE]}
    guided = model.predict([{"messages": conversation, "constraints": constraints},
                            {"messages": conversation, "constraints": nothing_safe}], params={"max_new_tokens": 6})
    assert guided[0]["error"] is None and guided[0]["text"].startswith('{"')
    assert guided[1]["text"] is None and "no safe exercise" in guided[1]["error"]
    with pytest.raises(Exception, match="unknown field 'gym'"):
        model.predict([{"messages": conversation, "constraints": {**constraints, "gym": True}}])


def test_rerunning_the_stage_reuses_the_version(make_run):
    ctx = make_run("again", GOOD)
    first = register_student(ctx)
    write_json(ctx.stage_dir("evaluation") / "metrics.json",
               {"models": {"student": {**GOOD, "validity": 0.85, "teacher_exercise_overlap": 0.3}}})
    second = register_student(ctx)
    assert second["version"] == first["version"] == "1" and second["promoted"]
    from mlflow import MlflowClient

    name = ctx.params.registry.model_name
    assert len(MlflowClient().search_model_versions(f"name = '{name}'")) == 1
    assert MlflowClient().get_model_version(name, "1").tags["metric.validity"] == "0.85"
