"""Guided vs raw decoding: tokens/s at the same batch, in one run, through the inference path.

Loads a run's student (its trained adapter merged, or the configured base model
when the run has no training output), takes ``--examples`` test queries and
answers them twice with ``CoachInference.answer``: ``raw`` and ``guided`` (the
safety screen and the per-request grammar; grammars are compiled before the
timed pass, as a server does at start-up, and their compile time is printed
separately). Prints tokens/s, validity and adherence of each and the ratio. A
third pass answers guided again from the raw replies (``answer(..., raw=...)``,
what evaluation does): it prints its wall time beside the guided pass and how
many of its answers are identical to the guided ones:

    python benchmarks/bench_guided.py --run-id default --examples 7
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-id", required=True, help="a run with a dataset (and optionally training) stage")
    parser.add_argument("--examples", type=int, default=7)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value params override")
    args = parser.parse_args()

    from fitsense.config import load_params
    from fitsense.constraints import check_answer
    from fitsense.evaluation.evaluate import student_requests
    from run_student import load_run_student

    params = load_params(args.params, dict(o.split("=", 1) for o in args.overrides))
    run = load_run_student(params, args.run_id, args.examples)
    engine, examples, model = run.engine, run.examples, run.engine.model
    requests = student_requests(examples)
    max_new = args.max_new_tokens or params.evaluation.max_new_tokens
    batch = len(requests)
    print(f"{len(requests)} queries, batch {batch}, max_new_tokens {max_new}, "
          f"model {'trained adapter (merged)' if run.trained else 'base, no adapter'}, dtype {model.dtype}")

    started = time.perf_counter()
    for request, refer in zip(requests, engine.screen.refer([r.messages[-1]["content"] for r in requests])):
        engine.grammars.get(request.constraints, refer)
    print(f"grammar compile (not timed below): {len(engine.grammars.grammars)} grammars in "
          f"{time.perf_counter() - started:.2f} s")
    engine.answer(requests[:1], decoding="raw", max_new_tokens=2, batch_size=1)  # warm-up
    figures, walls, answers = {}, {}, {}
    for decoding in ("raw", "guided", "guided, continuing raw"):
        started = time.perf_counter()
        replies = engine.answer(requests, decoding=decoding.split(",")[0], max_new_tokens=max_new,
                                batch_size=batch, seed=params.seed,
                                raw=answers["raw"] if decoding.startswith("guided,") else None)
        walls[decoding] = wall = time.perf_counter() - started
        answers[decoding] = replies
        tokens = sum(r.completion_tokens for r in replies)
        valid = sum(r.answer is not None for r in replies)
        adherent = sum(r.answer is not None and not check_answer(r.answer, ex.constraints)
                       for r, ex in zip(replies, examples))
        figures[decoding] = tokens / wall
        print(f"{decoding:>6}: {tokens:5d} tokens in {wall:6.1f} s = {tokens / wall:6.1f} tokens/s; "
              f"valid {valid}/{len(replies)}, adherent {adherent}/{len(replies)}")
    print(f"guided / raw tokens/s: {figures['guided'] / figures['raw']:.2f}x (target >= 0.80x)")
    continued = answers["guided, continuing raw"]
    same = sum(a.text == b.text for a, b in zip(continued, answers["guided"]))
    shared = sum(r.shared_tokens for r in continued) / max(sum(r.completion_tokens for r in continued), 1)
    print(f"guided continuing raw: {walls['guided, continuing raw']:.1f} s vs {walls['guided']:.1f} s from scratch "
          f"({walls['guided, continuing raw'] / walls['guided']:.2f}x); {same}/{len(continued)} answers identical; "
          f"{shared:.0%} of its tokens taken over from raw")


if __name__ == "__main__":
    main()
