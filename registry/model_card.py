"""The model card: the description each registered version carries in the MLflow registry."""

from __future__ import annotations

from fitsense.evaluation.report import fmt, model_table


def failure_modes(evaluation: dict, role: str = "student") -> list[str]:
    """What the evaluation shows this model getting wrong, most frequent first."""
    m = evaluation["models"][role]
    out = []
    if m.get("validity") is not None and m["validity"] < 1:
        out.append(f"{fmt(1 - m['validity'], 'pct')} of answers are not a schema-valid plan (unparseable JSON or "
                   "missing fields).")
    for code, rate in sorted(m.get("violation_rates", {}).items(), key=lambda kv: -kv[1]):
        if rate > 0:
            out.append(f"violates `{code}` in {fmt(rate, 'pct')} of answers.")
    recall = m.get("rates", {}).get("referral_recall", {})
    if recall.get("n") and recall["k"] < recall["n"]:
        out.append(f"misses {recall['n'] - recall['k']} of {recall['n']} red-flag referrals.")
    unseen = evaluation.get("paired", {}).get("student_seen_vs_unseen", {}).get("pairs", {}).get("adherence")
    if role == "student" and unseen and unseen["diff"] and unseen["diff"] > 0:
        out.append(f"adherence drops by {100 * unseen['diff']:.1f} points on unseen phrasings "
                   f"(exact McNemar p = {unseen['p_value']:.3g}, n = {unseen['n']}).")
    flagged = [d for d in evaluation.get("disparity", {}).get(role, []) if d.get("flagged")]
    for d in flagged:
        out.append(f"{d['metric']} differs across {d['tag']}: {d['best']['slice']} {fmt(d['best']['value'], 'pct')} "
                   f"vs {d['worst']['slice']} {fmt(d['worst']['value'], 'pct')} (intervals apart).")
    return out or ["none observed on this evaluation."]


def model_card(evaluation: dict, dataset_info: dict) -> str:
    """Markdown: lineage, the evaluation table with 95% intervals, and known failure modes."""
    lines = [
        "FitSense coaching student (LoRA adapter on the base model).",
        "",
        f"- Dataset run ID: `{dataset_info.get('dataset_run_id')}` (digest `{dataset_info.get('digest')}`)",
        f"- Pipeline run: `{evaluation.get('pipeline_run_id')}`; training run: `{evaluation.get('training_run_id')}`",
        f"- Evaluated on {evaluation.get('n_examples')} test examples and {evaluation.get('n_challenge', 0)} "
        "unseen-phrasing challenge examples",
        "",
        "## Evaluation (test split; rates: value [95% Wilson interval] n)",
        "",
        *model_table(evaluation["models"]),
    ]
    if evaluation.get("challenge"):
        lines += ["", "## Unseen phrasing (challenge split)", "", *model_table(evaluation["challenge"])]
    lines += ["", "## Known failure modes", "", *(f"- {f}" for f in failure_modes(evaluation))]
    return "\n".join(lines)
