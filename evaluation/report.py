"""Evaluation reports: the comparison table, per-slice CSV (DVC plots) and charts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fitsense.evaluation.metrics import SLICE_METRICS
from fitsense.runs import atomic_open, atomic_path

# (metric key, label, format) rows of the comparison table, in reading order.
COMPARISON_ROWS: tuple[tuple[str, str, str], ...] = (
    ("validity", "Schema validity", "pct"),
    ("adherence", "Constraint adherence", "pct"),
    ("referral_recall", "Safety referral recall", "pct"),
    ("referral_precision", "Safety referral precision", "pct"),
    ("teacher_exercise_overlap", "Exercise overlap with teacher (Jaccard)", "pct"),
    ("teacher_structure_match", "Structure match with teacher", "pct"),
    ("latency_p50_s", "Latency p50 (s/answer)", "sec"),
    ("latency_p95_s", "Latency p95 (s/answer)", "sec"),
    ("tokens_per_s", "Tokens/s", "num"),
    ("completion_tokens_mean", "Tokens per answer", "num"),
    ("usd_per_1k_answers", "Cost per 1,000 answers (USD)", "usd"),
    ("regenerated_share", "Answered again, session-bounded (guided)", "pct"),
    ("shared_with_raw_share", "Tokens taken over from the raw answer (guided)", "pct"),
)


# (metric key, label, format) rows of the plan-quality table (evaluation.plan_quality).
PLAN_QUALITY_ROWS: tuple[tuple[str, str, str], ...] = (
    ("pattern_coverage", "Movement-pattern coverage (of 8 main patterns)", "pct"),
    ("teacher_pattern_recall", "Teacher's patterns also trained", "pct"),
    ("weekly_volume_error_median", "Weekly sets per muscle: median error vs teacher", "pct"),
    ("exercises_per_day", "Exercises per day", "num"),
    ("exercises_per_day_error", "Exercises per day: mean abs. error vs teacher", "num"),
    ("teacher_exercise_overlap", "Exercise overlap with teacher (Jaccard)", "pct"),
    ("free_text_sanity", "Free text sane (no markup, no prescriptions, no repeats)", "pct"),
    ("progress_direction", "Progress adaptation: dose moved as the teacher's", "pct"),
)


def plan_quality_markdown(metrics: dict) -> list[str]:
    """The plan-quality table and the safety screen's figures (lines of comparison.md)."""
    models = metrics["models"]
    roles = list(models)
    lines = ["", "## Plan quality (vs the teacher's plan for the same query)", "",
             "| Metric | " + " | ".join(roles) + " |", "|---|" + "---:|" * len(roles)]
    for key, label, kind in PLAN_QUALITY_ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt(models[r].get(key), kind) for r in roles) + " |")
    lines.append("| n: plans / progress changes | " + " | ".join(
        f"{models[r].get('plan_quality_n')} / {models[r].get('progress_direction_n')}" for r in roles) + " |")
    lines += ["", "Plan metrics cover the queries each model answered where the teacher wrote a plan; progress "
              "direction the progress-adaptation ones where the teacher changed a dose (the n row). A missing "
              "answer scores 0 (error 100%)."]
    screen = metrics.get("safety_screen")
    if screen:
        lines += ["", "## Safety screen (whole test split)", "",
                  f"Recall {fmt(screen.get('recall'), 'pct')}, precision {fmt(screen.get('precision'), 'pct')} "
                  f"(n={screen.get('n')}, {screen.get('positives')} referral-required, {screen.get('flagged')} flagged; "
                  f"threshold {screen.get('threshold', 0):.3f}, classifier {'on' if screen.get('classifier') else 'off: rules only'})."]
    return lines


def fmt(value, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "sec":
        return f"{value:.3f}"
    if kind == "usd":
        return f"{value:.4f}"
    return f"{value:.1f}"


def fmt_rate(m: dict, key: str, kind: str = "pct") -> str:
    """A metric; a rate with its 95% Wilson interval and n: ``81.2% [74-87] n=120``."""
    rate = (m.get("rates") or {}).get(key)
    if rate is None:
        return fmt(m.get(key), kind)
    if m.get(key) is None or not rate["ci95"]:
        return f"n/a (n={rate['n']})"
    low, high = rate["ci95"]
    return f"{100 * m[key]:.1f}% [{100 * low:.0f}-{100 * high:.0f}] n={rate['n']}"


def model_table(models: dict) -> list[str]:
    roles = list(models)
    lines = ["| Metric | " + " | ".join(roles) + " |", "|---|" + "---:|" * len(roles)]
    for key, label, kind in COMPARISON_ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt_rate(models[r], key, kind) for r in roles) + " |")
    return lines


def _paired_lines(paired: dict) -> list[str]:
    lines = ["| Comparison | Split | Metric | n | A | B | A - B | only A / only B | p (exact McNemar) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, by_split in paired.items():
        for split, entry in by_split.items():
            for metric, t in entry.items():
                if not t["n"]:
                    continue
                lines.append(f"| {name.replace('_', ' ')} | {split} | {metric} | {t['n']} | {fmt(t['a_rate'], 'pct')} "
                             f"| {fmt(t['b_rate'], 'pct')} | {100 * t['diff']:+.1f} pts | {t['a_only']} / {t['b_only']} "
                             f"| {t['p_value']:.3g} |")
    return lines


def comparison_markdown(metrics: dict) -> str:
    models = metrics["models"]
    roles = list(models)
    n_base = metrics.get("n_base") or {}
    lines = [
        f"# Evaluation: run `{metrics['pipeline_run_id']}`",
        "",
        f"Held-out test split of dataset `{metrics.get('dataset_run_id')}`: {metrics['n_examples']} examples "
        f"(of {metrics['test_rows']}). The teacher column scores the teacher's captured answers; the teacher's "
        "overlap with itself is 1 by construction. Rates show the value, its 95% Wilson interval and n "
        "(referral recall: over the queries that need a referral; precision: over the answers that give one).",
    ]
    if n_base:
        lines.append(f"The base student answers a kind-balanced subset: {n_base.get('test', 0)} test and "
                     f"{n_base.get('challenge', 0)} challenge examples (`evaluation.base_max_examples`).")
    served = metrics.get("served")
    if served:
        lines.append(f"`student_served` is the student served at {served['base_url']} "
                     f"({', '.join(served['models']) or served['model']}), asked through the teacher's client "
                     f"{served['concurrency']} request(s) at a time; its latency is each request's wall time "
                     "at the client, as the teacher's is.")
    if metrics.get("teacher_provider") == "offline":
        lines.append("Teacher latency and tokens/s are n/a: the offline teacher answers in-process, not over a network.")
    lines += ["", *model_table(models)]
    lines += ["", "## Constraint violations (share of answers)", "",
              "| Violation | " + " | ".join(roles) + " |", "|---|" + "---:|" * len(roles)]
    codes = list(next(iter(models.values()))["violation_rates"])
    for code in codes:
        lines.append(f"| {code} | " + " | ".join(fmt(models[r]["violation_rates"][code], "pct") for r in roles) + " |")

    lines += ["", "## Per query kind (validity / adherence)", "",
              "| Kind | " + " | ".join(roles) + " |", "|---|" + "---:|" * len(roles)]
    kinds = sorted({k for r in roles for k in metrics["per_kind"][r]})
    for kind in kinds:
        cells = []
        for r in roles:
            m = metrics["per_kind"][r].get(kind)
            cells.append(f"{fmt(m['validity'], 'pct')} / {fmt(m['adherence'], 'pct')} (n={m['n']})" if m else "-")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")

    if metrics.get("challenge"):
        lines += ["", f"## Unseen phrasing: challenge split ({metrics.get('n_challenge', 0)} examples)", "",
                  "The test queries again, each user message worded with held-out templates that no training, "
                  "validation or test query uses; same structured query, same teacher answer.", "",
                  *model_table(metrics["challenge"])]
    if metrics.get("paired"):
        lines += ["", "## Paired comparisons (same queries)", "", *_paired_lines(metrics["paired"])]

    lines += ["", f"## Slice disparity (gap > {metrics['disparity_threshold']:.2f} and 95% intervals apart "
              f"is flagged; slices with n >= {metrics['min_slice_examples']})", ""]
    flagged = [(r, d) for r in roles for d in metrics["disparity"][r] if d["flagged"]]
    if flagged:
        lines += ["| Model | Tag | Metric | Gap | Best | Worst |", "|---|---|---|---:|---|---|"]
        for r, d in flagged:
            lines.append(f"| {r} | {d['tag']} | {d['metric']} | {d['gap']:.2f} | " + " | ".join(
                f"{p['slice']} ({fmt(p['value'], 'pct')}, n={p.get('n', '?')})" for p in (d["best"], d["worst"])) + " |")
    else:
        lines.append("No slice gap above the threshold with separated intervals.")
    ignored = sorted({f"{d['tag']}={s} (n={n})" for r in roles for d in metrics["disparity"][r]
                      for s, n in d["ignored_slices"].items()})
    if ignored:
        lines += ["", f"Slices with fewer than {metrics['min_slice_examples']} examples were not compared: "
                  + ", ".join(ignored) + "."]
    lines += plan_quality_markdown(metrics)
    lines += ["", "Charts: " + ", ".join(f"`charts/{c}`" for c in metrics.get("charts", [])), ""]
    return "\n".join(lines)


def write_comparison(path: Path, metrics: dict) -> Path:
    with atomic_open(path) as fh:
        fh.write(comparison_markdown(metrics))
    return path


def per_slice_table(metrics: dict) -> pd.DataFrame:
    rows = []
    for role, tags in metrics["per_slice"].items():
        for tag, values in tags.items():
            for value, m in values.items():
                rows.append({"model": role, "tag": tag, "slice": value, "label": f"{tag}={value}", "n": m["n"],
                             **{k: m.get(k) for k in (*SLICE_METRICS, "referral_recall", "latency_p50_s")}})
    return pd.DataFrame(rows)


def write_per_slice_csv(path: Path, metrics: dict) -> Path:
    table = per_slice_table(metrics)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def write_charts(charts_dir: Path, metrics: dict) -> list[str]:
    """Bar charts: overall quality by model, latency/cost by model, per-slice adherence by model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts_dir.mkdir(parents=True, exist_ok=True)
    models = metrics["models"]
    written = []

    def save(fig, name):
        for ax in fig.axes:
            if ax.get_legend() is not None:
                ax.legend(title="model", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        with atomic_path(charts_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(name)

    quality = pd.DataFrame(
        {r: {k: (m.get(k) or 0.0) for k in ("validity", "adherence", "referral_recall", "teacher_exercise_overlap")}
         for r, m in models.items()}
    )
    ax = quality.plot.bar(figsize=(8, 4), ylim=(0, 1.05), rot=0, title="Answer quality by model")
    ax.set_ylabel("share of answers")
    save(ax.figure, "quality.png")

    speed = pd.DataFrame({r: {"latency p50 (s)": m["latency_p50_s"], "latency p95 (s)": m["latency_p95_s"]}
                          for r, m in models.items()})
    ax = speed.plot.bar(figsize=(6, 4), rot=0, title="Latency per answer")
    save(ax.figure, "latency.png")

    table = per_slice_table(metrics)
    if not table.empty:
        pivot = table.pivot_table(index="label", columns="model", values="adherence", aggfunc="first")
        ax = pivot.plot.barh(figsize=(8, max(4, 0.25 * len(pivot))), xlim=(0, 1.05),
                             title="Constraint adherence per slice")
        ax.set_xlabel("share of answers")
        save(ax.figure, "per_slice_adherence.png")
    return written
