"""The readable data-quality page (``report.md``) with matplotlib charts under ``charts/``."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fitsense.records import SLICE_TAGS  # noqa: E402
from fitsense.runs import atomic_open, atomic_path  # noqa: E402


def _save(fig, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"charts/{path.name}"


def make_charts(charts: Path, splits: pd.DataFrame, teacher: pd.DataFrame, anomalies: dict, drift: dict,
                bias: dict) -> dict[str, str]:
    charts.mkdir(parents=True, exist_ok=True)
    out = {}

    fig, ax = plt.subplots(figsize=(6, 3.2))
    pd.crosstab(splits["split"], splits["kind"], normalize="index").reindex(["train", "val", "test"]).plot(
        kind="bar", stacked=True, ax=ax, rot=0)
    ax.set_ylabel("share of split"), ax.set_title("Query kinds per split")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    out["kinds"] = _save(fig, charts / "kinds_per_split.png")

    fig, axes = plt.subplots(2, 4, figsize=(14, 6))
    for ax, tag in zip(axes.flat, SLICE_TAGS):
        shares = pd.DataFrame({v: {s: e["representation"][s]["share"] for s in ("train", "val", "test")}
                               for v, e in bias["slices"][tag].items()}).T
        shares.plot(kind="bar", ax=ax, rot=45, legend=tag == SLICE_TAGS[0], fontsize=7)
        ax.axhline(bias["min_slice_share"], color="red", lw=0.8, ls="--")
        ax.set_title(tag, fontsize=9)
    fig.suptitle("Slice representation per split (red: min_slice_share)")
    fig.tight_layout()
    out["slices"] = _save(fig, charts / "slice_representation.png")

    rows = [(f"{tag}={v}", e["teacher_quality"]["validity"], e["teacher_quality"]["adherence"])
            for tag in SLICE_TAGS for v, e in bias["slices"][tag].items() if e["teacher_records"]]
    fig, ax = plt.subplots(figsize=(6, max(3, 0.18 * len(rows))))
    frame = pd.DataFrame(rows, columns=["slice", "validity", "adherence"]).set_index("slice")
    frame.plot(kind="barh", ax=ax, fontsize=6)
    ax.set_xlim(0, 1.05), ax.set_title("Teacher validity and adherence per slice")
    out["teacher_quality"] = _save(fig, charts / "teacher_quality_per_slice.png")

    flagged = {r["query_id"] for r in anomalies["flagged"]}
    lat = pd.to_numeric(teacher["latency_s"], errors="coerce")
    tok = pd.to_numeric(teacher["completion_tokens"], errors="coerce")
    mask = teacher["query_id"].isin(flagged)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter(tok[~mask], lat[~mask], s=8, alpha=0.6, label="normal")
    ax.scatter(tok[mask], lat[mask], s=18, color="red", label="flagged")
    ax.set_xlabel("completion tokens"), ax.set_ylabel("latency (s)"), ax.legend(fontsize=7)
    ax.set_title("Teacher records: anomalies")
    out["anomalies"] = _save(fig, charts / "anomalies.png")

    if drift.get("columns"):
        top = drift["columns"][:15]
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(top) + 1))
        ax.barh([f"{c['artifact']}.{c['column']}" for c in top][::-1], [c["psi"] for c in top][::-1],
                color=["red" if c["drifted"] else "grey" for c in top][::-1])
        ax.axvline(drift["threshold"], color="red", ls="--", lw=0.8)
        ax.set_xlabel("PSI"), ax.set_title("Largest drift vs reference")
        ax.tick_params(labelsize=7)
        out["drift"] = _save(fig, charts / "drift_psi.png")
    return out


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


def _audit_section(audit: dict) -> list[str]:
    lines = ["## 6. Coaching-rule audit (teacher answers)", "",
             f"{audit['all_rules_passed']} of {audit['answers']} answers pass every rule; the gate needs each "
             f"rule at >= {audit['threshold']:.0%} of the answers it applies to (`quality.min_audit_pass_rate`).", ""]
    lines += _table(["rule", "what it checks", "applies to", "passed", "pass rate"],
                    [[name, r["summary"], r["applicable"], r["passed"],
                      "n/a" if r["rate"] is None else f"{r['rate']:.1%}"] for name, r in audit["rules"].items()])
    failing = [(name, f) for name, r in audit["rules"].items() for f in r["failing"]]
    if failing:
        lines += ["", *[f"- `{f['query_id']}` ({f['kind']}): {f['audit_failure']}" for _, f in failing[:20]]]
    return lines + [""]


def write_report(path: Path, *, run_id: str, dataset_run_id: str | None, gate: dict, validation: dict,
                 stats: dict, anomalies: dict, drift: dict, bias: dict, charts: dict[str, str],
                 metrics: dict, audit: dict | None = None) -> Path:
    docs = validation.get("data_docs")
    lines = [f"# Data quality report: run `{run_id}`", "",
             f"Dataset run ID: `{dataset_run_id}`  ", f"Gate: **{'PASSED' if gate['passed'] else 'FAILED'}** "
             f"({len(gate['failures'])} failures, {len(gate['warnings'])} warnings)", ""]
    if gate["failures"]:
        lines += ["## Gate failures", "", *[f"- {f}" for f in gate["failures"]], ""]
    lines += ["## Key figures", "", *_table(["metric", "value"], [[k, v] for k, v in metrics.items()]), ""]

    lines += ["## 1. Validation (Great Expectations)", ""]
    if docs:
        lines += [f"Data Docs: [{os.path.relpath(docs, path.parent)}]({os.path.relpath(docs, path.parent)})", ""]
    lines += _table(["suite", "rows", "expectations", "failed (critical/warning)", "result"],
                    [[s["suite"], s["rows"], s["evaluated"],
                      f"{sum(f['severity'] == 'critical' for f in s['failed'])}/"
                      f"{sum(f['severity'] == 'warning' for f in s['failed'])}",
                      "ok" if not s["failed"] else "FAILED" if any(f["severity"] == "critical" for f in s["failed"])
                      else "warn"] for s in validation["suites"]])
    batched = [s for s in validation["suites"] if s.get("batches")]
    if batched:
        lines += ["", "Every row of every table is validated. " + ", ".join(
            f"{s['suite']} ({s['rows']:,} rows)" for s in batched) + " were validated a batch at a time "
            f"({', '.join(str(s['batches']) for s in batched)} batches): row checks per batch, unexpected counts "
            "added up, means weighted by rows, and key uniqueness over the whole table at once."]
    failed = [f for s in validation["suites"] for f in s["failed"]]
    if failed:
        lines += ["", *[f"- [{f['severity']}] {f['message']}" for f in failed[:30]]]

    lines += ["", "## 2. Statistics", "", *_table(["artifact", "rows", "columns"],
                                                  [[a, s["rows"], len(s["columns"])] for a, s in stats.items()])]
    lines += ["", f"![kinds per split]({charts['kinds']})", "", "Full per-column summaries: `stats.json`.", ""]

    lines += ["## 3. Anomalies", "",
              f"{anomalies['n_flagged']} of {anomalies['records']} teacher records flagged "
              f"({anomalies['anomaly_rate']:.1%}; IsolationForest contamination {anomalies['contamination']}, "
              f"{anomalies['isolation_forest_outliers']} forest outliers"
              + (f"; the forest is fitted on a seeded sample of {anomalies['fit_rows']:,} records "
                 "(`quality.anomaly_fit_sample`) and scores every record; the rules check every record"
                 if anomalies["fit_rows"] < anomalies["records"] else "") + ").", "",
              *_table(["rule", "records"], [[k, v] for k, v in anomalies["rule_counts"].items()]), ""]
    lines += _table(["query_id", "forest", "reasons"],
                    [[r["query_id"], "yes" if r["isolation_forest"] else "", "; ".join(r["reasons"])]
                     for r in anomalies["flagged"][:20]])
    lines += ["", f"![anomalies]({charts['anomalies']})", ""]

    lines += ["## 4. Drift", ""]
    if drift.get("error"):
        lines += [f"Failed: {drift['error']}"]
    elif drift.get("reference"):
        lines += [f"Reference: `{drift['reference']}`; {drift['drifted']} of {drift['compared_columns']} columns "
                  f"above PSI {drift['threshold']}.", ""]
        lines += _table(["artifact", "column", "type", "PSI", "chi2 p", "drifted"],
                        [[c["artifact"], c["column"], c["type"], c["psi"],
                          "" if c["chi2_pvalue"] is None else f"{c['chi2_pvalue']:.3g}", "yes" if c["drifted"] else ""]
                         for c in drift["columns"][:15]])
        if "drift" in charts:
            lines += ["", f"![drift]({charts['drift']})"]
    else:
        lines += [f"Skipped: {drift.get('skipped')}."]

    lines += ["", "## 5. Bias slicing", "",
              f"Overall teacher quality: {bias['overall_teacher_quality']}.", ""]
    lines += _table(["tag", "value", "flag"], [[f["tag"], f["value"], f["detail"]] for f in bias["flags"][:40]])
    lines += ["", f"![slices]({charts['slices']})", "", f"![teacher quality]({charts['teacher_quality']})", ""]
    if audit is not None:
        lines += _audit_section(audit)
    if gate["warnings"]:
        lines += ["## Warnings", "", *[f"- {w}" for w in gate["warnings"][:60]], ""]
    with atomic_open(path) as fh:
        fh.write("\n".join(lines) + "\n")
    return path
