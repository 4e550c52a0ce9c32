"""Typed params: bad config fails with the dotted key; the shipped params.yaml is complete and valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from fitsense.app.cli import app
from fitsense.config import ConfigError, Params, load_params

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "params.yaml"


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "data, key, words",
    [
        ({"training": {"lora": {"rank": 8}}}, "training.lora.rank", "unknown key"),
        ({"training": {"lora": {"r": "sixteen"}}}, "training.lora.r", "integer"),
        ({"training": {"lora": {"r": 0}}}, "training.lora.r", "greater than or equal"),
        ({"teacher": {"temperature": 3.5}}, "teacher.temperature", "less than or equal"),
        ({"synthetic": {"anchor_date": "not-a-date"}}, "synthetic.anchor_date", "date"),
        ({"dataset": {"splits": {"train": 0.5, "val": 0.1, "test": 0.1}}}, "dataset.splits", "sum to 1"),
        ({"queries": {"kind_mix": {"plan_creation": 1, "chit_chat": 1}}}, "queries", "unknown kinds"),
        ({"run": {"run_id": "has spaces"}}, "run.run_id", "pattern"),
        ({"bogus_section": {}}, "bogus_section", "unknown key"),
    ],
)
def test_bad_config_names_the_key(tmp_path, data, key, words):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert f"{path}: {key}" in message
    assert words in message


@pytest.mark.parametrize(
    "override, words",
    [
        (["training.lora.r"], "must look like key.sub=value"),
        (["seed.value=3"], "seed is not a section"),
        (["training.lora.r=[1,"], "not valid YAML"),
        (["training.lora.r=-4"], "training.lora.r"),
        (["queries.red_flag_share=1.5"], "queries.red_flag_share"),
        (["teacher.base_url=not-a-url"], "teacher.base_url: Value error, must be an http"),
        (["teacher.base_url=ftp://host/v1"], "teacher.base_url: Value error, must be an http"),
    ],
)
def test_bad_override_names_the_key(override, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.").replace("[", r"\[")):
        load_params(PARAMS, override)


def test_overrides_are_typed_and_applied():
    p = load_params(PARAMS, ["training.lora.r=8", "teacher.budget.max_usd=2.5", "training.lora.target_modules=[q_proj]"])
    assert p.training.lora.r == 8 and p.teacher.budget.max_usd == 2.5
    assert p.training.lora.target_modules == ["q_proj"]


def test_no_file_means_defaults():
    assert load_params(None) == Params()


def test_a_missing_params_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: params file not found"):
        load_params(tmp_path / "missing.yaml")


def test_params_yaml_and_the_typed_defaults_agree():
    # params.yaml spells every default out for readers; the typed models hold the same values.
    assert load_params(PARAMS) == Params()


def test_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(path)


def _missing_fields(model: type[BaseModel], raw: dict, prefix: str = "") -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if name not in raw:
            missing.append(key)
            continue
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            missing += _missing_fields(sub, raw[name] or {}, key + ".")
    return missing


def test_shipped_params_validate_and_list_every_field():
    params = load_params(PARAMS)
    raw = yaml.safe_load(PARAMS.read_text())
    assert _missing_fields(Params, raw) == []  # every typed field is visible (and commented) in params.yaml
    assert params.seed == raw["seed"]


def test_cli_config_exits_2_naming_the_key(tmp_path):
    runner = CliRunner()
    bad = _write(tmp_path, {"training": {"lora": {"r": 0}}})
    result = runner.invoke(app, ["config", "--params", str(bad)])
    assert result.exit_code == 2
    assert "training.lora.r" in result.stderr

    result = runner.invoke(app, ["config", "--params", str(PARAMS), "--set", "evaluation.batch_size=0"])
    assert result.exit_code == 2
    assert "evaluation.batch_size" in result.stderr

    result = runner.invoke(app, ["config", "--params", str(PARAMS), "--set", "training.lora.r=4"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["training"]["lora"]["r"] == 4
