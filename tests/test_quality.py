"""Data-quality stage: the gate passes clean data and stops corrupted data, naming the records."""

from __future__ import annotations

import json
import shutil

import pytest
from dq_factories import make_ctx, write_inputs

from fitsense.data.dataset import build_distillation_dataset
from fitsense.data.quality.stage import DataQualityError, run_data_quality
from fitsense.runs import read_jsonl, write_jsonl

REPORTS = ("gate.json", "validation.json", "stats.json", "anomalies.json", "drift.json", "bias.json",
           "metrics.json", "report.md")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One clean run (queries, teacher records, dataset, quality) shared by the module."""
    root = tmp_path_factory.mktemp("quality")
    ctx = make_ctx(root, run_id="base")
    write_inputs(ctx, n_users=60, per_user=3, seed=1)
    build_distillation_dataset(ctx)
    summary = run_data_quality(ctx)
    return root, ctx, summary


def _copy_run(base, run_id: str, **overrides):
    root, ctx, _ = base
    shutil.copytree(ctx.run_dir, root / "artifacts" / run_id,
                    ignore=shutil.ignore_patterns("quality"))
    return make_ctx(root, run_id=run_id, **overrides)


def _edit_jsonl(path, edit):
    rows = read_jsonl(path)
    write_jsonl(path, edit(rows))
    return rows


def test_clean_run_passes_with_all_reports(base):
    _, ctx, summary = base
    out = ctx.stage_dir("quality")
    assert summary["passed"]
    for name in REPORTS:
        assert (out / name).exists(), name
    gate = json.loads((out / "gate.json").read_text())
    assert gate["passed"] and gate["failures"] == []
    assert (out / "data_docs" / "index.html").exists()
    validation = json.loads((out / "validation.json").read_text())
    assert {s["suite"] for s in validation["suites"]} >= {"queries", "teacher", "splits", "train_split"}
    assert all(s["evaluated"] > 0 for s in validation["suites"])
    stats = json.loads((out / "stats.json").read_text())["artifacts"]
    assert stats["teacher"]["columns"]["latency_s"]["kind"] == "numeric"
    assert sum(stats["splits"]["columns"]["kind"]["value_counts"].values()) == stats["splits"]["rows"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gate_passed"] and metrics["rows_train"] > 0 and 0 < metrics["teacher_validity_rate"] <= 1
    manifest = ctx.manifest("quality")
    assert {"gate", "report", "data_docs", "stats"} <= set(manifest["outputs"])
    report = (out / "report.md").read_text()
    for section in ("Validation (Great Expectations)", "Statistics", "Anomalies", "Drift", "Bias slicing"):
        assert section in report
    assert all((out / "charts" / p).exists() for p in ("kinds_per_split.png", "slice_representation.png"))


def test_corrupt_records_fail_the_gate_naming_them(base):
    ctx = _copy_run(base, "corrupt")
    teacher_path = ctx.stage_dir("teacher") / "records.jsonl"
    queries_path = ctx.stage_dir("queries") / "queries.jsonl"
    rows = read_jsonl(teacher_path)
    neg, wrong = rows[3]["query_id"], rows[7]["query_id"]
    rows[3]["latency_s"] = -2.5  # a bad row
    rows[7]["prompt_tokens"] = "many"  # a wrong type
    write_jsonl(teacher_path, rows)
    queries = read_jsonl(queries_path)
    out_of_range = queries[5]["query_id"]
    queries[5]["constraints"]["days_per_week"] = 9
    write_jsonl(queries_path, queries)

    with pytest.raises(DataQualityError) as err:
        run_data_quality(ctx)
    msg = str(err.value)
    assert f"query_id={neg}" in msg and "latency_s" in msg
    assert f"query_id={wrong}" in msg and "prompt_tokens" in msg
    assert f"query_id={out_of_range}" in msg and "days_per_week" in msg and "suite queries" in msg
    out = ctx.stage_dir("quality")
    gate = json.loads((out / "gate.json").read_text())
    assert not gate["passed"] and any("suite teacher" in f for f in gate["failures"])
    assert all((out / name).exists() for name in REPORTS)  # reports are written before the gate raises
    assert ctx.manifest("quality") is None  # a failed gate never looks like a completed stage


def test_leaky_or_invalid_splits_fail_the_gate(base):
    ctx = _copy_run(base, "leaky")
    out = ctx.stage_dir("dataset")
    train = read_jsonl(out / "train.jsonl")
    by_user: dict[int, list] = {}
    for r in train:
        by_user.setdefault(r["user_id"], []).append(r)
    moved = next(rs[0] for rs in by_user.values() if len(rs) > 1)  # its user keeps rows in train
    write_jsonl(out / "train.jsonl", [r for r in train if r["query_id"] != moved["query_id"]])
    _edit_jsonl(out / "test.jsonl", lambda rows: [*rows, moved])
    val = read_jsonl(out / "val.jsonl")
    broken = val[0]["query_id"]
    val[0]["messages"][2]["content"] = val[0]["messages"][2]["content"][:-15]  # truncated JSON answer
    write_jsonl(out / "val.jsonl", val)

    with pytest.raises(DataQualityError) as err:
        run_data_quality(ctx)
    msg = str(err.value)
    assert "user_n_splits" in msg and f"user_id={moved['user_id']}" in msg
    assert "answer_valid" in msg and f"query_id={broken}" in msg


def test_drift_detected_on_shifted_run_not_on_identical(base):
    root, _, _ = base
    same = _copy_run(base, "same", **{"quality.drift_reference": "base", "quality.fail_on_drift": True})
    summary = run_data_quality(same)
    drift = json.loads((same.stage_dir("quality") / "drift.json").read_text())
    assert summary["passed"] and drift["compared_columns"] > 10 and drift["drifted"] == 0 and drift["max_psi"] < 1e-6

    shifted = make_ctx(root, run_id="shifted", **{"quality.drift_reference": "base", "quality.fail_on_drift": True})
    write_inputs(shifted, n_users=60, per_user=3, seed=1, latency_scale=6.0, kind_weights=(0.7, 0.1, 0.1, 0.1))
    build_distillation_dataset(shifted)
    with pytest.raises(DataQualityError, match=r"drift: teacher\.latency_s PSI"):
        run_data_quality(shifted)
    drift = json.loads((shifted.stage_dir("quality") / "drift.json").read_text())
    drifted = {(c["artifact"], c["column"]) for c in drift["columns"] if c["drifted"]}
    assert ("teacher", "latency_s") in drifted and ("queries", "kind") in drifted


def test_missing_drift_reference_is_a_named_failure(base):
    ctx = _copy_run(base, "noref", **{"quality.drift_reference": "no-such-run"})
    with pytest.raises(DataQualityError, match="quality.drift_reference='no-such-run'"):
        run_data_quality(ctx)


def test_starved_slice_is_flagged(base):
    root, ctx, _ = base
    bias = json.loads((ctx.stage_dir("quality") / "bias.json").read_text())
    assert not [f for f in bias["flags"] if f["tag"] == "equipment_tier"]  # control: balanced tiers

    starved = make_ctx(root, run_id="starved", **{"quality.fail_on_bias": True})
    write_inputs(starved, n_users=60, per_user=3, seed=1, starve={"equipment_tier": "bodyweight"})
    build_distillation_dataset(starved)
    with pytest.raises(DataQualityError, match=r"bias: equipment_tier=bodyweight is \d+\.\d% of (all|train)"):
        run_data_quality(starved)
    bias = json.loads((starved.stage_dir("quality") / "bias.json").read_text())
    flag = next(f for f in bias["flags"] if f["tag"] == "equipment_tier" and f["value"] == "bodyweight")
    assert flag["reason"] == "under_represented"


def test_corrupt_split_line_fails_the_gate_naming_file_and_line(base):
    ctx = _copy_run(base, "corrupt-line")
    path = ctx.stage_dir("dataset") / "val.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataQualityError, match=r"val\.jsonl:3: invalid record"):
        run_data_quality(ctx)
    gate = json.loads((ctx.stage_dir("quality") / "gate.json").read_text())
    assert not gate["passed"] and "val.jsonl:3" in gate["failures"][0]
