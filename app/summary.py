"""The end-of-run summary printed by ``fitsense run``: results, registered version, where to look."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fitsense.app.pipeline import STAGE_NAMES
from fitsense.evaluation.report import COMPARISON_ROWS, fmt_rate
from fitsense.runs import RunContext

# The comparison table's rows that fit a terminal (the full table is in comparison.md).
SUMMARY_KEYS = ("validity", "adherence", "referral_recall", "referral_precision",
                "teacher_exercise_overlap", "latency_p50_s", "usd_per_1k_answers")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def comparison_table(metrics: dict) -> Table:
    models = metrics.get("models", {})
    table = Table(title=f"Test split: {metrics.get('n_examples', '?')} examples")
    table.add_column("Metric")
    for role in models:
        table.add_column(role, justify="right")
    for key, label, kind in COMPARISON_ROWS:
        if key in SUMMARY_KEYS:
            table.add_row(label, *(fmt_rate(m, key, kind) for m in models.values()))
    return table


def print_run_summary(ctx: RunContext, console: Console | None = None) -> None:
    """Print what the run produced; stages that have not run are reported as such, not as errors."""
    console = console or Console()
    run_dir = ctx.run_dir
    done = [s for s in STAGE_NAMES if ctx.manifest(s)]
    missing = [s for s in STAGE_NAMES if s not in done]
    console.rule(f"FitSense run [bold]{ctx.run_id}[/]")
    console.print(f"Artifacts: {run_dir}")
    console.print(f"Stages complete: {', '.join(done) or 'none'}"
                  + (f"; not run: {', '.join(missing)}" if missing else ""))

    metrics = _read_json(run_dir / "evaluation" / "metrics.json")
    if metrics and metrics.get("models"):
        console.print(comparison_table(metrics))
        flagged = [f"{role}: {d['tag']} {d['metric']} gap {d['gap']:.2f}"
                   for role, items in metrics.get("disparity", {}).items() for d in items if d.get("flagged")]
        if flagged:
            console.print("[yellow]Slice disparities above threshold:[/] " + "; ".join(flagged[:6])
                          + (f" (+{len(flagged) - 6} more)" if len(flagged) > 6 else ""))
    else:
        console.print("Evaluation: not run yet (fitsense evaluate).")

    reg = _read_json(run_dir / "registry" / "registration.json")
    if reg:
        state = "promoted to champion" if reg.get("promoted") else "not promoted (candidate only)"
        console.print(f"Registered: [bold]{reg['model_name']}[/] version {reg['version']} "
                      f"(aliases at registration: {', '.join(reg.get('aliases', [])) or '-'}): {state}")
        failures = (reg.get("gate") or {}).get("failures") or []
        if failures:
            console.print("  promotion gate failed: " + "; ".join(failures))
    else:
        console.print("Registry: no version registered in this run (fitsense register).")

    uri = ctx.params.registry.tracking_uri
    console.print("\n[bold]Where to look[/]")
    console.print(f"  MLflow UI: fitsense ui   (or: mlflow ui --backend-store-uri {uri})")
    quality = run_dir / "quality"
    for label, path in (("Data quality report", quality / "report.md"),
                        ("Great Expectations Data Docs", quality / "data_docs" / "index.html"),
                        ("Quality gate", quality / "gate.json"),
                        ("Evaluation report", run_dir / "evaluation" / "comparison.md"),
                        ("Evaluation charts", run_dir / "evaluation" / "charts")):
        if path.exists():
            console.print(f"  {label}: {path}")
    if reg:
        console.print(f"  Lineage: fitsense registry lineage {reg['version']}")
