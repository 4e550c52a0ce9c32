"""What a user sees when something is wrong: one line naming the file, key or record, and an exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fitsense.app.cli import app
from fitsense.app.pipeline import run_pipeline
from fitsense.config import load_params
from fitsense.runs import RunContext


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> tuple[Path, Path]:
    """A params file and a run whose data stages have run up to the teacher."""
    root = tmp_path_factory.mktemp("cli")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"synthetic": {"n_users": 40}, "queries": {"n_queries": 50},
                                      "run": {"artifacts_dir": str(root / "artifacts")},
                                      "teacher": {"cache_dir": str(root / "cache")}}))
    ctx = RunContext.create(load_params(params), "cli")
    run_pipeline(ctx, stop="teacher")
    return params, ctx.stage_dir("teacher") / "records.jsonl"


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_a_missing_params_file_is_named_and_exits_2(tmp_path):
    for command in (["config"], ["run"]):
        result = _invoke(*command, "--params", str(tmp_path / "missing.yaml"))
        assert result.exit_code == 2
        assert result.output.strip() == f"error: {tmp_path / 'missing.yaml'}: params file not found"


def test_a_non_http_teacher_url_is_rejected():
    result = _invoke("config", "--set", "teacher.base_url=not-a-url")
    assert result.exit_code == 2
    assert "teacher.base_url" in result.output and "http(s) URL" in result.output


def test_a_truncated_teacher_file_is_one_line_naming_file_and_line(teacher_run):
    params, records = teacher_run
    good = records.read_bytes()
    lines = good.splitlines(keepends=True)
    try:
        records.write_bytes(b"".join(lines[:10]) + lines[10][: len(lines[10]) // 2])  # killed mid-write
        result = _invoke("stage", "dataset", "--params", str(params), "--run-id", "cli")
        assert result.exit_code == 2
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert errors == [errors[0]] and errors[0].startswith(f"error: {records}:11: invalid record: not valid JSON")
        assert "Traceback" not in result.output
    finally:
        records.write_bytes(good)


def test_a_record_that_breaks_the_schema_names_the_field(teacher_run):
    params, records = teacher_run
    good = records.read_text()
    lines = good.splitlines(keepends=True)
    try:
        records.write_text("".join(lines[:2]) + lines[2].replace('"attempts":', '"attempts":"many","x":'))
        result = _invoke("stage", "dataset", "--params", str(params), "--run-id", "cli")
        assert result.exit_code == 2
        assert f"{records}:3: invalid record: attempts:" in result.output
    finally:
        records.write_text(good)


def test_a_missing_upstream_stage_says_which_to_run(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"run": {"artifacts_dir": str(tmp_path / "artifacts")}}))
    result = _invoke("stage", "dataset", "--params", str(params), "--run-id", "empty")
    assert result.exit_code == 2
    assert "run the 'queries' stage for run 'empty' first" in result.output
