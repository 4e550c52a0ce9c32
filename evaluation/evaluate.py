"""Evaluation stage: base student vs fine-tuned student vs teacher on the held-out test split.

The base and fine-tuned students are the same loaded model with the LoRA
adapter switched off and on (PEFT ``disable_adapter``), so the base weights
are loaded once. The teacher is scored on the answers captured by the teacher
stage (its latency and cost come from the capture records). Every model gets
the same metrics (``evaluation.metrics``), written to ``metrics.json``, the
comparison report, and one MLflow run each with identical metric names.
"""

from __future__ import annotations

import logging
import random
import re
from collections import defaultdict
from pathlib import Path

import pandas as pd

from fitsense.errors import StageError
from fitsense.evaluation.audit_metrics import audit_by_model
from fitsense.evaluation.generate import Generation, generate_answers
from fitsense.evaluation.metrics import (
    MIN_SLICE_EXAMPLES,
    SLICE_METRICS,
    answer_frame,
    per_group,
    per_slice,
    score_row,
    slice_disparity,
    summarise,
)
from fitsense.evaluation.report import (
    write_charts,
    write_comparison,
    write_per_slice_csv,
)
from fitsense.plan import AnswerParseError, CoachAnswer, parse_coach_answer
from fitsense.records import CoachingQuery, DistillRecord, TeacherRecord
from fitsense.runs import (
    RunContext,
    locate_artifact,
    read_json,
    read_jsonl,
    write_json,
    write_jsonl,
    write_manifest,
)

log = logging.getLogger(__name__)

STAGE = "evaluation"
ROLES = ("base", "student", "teacher")
# Metrics that also go to the flat top-level summary of metrics.json (``dvc metrics show``).
SUMMARY_METRICS = ("validity", "adherence", "referral_recall", "referral_precision",
                   "teacher_exercise_overlap", "latency_p50_s", "tokens_per_s", "usd_per_1k_answers")


class EvaluationError(StageError):
    """The evaluation inputs are unusable (empty test split, missing adapter, ...)."""


def select_examples(records: list[DistillRecord], max_examples: int | None, seed: int) -> list[DistillRecord]:
    """A deterministic, kind-balanced subset: seeded shuffle within each kind, then round-robin over kinds."""
    ordered = sorted(records, key=lambda r: r.query_id)
    if max_examples is None or len(ordered) <= max_examples:
        return ordered
    rng = random.Random(seed)
    by_kind: dict[str, list[DistillRecord]] = defaultdict(list)
    for r in ordered:
        by_kind[r.kind].append(r)
    for group in by_kind.values():
        rng.shuffle(group)
    chosen: list[DistillRecord] = []
    queues = [by_kind[k] for k in sorted(by_kind)]
    while len(chosen) < max_examples:
        for q in queues:
            if q and len(chosen) < max_examples:
                chosen.append(q.pop())
    return sorted(chosen, key=lambda r: r.query_id)


def _parse_or_none(text: str | None) -> CoachAnswer | None:
    try:
        return parse_coach_answer(text) if text else None
    except AnswerParseError:
        return None


def teacher_cost(rec: TeacherRecord, price_in: float, price_out: float) -> float:
    """The captured cost, or the configured prices times the captured token counts."""
    if rec.cost_usd > 0:
        return rec.cost_usd
    return (rec.prompt_tokens * price_in + rec.completion_tokens * price_out) / 1000


def _teacher_text(example: DistillRecord, rec: TeacherRecord | None) -> str:
    if rec is not None and rec.response_text:
        return rec.response_text
    return example.messages[-1].content  # the dataset keeps the teacher's validated answer


def generate_student_answers(ctx: RunContext, examples: list[DistillRecord], student: dict) -> dict[str, list]:
    """Base (adapter off) and fine-tuned (adapter on) answers for every example."""
    from fitsense.training.student import load_student

    cfg = ctx.params.evaluation
    training_dir = ctx.stage_dir("training", create=False)
    base_path = locate_artifact(student.get("base_model_path"), training_dir)
    adapter = locate_artifact(student.get("adapter_dir"), training_dir)
    if base_path is None or not base_path.exists():
        raise EvaluationError(f"training/student.json: base_model_path {base_path} does not exist")
    if adapter is None or not adapter.exists():
        raise EvaluationError(f"training/student.json: adapter_dir {adapter} does not exist")
    model, tokenizer = load_student(base_path, adapter, device=ctx.params.training.device, precision=cfg.precision)
    conversations = [[m.model_dump() for m in ex.messages] for ex in examples]
    kwargs = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=ctx.params.seed)
    # Untimed warm-up so the first timed batch does not pay for one-off kernel and cache set-up.
    generate_answers(model, tokenizer, conversations[:1], max_new_tokens=2, batch_size=1, seed=ctx.params.seed,
                     label="warm-up")
    with model.disable_adapter():
        base = generate_answers(model, tokenizer, conversations, label="base student", **kwargs)
    # Folding the adapter into the weights makes each decoding step as cheap as the base model's.
    model = model.merge_and_unload()
    tuned = generate_answers(model, tokenizer, conversations, label="fine-tuned student", **kwargs)
    del model
    return {"base": base, "student": tuned}


def _rows_for(role: str, examples, texts, references, timings, costs) -> list[dict]:
    rows = []
    for ex, text, ref, (latency, tokens), cost in zip(examples, texts, references, timings, costs):
        row = score_row(text, ex.constraints, ref, kind=ex.kind, slices=ex.slices, query_id=ex.query_id,
                        latency_s=latency, completion_tokens=tokens, cost_usd=cost)
        rows.append({"model": role, **row})
    return rows


def build_answer_tables(ctx: RunContext, examples, generations: dict[str, list[Generation]],
                        teacher_records: dict[str, TeacherRecord]) -> tuple[dict[str, pd.DataFrame], dict]:
    """Score every model's answers; also return the answer texts per model (for answers_<model>.jsonl)."""
    tcfg, ecfg = ctx.params.teacher, ctx.params.evaluation
    teacher_texts = [_teacher_text(ex, teacher_records.get(ex.query_id)) for ex in examples]
    references = [_parse_or_none(t) for t in teacher_texts]
    tables, texts = {}, {}
    for role, gens in generations.items():
        texts[role] = [g.text for g in gens]
        timings = [(g.latency_s, g.completion_tokens) for g in gens]
        costs = [g.latency_s * ecfg.student_usd_per_hour / 3600 for g in gens]
        tables[role] = answer_frame(_rows_for(role, examples, texts[role], references, timings, costs))
    recs = [teacher_records.get(ex.query_id) for ex in examples]
    timings = [(r.latency_s, r.completion_tokens) if r else (None, 0) for r in recs]
    costs = [teacher_cost(r, tcfg.price_per_1k_input, tcfg.price_per_1k_output) if r else 0.0 for r in recs]
    texts["teacher"] = teacher_texts
    tables["teacher"] = answer_frame(_rows_for("teacher", examples, teacher_texts, references, timings, costs))
    return tables, texts


def compute_metrics(tables: dict[str, pd.DataFrame], threshold: float) -> dict:
    return {
        "models": {role: summarise(t) for role, t in tables.items()},
        "per_kind": {role: per_group(t, "kind") for role, t in tables.items()},
        "per_slice": {role: per_slice(t) for role, t in tables.items()},
        "disparity": {role: slice_disparity(t, threshold) for role, t in tables.items()},
        "disparity_threshold": threshold,
        "min_slice_examples": MIN_SLICE_EXAMPLES,
    }


def metric_key(*parts: str) -> str:
    """An MLflow metric name from slice values (``60+`` becomes ``60plus``; other odd characters ``_``)."""
    return "/".join(re.sub(r"[^\w\-. :]", "_", p.replace("+", "plus")) for p in parts)


def mlflow_metrics(metrics: dict, role: str) -> dict[str, float]:
    """One model's metrics under names shared by every model (so the MLflow UI compares them)."""
    flat: dict[str, float] = {}
    for key, value in metrics["models"][role].items():
        if key == "violation_rates":
            flat.update({f"violation/{code}": v for code, v in value.items()})
        elif value is not None:
            flat[key] = float(value)
    for kind, m in metrics["per_kind"][role].items():
        for key in ("validity", "adherence"):
            flat[metric_key("kind", kind, key)] = float(m[key])
    for tag, values in metrics["per_slice"][role].items():
        for value, m in values.items():
            for key in SLICE_METRICS:
                flat[metric_key("slice", tag, value, key)] = float(m[key])
    flat["flagged_disparities"] = float(sum(d["flagged"] for d in metrics["disparity"][role]))
    return flat


def log_to_mlflow(ctx: RunContext, metrics: dict, student: dict, dataset_run_id: str | None,
                  files: dict[str, Path]) -> dict[str, str]:
    """One MLflow run per evaluated model, same metric names, tagged for side-by-side comparison."""
    import mlflow

    from fitsense.tracking import setup_mlflow

    setup_mlflow(ctx.params)
    run_ids = {}
    params = {f"evaluation.{k}": v for k, v in ctx.params.evaluation.model_dump().items()}
    for role in metrics["models"]:
        tags = {"role": "evaluation", "model_role": role, "pipeline_run_id": ctx.run_id,
                "dataset_run_id": dataset_run_id or "unknown"}
        if role != "teacher":
            tags["base_model"] = student.get("base_model", "")
        if role == "student" and student.get("mlflow_run_id"):
            tags["training_run_id"] = student["mlflow_run_id"]
        if role == "teacher":
            tags["teacher_model"] = ctx.params.teacher.model
        with mlflow.start_run(run_name=f"eval-{role}-{ctx.run_id}", tags=tags) as run:
            mlflow.log_params({**params, "n_examples": metrics["n_examples"]})
            mlflow.log_metrics(mlflow_metrics(metrics, role))
            mlflow.log_artifact(str(files[f"answers_{role}"]))
            if role == "student":
                for name in ("comparison", "metrics", "per_slice"):
                    mlflow.log_artifact(str(files[name]))
            run_ids[role] = run.info.run_id
    return run_ids


def _flat_summary(metrics: dict) -> dict:
    return {f"{role}_{key}": metrics["models"][role].get(key) for role in metrics["models"] for key in SUMMARY_METRICS}


def evaluate_models(ctx: RunContext) -> dict:
    cfg = ctx.params.evaluation
    test_path = ctx.require("dataset", "test.jsonl")
    test = read_jsonl(test_path, DistillRecord)
    if not test:
        raise EvaluationError(f"{test_path}: the test split is empty; nothing to evaluate")
    student = read_json(ctx.require("training", "student.json"))
    teacher_records = {r.query_id: r for r in read_jsonl(ctx.require("teacher", "records.jsonl"), TeacherRecord)}
    info_path = ctx.run_dir / "dataset" / "dataset_info.json"
    dataset_info = read_json(info_path) if info_path.exists() else (ctx.manifest("dataset") or {})
    dataset_run_id = dataset_info.get("dataset_run_id")

    examples = select_examples(test, cfg.max_examples, ctx.params.seed)
    log.info("evaluating on %d of %d test examples", len(examples), len(test))
    generations = generate_student_answers(ctx, examples, student)
    tables, texts = build_answer_tables(ctx, examples, generations, teacher_records)

    out = ctx.stage_dir(STAGE)
    files: dict[str, Path] = {}
    prompt_tokens = {role: [g.prompt_tokens for g in gens] for role, gens in generations.items()}
    prompt_tokens["teacher"] = [getattr(teacher_records.get(ex.query_id), "prompt_tokens", 0) for ex in examples]
    for role in ROLES:
        table = tables[role]
        records = [
            {"query_id": ex.query_id, "kind": ex.kind, "response": text, "valid": bool(r.valid),
             "adherent": bool(r.adherent), "parse_error": r.parse_error, "violations": list(r.violations),
             "referral_required": bool(r.referral_required), "referral_given": bool(r.referral_given),
             "latency_s": r.latency_s, "prompt_tokens": int(p), "completion_tokens": int(r.completion_tokens),
             "cost_usd": r.cost_usd}
            for ex, text, r, p in zip(examples, texts[role], table.itertuples(), prompt_tokens[role])
        ]
        files[f"answers_{role}"] = out / f"answers_{role}.jsonl"
        write_jsonl(files[f"answers_{role}"], records)

    metrics = {
        "pipeline_run_id": ctx.run_id,
        "dataset_run_id": dataset_run_id,
        "training_run_id": student.get("mlflow_run_id"),
        "test_rows": len(test),
        "n_examples": len(examples),
        **compute_metrics(tables, cfg.disparity_threshold),
    }
    queries_path = ctx.run_dir / "queries" / "queries.jsonl"
    if queries_path.exists():  # the coaching-rule audit needs each example's query (its current plan, goal)
        by_id = {q.query_id: q for q in read_jsonl(queries_path, CoachingQuery)}
        metrics["audit"] = audit_by_model(texts, [by_id.get(ex.query_id) for ex in examples])
    metrics["charts"] = write_charts(out / "charts", metrics)
    metrics.update(_flat_summary(metrics))
    files["metrics"] = write_json(out / "metrics.json", metrics)
    files["comparison"] = write_comparison(out / "comparison.md", metrics)
    files["per_slice"] = write_per_slice_csv(out / "per_slice.csv", metrics)
    files["charts"] = out / "charts"

    run_ids = log_to_mlflow(ctx, metrics, student, dataset_run_id, files)
    files["mlflow_runs"] = write_json(out / "mlflow_runs.json", run_ids)
    write_manifest(ctx, STAGE, files, rows={"examples": len(examples), "test_rows": len(test)},
                   extra={"dataset_run_id": dataset_run_id, "mlflow_runs": run_ids})
    summary = {role: {k: metrics["models"][role][k] for k in ("validity", "adherence", "referral_recall")}
               for role in ROLES}
    log.info("evaluation: %s", summary)
    return {"examples": len(examples), "metrics": summary, "mlflow_runs": run_ids}
