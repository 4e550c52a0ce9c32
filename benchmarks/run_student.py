"""A run's student on the inference path, for the generation benchmarks (bench_guided, bench_generation)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunStudent:
    engine: object  # fitsense.evaluation.inference.CoachInference
    examples: list  # the chosen test-split DistillRecords
    trained: bool  # False: the run has no training output, so the base model answers


def load_run_student(params, run_id: str, n_examples: int) -> RunStudent:
    """The run's trained adapter merged into the base (or the base alone) with its safety screen, and
    ``n_examples`` test examples chosen as evaluation chooses them."""
    from fitsense.evaluation.evaluate import select_examples
    from fitsense.evaluation.inference import CoachInference
    from fitsense.records import DistillRecord
    from fitsense.runs import RunContext, locate_artifact, read_json, read_jsonl
    from fitsense.training.screen import load_screen
    from fitsense.training.student import load_student, resolve_base_model

    ctx = RunContext.create(params, run_id)
    test = read_jsonl(ctx.require("dataset", "test.jsonl"), DistillRecord)
    training = ctx.run_dir / "training"
    student = read_json(training / "student.json") if (training / "student.json").exists() else {}
    adapter = locate_artifact(student.get("adapter_dir"), training) if student else None
    screen_dir = locate_artifact(student.get("screen_dir"), training) if student.get("screen_dir") else None
    model, tokenizer = load_student(resolve_base_model(params.training), adapter, device=params.training.device,
                                    precision=params.evaluation.precision)
    if adapter is not None:
        model = model.merge_and_unload()
    return RunStudent(CoachInference(model, tokenizer, load_screen(screen_dir)),
                      select_examples(test, n_examples, params.seed), adapter is not None)
