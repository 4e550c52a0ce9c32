"""The data quality stage: the gate between the dataset build and training.

Six reports, each also a gate input: Great Expectations validation
(critical expectations fail the gate), statistics, anomalies (warnings),
drift (a gate when ``quality.fail_on_drift``), bias slicing (a gate when
``quality.fail_on_bias``) and the coaching-rule audit of the teacher's answers
(``audit.json``; its GX suite fails the gate when a rule's pass rate is below
``quality.min_audit_pass_rate``). All reports are written before the stage raises
``DataQualityError``, so a failed run can still be inspected.
"""

from __future__ import annotations

import logging
import time

from fitsense.errors import StageError
from fitsense.runs import MANIFEST, RunContext, read_json, write_json, write_manifest

log = logging.getLogger(__name__)

STAGE = "quality"


class DataQualityError(StageError):
    """The data-quality gate failed; the message lists the failed checks and example records."""

    def __init__(self, failures: list[str] | str, gate_path: str | None = None):
        self.failures = [failures] if isinstance(failures, str) else list(failures)
        shown = "\n".join(f"  - {f}" for f in self.failures[:20])
        more = f"\n  ... and {len(self.failures) - 20} more" if len(self.failures) > 20 else ""
        where = f", see {gate_path}" if gate_path else ""
        super().__init__(f"data-quality gate failed ({len(self.failures)} failures{where}):\n{shown}{more}")


def audit_report(frame, threshold: float, examples: int = 5) -> dict:
    """Per-rule pass rates of the teacher answers (rules that do not apply are left out) and a few
    failing answers per rule."""
    from fitsense.audit import RULES

    rules = {}
    for rule in RULES:
        applied = frame[rule.name].dropna().astype(bool)
        failed = frame.loc[applied.index[~applied.to_numpy()], ["query_id", "kind", "audit_failure"]]
        rules[rule.name] = {"summary": rule.summary, "applicable": int(len(applied)), "passed": int(applied.sum()),
                            "rate": round(float(applied.mean()), 4) if len(applied) else None,
                            "failing": failed.head(examples).to_dict(orient="records")}
    return {"threshold": threshold, "answers": int(len(frame)),
            "all_rules_passed": int(frame["audit_passed"].sum()), "rules": rules}


def run_data_quality(ctx: RunContext) -> dict:
    from fitsense.data.quality import anomalies as anomalies_mod
    from fitsense.data.quality import bias as bias_mod
    from fitsense.data.quality import drift as drift_mod
    from fitsense.data.quality import expectations as gxmod
    from fitsense.data.quality.report import make_charts, write_report
    from fitsense.data.quality.stats import artifact_stats
    from fitsense.data.quality.tables import load_tables

    cfg = ctx.params.quality
    out = ctx.stage_dir(STAGE)
    (out / MANIFEST).unlink(missing_ok=True)  # a stale manifest must not vouch for this run's data
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    schema = gxmod.parse_schema()
    try:
        tables = load_tables(ctx, list(schema))
    except ValueError as exc:  # a corrupt JSONL line: the message names the file and line
        gate_path = write_json(out / "gate.json", {"passed": False, "failures": [str(exc)], "warnings": []})
        raise DataQualityError([str(exc)], str(gate_path)) from None
    timings["load"] = time.perf_counter() - t0

    t = time.perf_counter()
    suites = gxmod.synthetic_suites(tables.synthetic, schema, ctx.params.synthetic.anchor_date)
    users = tables.synthetic.get("users")
    query_ids = tables.queries["query_id"].dropna().astype(str).tolist()
    suites.append(gxmod.query_suite(tables.queries, users["user_id"].tolist() if users is not None else None))
    suites.append(gxmod.teacher_suite(tables.teacher, query_ids))
    suites.append(gxmod.audit_suite(tables.audit, cfg.min_audit_pass_rate))
    suites += gxmod.split_suites(tables.splits, ctx.params.dataset.require_valid, cfg.min_train_examples, query_ids)
    validation = gxmod.run_suites(suites, out / "gx", out / "data_docs")
    timings["great_expectations"] = time.perf_counter() - t
    suite_seconds = validation.pop("seconds")
    timings["gx_synthetic_tables"] = sum(v for k, v in suite_seconds.items() if k.startswith("synthetic."))
    timings["gx_record_tables"] = sum(v for k, v in suite_seconds.items() if not k.startswith("synthetic."))
    failures = list(validation["failures"])
    warnings = list(validation["warnings"])
    if not tables.synthetic:
        warnings.append("synthetic tables not found for this run: synthetic suites skipped")

    t = time.perf_counter()
    frames = tables.artifacts()
    stats = artifact_stats(frames)
    anomalies = anomalies_mod.detect_anomalies(tables.teacher, tables.queries, cfg.anomaly_contamination,
                                               ctx.params.seed, ctx.params.teacher.max_retries + 1,
                                               cfg.anomaly_fit_sample)
    warnings += [f"anomaly: teacher record {r['query_id']}: {'; '.join(r['reasons'])}"
                 for r in anomalies["flagged"]]
    try:
        drift = drift_mod.run_drift(cfg.drift_reference, ctx.artifacts_dir, frames, cfg.drift_psi_threshold)
    except drift_mod.DriftReferenceError as exc:
        drift = {"reference": cfg.drift_reference, "error": str(exc), "drifted": 0, "columns": []}
        failures.append(f"drift: {exc}")
    drift_msgs = [f"drift: {c['artifact']}.{c['column']} PSI {c['psi']} > {cfg.drift_psi_threshold}"
                  for c in drift["columns"] if c["drifted"]]
    (failures if cfg.fail_on_drift else warnings).extend(drift_msgs)
    bias = bias_mod.slice_report(tables.splits, tables.teacher, tables.queries, cfg.min_slice_share,
                                 cfg.max_quality_gap)
    (failures if cfg.fail_on_bias else warnings).extend(f"bias: {f['detail']}" for f in bias["flags"])
    timings["stats_anomalies_drift_bias"] = time.perf_counter() - t

    audit = audit_report(tables.audit, cfg.min_audit_pass_rate)

    dataset_info = ctx.run_dir / "dataset" / "dataset_info.json"
    dataset_run_id = read_json(dataset_info).get("dataset_run_id") if dataset_info.exists() else None
    teacher = tables.teacher
    ok = teacher["status"] == "ok"
    gate = {"passed": not failures, "failures": failures, "warnings": warnings}
    metrics = {
        "gate_passed": gate["passed"],
        "n_failures": len(failures),
        "n_warnings": len(warnings),
        "queries": int(len(tables.queries)),
        "teacher_records": int(len(teacher)),
        "teacher_validity_rate": round(float((ok & teacher["schema_valid"].fillna(False).astype(bool)).mean()), 4),
        "teacher_adherence_rate": bias["overall_teacher_quality"]["adherence"],
        **{f"rows_{s}": int((tables.splits["split"] == s).sum()) for s in ("train", "val", "test")},
        "split_answer_validity_rate": round(float(tables.splits["answer_valid"].mean()), 4),
        "expectations_evaluated": sum(s["evaluated"] for s in validation["suites"]),
        "expectations_failed": sum(len(s["failed"]) for s in validation["suites"]),
        "anomaly_rate": anomalies["anomaly_rate"],
        "drifted_columns": drift.get("drifted", 0),
        "max_psi": drift.get("max_psi", 0.0),
        "bias_flags": len(bias["flags"]),
        **{f"audit_{rule}_rate": v["rate"] for rule, v in audit["rules"].items()},
    }

    t = time.perf_counter()
    paths = {
        "validation": write_json(out / "validation.json", validation),
        "stats": write_json(out / "stats.json", {"run_id": ctx.run_id, "dataset_run_id": dataset_run_id,
                                                 "artifacts": stats}),
        "anomalies": write_json(out / "anomalies.json", anomalies),
        "drift": write_json(out / "drift.json", drift),
        "bias": write_json(out / "bias.json", bias),
        "audit": write_json(out / "audit.json", audit),
        "metrics": write_json(out / "metrics.json", metrics),
    }
    charts = make_charts(out / "charts", tables.splits, teacher, anomalies, drift, bias)
    paths["report"] = write_report(out / "report.md", run_id=ctx.run_id, dataset_run_id=dataset_run_id, gate=gate,
                                   validation=validation, stats=stats, anomalies=anomalies, drift=drift, bias=bias,
                                   charts=charts, metrics=metrics, audit=audit)
    paths["charts"] = out / "charts"
    if validation.get("data_docs"):
        paths["data_docs"] = out / "data_docs"
    paths["gate"] = write_json(out / "gate.json", gate)
    timings["reports"] = time.perf_counter() - t
    timings = {k: round(v, 2) for k, v in timings.items()}
    log.info("quality timings %s", timings)
    if not gate["passed"]:
        # no manifest: a failed gate must not look like a completed stage
        raise DataQualityError(failures, str(paths["gate"]))
    write_manifest(ctx, STAGE, paths, rows={k: v["rows"] for k, v in stats.items()},
                   extra={"dataset_run_id": dataset_run_id, "gate_passed": True, "timings_s": timings,
                          "data_docs_index": validation.get("data_docs")})
    return {"passed": True, "warnings": len(warnings), "dataset_run_id": dataset_run_id, "metrics": metrics,
            "timings_s": timings}
