"""Evaluation stage: base student vs fine-tuned student vs teacher on the held-out test split.

It scores the whole test split and the unseen-phrasing challenge split (the
test queries worded with held-out templates; ``challenge.jsonl``) by default;
the base student answers a stated kind-balanced subset of each
(``evaluation.base_max_examples``). Every rate carries its n and a 95% Wilson
interval; student vs base and student vs teacher (and the student on seen vs
unseen wording) are exact McNemar tests on the same queries. Each model's run
in MLflow holds a per-example table (``per_example.json``: query, answer,
scores, violations) and the student's run a side-by-side table of all models'
answers (``side_by_side.json``).

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
from fitsense.evaluation.endpoint import SERVED_ROLE, served_answers
from fitsense.evaluation.generate import Generation, generate_answers
from fitsense.evaluation.inference import CoachInference, CoachRequest
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
from fitsense.evaluation.plan_quality import plan_quality_row, summarise_plan_quality
from fitsense.evaluation.report import (
    write_charts,
    write_comparison,
    write_per_slice_csv,
)
from fitsense.evaluation.stats import mcnemar_exact
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
GUIDED_ROLE = "student_guided"  # the fine-tuned student with the safety screen and constraint-guided decoding
DECODING = {"base": "raw", "student": "raw", GUIDED_ROLE: "guided"}
# Metrics that also go to the flat top-level summary of metrics.json (``dvc metrics show``).
SUMMARY_METRICS = ("validity", "adherence", "referral_recall", "referral_precision",
                   "teacher_exercise_overlap", "latency_p50_s", "tokens_per_s", "usd_per_1k_answers",
                   "pattern_coverage", "weekly_volume_error_median")


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


def student_requests(examples: list[DistillRecord]) -> list[CoachRequest]:
    """The examples as inference requests. The referral label is withheld: the safety screen has to find it."""
    return [CoachRequest([m.model_dump() for m in ex.messages],
                         ex.constraints.model_copy(update={"referral_required": False})) for ex in examples]


def generate_student_answers(ctx: RunContext, examples: list[DistillRecord], student: dict,
                             base_examples: list[DistillRecord] | None = None) -> dict[str, list]:
    """Fine-tuned (adapter on) and, with ``evaluation.guided``, guided answers for every example; base (adapter
    off) ones for ``base_examples`` (default: all)."""
    from fitsense.training.screen import load_screen
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
    kwargs = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=ctx.params.seed,
                  release_below=cfg.release_below)
    # Untimed warm-up so the first timed batch does not pay for one-off kernel and cache set-up.
    generate_answers(model, tokenizer, [[m.model_dump() for m in examples[0].messages]], max_new_tokens=2,
                     batch_size=1, seed=ctx.params.seed, label="warm-up")
    requests = student_requests(examples)
    engine = CoachInference(model, tokenizer, load_screen(_screen_dir(student, training_dir)))
    with model.disable_adapter():
        base = engine.answer(requests if base_examples is None else student_requests(base_examples),
                             decoding="raw", label="base student", **kwargs)
    # Folding the adapter into the weights makes each decoding step as cheap as the base model's.
    engine.model = model = model.merge_and_unload()
    out = {"base": base, "student": engine.answer(requests, decoding="raw", label="fine-tuned student", **kwargs)}
    if cfg.guided:
        for request in requests[:1]:  # compile outside the timed batches (what a server does at start-up)
            engine.grammars.get(request.constraints, False)
        out[GUIDED_ROLE] = engine.answer(requests, decoding="guided", label="guided student",
                                         raw=out["student"] if cfg.guided_from_raw else None, **kwargs)
        log.info("guided decoding: %d grammars compiled in %.1f s", len(engine.grammars.grammars),
                 engine.grammars.compile_s)
    del model, engine
    return out


def test_screen_metrics(ctx: RunContext, student: dict, test: list[DistillRecord]) -> dict:
    """The safety screen's recall and precision on the whole test split (labels: the teacher's referrals)."""
    from fitsense.training.screen import load_screen, screen_metrics

    screen = load_screen(_screen_dir(student, ctx.stage_dir("training", create=False)))
    return {**screen_metrics(screen, test), "threshold": screen.threshold, "classifier": screen.classifier is not None}


def _screen_dir(student: dict, training_dir: Path) -> Path | None:
    return locate_artifact(student.get("screen_dir"), training_dir) if student.get("screen_dir") else None


def expected_length(example: DistillRecord) -> tuple[int, str]:
    """The teacher answer's length (a proxy for the student's), then the query id."""
    return len(example.messages[-1].content), example.query_id


def split_of(example: DistillRecord) -> str:
    """``challenge`` for an example worded with a held-out template, else ``test``."""
    return "challenge" if example.phrasing is not None and example.phrasing.held_out else "test"


def _rows_for(role: str, examples, texts, references, timings, costs, current_plans=None) -> list[dict]:
    rows = []
    current_plans = current_plans or {}
    for ex, text, ref, (latency, tokens), cost in zip(examples, texts, references, timings, costs):
        row = score_row(text, ex.constraints, ref, kind=ex.kind, slices=ex.slices, query_id=ex.query_id,
                        latency_s=latency, completion_tokens=tokens, cost_usd=cost)
        row.update(plan_quality_row(_parse_or_none(text), ref, current_plans.get(ex.query_id), ex.kind))
        rows.append({"model": role, "split": split_of(ex), **row})
    return rows


def queries_by_id(ctx: RunContext) -> dict[str, CoachingQuery]:
    """The run's queries by id ({} without the queries stage): plan quality and the audit read their context."""
    path = ctx.run_dir / "queries" / "queries.jsonl"
    return {q.query_id: q for q in read_jsonl(path, CoachingQuery)} if path.exists() else {}


def current_plans(queries: dict[str, CoachingQuery]) -> dict[str, CoachAnswer]:
    """The current plan each query was asked about (plan-quality's progress direction compares with it)."""
    return {qid: CoachAnswer.model_validate(q.context.current_plan)
            for qid, q in queries.items() if q.context.current_plan}


def build_answer_tables(ctx: RunContext, examples, generations: dict[str, list[Generation]],
                        teacher_records: dict[str, TeacherRecord],
                        role_examples: dict[str, list[DistillRecord]] | None = None,
                        queries: dict[str, CoachingQuery] | None = None,
                        ) -> tuple[dict[str, pd.DataFrame], dict]:
    """Score every model's answers; also return the answer texts per model (for answers_<model>.jsonl).

    ``role_examples`` names the examples a model answered when it is not all of ``examples`` (the base subset);
    ``queries`` are the run's queries by id (read from the queries stage when not given).
    """
    tcfg, ecfg = ctx.params.teacher, ctx.params.evaluation
    plans = current_plans(queries_by_id(ctx) if queries is None else queries)
    teacher_texts = [_teacher_text(ex, teacher_records.get(ex.query_id)) for ex in examples]
    references = [_parse_or_none(t) for t in teacher_texts]
    reference_of = {(split_of(ex), ex.query_id): ref for ex, ref in zip(examples, references)}
    tables, texts = {}, {}
    for role, gens in generations.items():
        answered = (role_examples or {}).get(role, examples)
        texts[role] = [g.text for g in gens]
        timings = [(g.latency_s, g.completion_tokens) for g in gens]
        costs = [g.latency_s * ecfg.student_usd_per_hour / 3600 for g in gens]
        refs = [reference_of[(split_of(ex), ex.query_id)] for ex in answered]
        tables[role] = answer_frame(_rows_for(role, answered, texts[role], refs, timings, costs, plans))
        if role == GUIDED_ROLE:
            tables[role]["regenerated"] = [g.regenerated for g in gens]
            if ecfg.guided_from_raw:  # else the row reads n/a, not a 0% that suggests the reuse ran
                tables[role]["shared_tokens"] = [g.shared_tokens for g in gens]
    recs = [teacher_records.get(ex.query_id) for ex in examples]
    timings = [(r.latency_s, r.completion_tokens) if r else (None, 0) for r in recs]
    costs = [teacher_cost(r, tcfg.price_per_1k_input, tcfg.price_per_1k_output) if r else 0.0 for r in recs]
    texts["teacher"] = teacher_texts
    tables["teacher"] = answer_frame(_rows_for("teacher", examples, teacher_texts, references, timings, costs, plans))
    return tables, texts


def _test_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["split"] == "test"] if "split" in table else table


# Paired comparisons: (name, model a, model b); each is run on the queries both answered, per split.
PAIRS = (("student_vs_base", "student", "base"), ("student_vs_teacher", "student", "teacher"),
         ("guided_vs_raw", GUIDED_ROLE, "student"), ("guided_vs_teacher", GUIDED_ROLE, "teacher"))
PAIRED_METRICS = {"validity": "valid", "adherence": "adherent", "referral_recall": "referral_given"}


def paired_comparisons(tables: dict[str, pd.DataFrame]) -> dict:
    """Exact McNemar tests of the student against base and teacher, and of the student on seen vs unseen wording."""
    out: dict = {}
    for name, a, b in PAIRS:
        if a not in tables or b not in tables:
            continue
        joined = tables[a].merge(tables[b], on=["split", "query_id"], suffixes=("_a", "_b"))
        out[name] = {}
        for split, rows in joined.groupby("split", sort=True):
            entry = {}
            for metric, column in PAIRED_METRICS.items():
                subset = rows[rows["referral_required_a"]] if metric == "referral_recall" else rows
                entry[metric] = mcnemar_exact(subset[f"{column}_a"], subset[f"{column}_b"])
            out[name][str(split)] = entry
    student = tables.get("student")
    if student is not None and "split" in student and (student["split"] == "challenge").any():
        seen, unseen = (student[student["split"] == s].set_index("query_id") for s in ("test", "challenge"))
        both = seen.index.intersection(unseen.index)
        out["student_seen_vs_unseen"] = {"pairs": {
            metric: mcnemar_exact(seen.loc[both, column], unseen.loc[both, column])
            for metric, column in PAIRED_METRICS.items() if metric != "referral_recall"}}
    return out


def compute_metrics(tables: dict[str, pd.DataFrame], threshold: float) -> dict:
    """Headline figures on the test split; the challenge split's figures and the paired tests beside them."""
    test = {role: _test_rows(t) for role, t in tables.items()}
    challenge = {role: t[t["split"] == "challenge"] for role, t in tables.items() if "split" in t}
    return {
        "models": {role: {**summarise(t), **summarise_plan_quality(t)} for role, t in test.items()},
        "challenge": {role: {**summarise(t), **summarise_plan_quality(t)} for role, t in challenge.items() if len(t)},
        "paired": paired_comparisons(tables),
        "per_kind": {role: per_group(t, "kind") for role, t in test.items()},
        "per_slice": {role: per_slice(t) for role, t in test.items()},
        "disparity": {role: slice_disparity(t, threshold) for role, t in test.items()},
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
        elif key == "rates":
            flat.update(_interval_metrics(value))
        elif value is not None:
            flat[key] = float(value)
    challenge = metrics.get("challenge", {}).get(role)
    if challenge:
        flat.update({f"challenge/{k}": float(challenge[k]) for k in ("validity", "adherence", "referral_recall")
                     if challenge.get(k) is not None})
        flat.update({f"challenge/{k}": v for k, v in _interval_metrics(challenge["rates"]).items()})
    for name, by_split in metrics.get("paired", {}).items():
        if not name.startswith(f"{role}_"):
            continue
        for split, entry in by_split.items():
            for metric, test in entry.items():
                flat[metric_key("paired", name, split, metric, "diff")] = float(test["diff"] or 0.0)
                flat[metric_key("paired", name, split, metric, "p_value")] = test["p_value"]
    for kind, m in metrics["per_kind"][role].items():
        for key in ("validity", "adherence"):
            flat[metric_key("kind", kind, key)] = float(m[key])
    for tag, values in metrics["per_slice"][role].items():
        for value, m in values.items():
            for key in SLICE_METRICS:
                flat[metric_key("slice", tag, value, key)] = float(m[key])
    flat["flagged_disparities"] = float(sum(d["flagged"] for d in metrics["disparity"][role]))
    return flat


def _interval_metrics(rates: dict) -> dict[str, float]:
    flat = {}
    for metric, r in rates.items():
        flat[f"{metric}_n"] = float(r["n"])
        if r["ci95"]:
            flat[f"{metric}_ci95_low"], flat[f"{metric}_ci95_high"] = (float(x) for x in r["ci95"])
    return flat


PER_EXAMPLE_TABLE, SIDE_BY_SIDE_TABLE = "per_example.json", "side_by_side.json"


def per_example_table(role: str, answers: list[dict], queries: dict[tuple[str, str], str]) -> pd.DataFrame:
    """One row per query this model answered: the query, the answer, its scores and violations."""
    return pd.DataFrame([{
        "model": role, "split": a["split"], "query_id": a["query_id"], "kind": a["kind"],
        "query": queries[(a["split"], a["query_id"])], "answer": a["response"], "valid": a["valid"],
        "adherent": a["adherent"], "violations": ", ".join(a["violations"]) or (a["parse_error"] or ""),
        "referral_required": a["referral_required"], "referral_given": a["referral_given"],
        "teacher_exercise_overlap": a["teacher_exercise_overlap"],
    } for a in answers])


def side_by_side_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per query: the query and every model's answer and verdict next to each other (blank where a model
    did not answer it, e.g. outside the base subset)."""
    key = ["split", "query_id"]
    wide = pd.concat([t[key + ["kind", "query", "referral_required"]] for t in tables.values()]).drop_duplicates(key)
    for role, t in tables.items():
        wide = wide.merge(t[key + ["answer", "adherent", "violations"]].rename(
            columns={c: f"{role}_{c}" for c in ("answer", "adherent", "violations")}), on=key, how="left")
    return wide.sort_values(key).reset_index(drop=True)


def log_to_mlflow(ctx: RunContext, metrics: dict, student: dict, dataset_run_id: str | None,
                  files: dict[str, Path], example_tables: dict[str, pd.DataFrame] | None = None) -> dict[str, str]:
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
        if role in DECODING:
            tags["decoding"] = DECODING[role]
        if role in ("student", GUIDED_ROLE) and student.get("mlflow_run_id"):
            tags["training_run_id"] = student["mlflow_run_id"]
        if role == "teacher":
            tags["teacher_model"] = ctx.params.teacher.model
        if role == SERVED_ROLE:
            tags.update(endpoint=metrics["served"]["base_url"], served_models=",".join(metrics["served"]["models"]))
        with mlflow.start_run(run_name=f"eval-{role}-{ctx.run_id}", tags=tags) as run:
            mlflow.log_params({**params, "n_examples": metrics["n_examples"]})
            mlflow.log_metrics(mlflow_metrics(metrics, role))
            mlflow.log_artifact(str(files[f"answers_{role}"]))
            if example_tables:
                mlflow.log_table(data=example_tables[role], artifact_file=PER_EXAMPLE_TABLE)
            if role == "student":
                for name in ("comparison", "metrics", "per_slice"):
                    mlflow.log_artifact(str(files[name]))
                if example_tables:
                    mlflow.log_table(data=side_by_side_table(example_tables), artifact_file=SIDE_BY_SIDE_TABLE)
            run_ids[role] = run.info.run_id
    return run_ids


INTERVAL_SUMMARY = ("validity", "adherence", "referral_recall")


def _flat_summary(metrics: dict) -> dict:
    flat = {f"{role}_{key}": metrics["models"][role].get(key) for role in metrics["models"] for key in SUMMARY_METRICS}
    for prefix, block in (("", metrics["models"]), ("challenge_", metrics.get("challenge", {}))):
        for role, m in block.items():
            for key in INTERVAL_SUMMARY:
                r = m["rates"][key]
                if prefix:
                    flat[f"{prefix}{role}_{key}"] = m.get(key)
                flat[f"{prefix}{role}_{key}_n"] = r["n"]
                flat[f"{prefix}{role}_{key}_ci95"] = r["ci95"]
    return flat


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
    challenge_path = ctx.run_dir / "dataset" / "challenge.jsonl"
    challenge = read_jsonl(challenge_path, DistillRecord) if cfg.challenge and challenge_path.exists() else []
    challenge_examples = select_examples(challenge, cfg.max_challenge_examples, ctx.params.seed)
    base_examples = [ex for split in (examples, challenge_examples)
                     for ex in select_examples(split, cfg.base_max_examples, ctx.params.seed)]
    log.info("evaluating on %d of %d test and %d of %d challenge examples (base model: %d)", len(examples),
             len(test), len(challenge_examples), len(challenge), len(base_examples))
    n_test = len(examples)
    # Batches run until their longest answer ends: batching answers of similar expected length (the teacher's)
    # wastes fewer decoding steps on finished rows. Order changes no score.
    examples = sorted(examples, key=expected_length) + sorted(challenge_examples, key=expected_length)
    base_examples = sorted(base_examples, key=lambda ex: (split_of(ex), expected_length(ex)))
    generations = generate_student_answers(ctx, examples, student, base_examples)
    served = None
    if cfg.endpoint is not None:
        served = served_answers(ctx.params, student_requests(examples), [ex.query_id for ex in examples])
        generations[SERVED_ROLE] = served.generations
    query_records = queries_by_id(ctx)
    tables, texts = build_answer_tables(ctx, examples, generations, teacher_records, {"base": base_examples},
                                        query_records)
    answered = {role: base_examples if role == "base" else examples for role in tables}

    out = ctx.stage_dir(STAGE)
    files: dict[str, Path] = {}
    prompt_tokens = {role: [g.prompt_tokens for g in gens] for role, gens in generations.items()}
    prompt_tokens["teacher"] = [getattr(teacher_records.get(ex.query_id), "prompt_tokens", 0) for ex in examples]
    queries = {(split_of(ex), ex.query_id): next(m.content for m in ex.messages if m.role == "user")
               for ex in examples}
    example_tables = {}
    for role in tables:
        table = tables[role]
        records = [
            {"query_id": ex.query_id, "split": split_of(ex), "kind": ex.kind, "response": text,
             "valid": bool(r.valid), "adherent": bool(r.adherent), "parse_error": r.parse_error,
             "violations": list(r.violations), "referral_required": bool(r.referral_required),
             "referral_given": bool(r.referral_given), "teacher_exercise_overlap": float(r.teacher_exercise_overlap),
             "latency_s": None if pd.isna(r.latency_s) else r.latency_s, "prompt_tokens": int(p),
             "completion_tokens": int(r.completion_tokens), "cost_usd": r.cost_usd,
             "template": ex.phrasing.template if ex.phrasing else None}
            for ex, text, r, p in zip(answered[role], texts[role], table.itertuples(), prompt_tokens[role])
        ]
        files[f"answers_{role}"] = out / f"answers_{role}.jsonl"
        write_jsonl(files[f"answers_{role}"], records)
        example_tables[role] = per_example_table(role, records, queries)

    metrics = {
        "pipeline_run_id": ctx.run_id,
        "dataset_run_id": dataset_run_id,
        "training_run_id": student.get("mlflow_run_id"),
        "test_rows": len(test),
        "n_examples": n_test,
        "challenge_rows": len(challenge),
        "n_challenge": len(challenge_examples),
        "n_base": {"test": sum(split_of(e) == "test" for e in base_examples),
                   "challenge": sum(split_of(e) == "challenge" for e in base_examples)},
        "teacher_provider": ctx.params.teacher.provider,
        **compute_metrics(tables, cfg.disparity_threshold),
        "safety_screen": test_screen_metrics(ctx, student, test),
    }
    if served is not None:
        metrics["served"] = {"base_url": cfg.endpoint.base_url, "model": cfg.endpoint.model,
                             "models": served.models, "concurrency": cfg.endpoint.concurrency}
    if query_records:  # the coaching-rule audit needs each example's query (its current plan, goal)
        metrics["audit"] = audit_by_model(texts, {role: [query_records.get(ex.query_id) for ex in answered[role]]
                                                  for role in texts})
    metrics["charts"] = write_charts(out / "charts", metrics)
    metrics.update(_flat_summary(metrics))
    files["metrics"] = write_json(out / "metrics.json", metrics)
    files["comparison"] = write_comparison(out / "comparison.md", metrics)
    files["per_slice"] = write_per_slice_csv(out / "per_slice.csv", metrics)
    files["charts"] = out / "charts"

    run_ids = log_to_mlflow(ctx, metrics, student, dataset_run_id, files, example_tables)
    files["mlflow_runs"] = write_json(out / "mlflow_runs.json", run_ids)
    write_manifest(ctx, STAGE, files, rows={"examples": n_test, "test_rows": len(test),
                                            "challenge_examples": len(challenge_examples)},
                   extra={"dataset_run_id": dataset_run_id, "mlflow_runs": run_ids})
    summary = {role: {k: metrics["models"][role].get(k) for k in ("validity", "adherence", "referral_recall",
                                                                  "referral_precision", "pattern_coverage",
                                                                  "weekly_volume_error_median", "tokens_per_s")}
               for role in tables}
    summary["safety_screen"] = metrics["safety_screen"]
    log.info("evaluation: %s", summary)
    return {"examples": n_test, "challenge_examples": len(challenge_examples), "metrics": summary,
            "mlflow_runs": run_ids}
