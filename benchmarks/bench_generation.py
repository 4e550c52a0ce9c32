"""Answer-generation throughput by attention kernel and batch size, through the inference path.

Loads a run's student (its trained adapter merged, or the configured base model
when the run has no training output), takes ``--examples`` test queries (in the
order evaluation batches them) and answers them with ``CoachInference.answer``
(raw decoding, the stop-at-complete-JSON criterion) once per attention kernel,
batch size, ``--release-below``, ``--reuse-cache`` and ``--head`` setting, all in one run so the figures compare. Prints tokens/s,
wall time, slot use (answer tokens over rows x decoding steps of the generate calls) and how many
answers are identical to the first setting's:

    python benchmarks/bench_generation.py --run-id default --examples 24 --batch 12 24 --attention sdpa eager
    python benchmarks/bench_generation.py --run-id default --examples 48 --batch 12 --attention sdpa --release-below 0 3
    python benchmarks/bench_generation.py --run-id default --examples 48 --batch 12 --attention sdpa --release-below 3 \
        --reuse-cache off on
    python benchmarks/bench_generation.py --run-id default --examples 24 --batch 12 --attention sdpa --release-below 3 \
        --head linear row-major
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
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--batch", type=int, nargs="+", default=[12, 24])
    parser.add_argument("--attention", nargs="+", default=["sdpa", "eager"])
    parser.add_argument("--decoding", choices=["raw", "guided"], default="raw")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--release-below", type=int, nargs="+", default=[0],
                        help="evaluation.release_below settings to compare (0: off)")
    parser.add_argument("--reuse-cache", nargs="+", choices=["on", "off"], default=["on"],
                        help="on: shared prompt start read once, unpadded prompts, released rows keep their cache; "
                             "off: generate() reads each padded batch whole")
    parser.add_argument("--head", nargs="+", choices=["row-major", "linear"], default=["row-major"],
                        help="row-major: the output projection load_student installs (training/lm_head.py); "
                             "linear: plain nn.Linear")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    import torch

    from fitsense.config import load_params
    from fitsense.training.lm_head import RowMajorHead
    from fitsense.evaluation.evaluate import expected_length, student_requests
    from run_student import load_run_student

    params = load_params(args.params)
    run = load_run_student(params, args.run_id, args.examples)
    engine, model = run.engine, run.engine.model
    examples = sorted(run.examples, key=expected_length)  # the order evaluation batches them in
    requests = student_requests(examples)
    max_new = args.max_new_tokens or params.evaluation.max_new_tokens
    print(f"{len(requests)} queries, {args.decoding} decoding, max_new_tokens {max_new}, "
          f"model {'trained adapter (merged)' if run.trained else 'base, no adapter'}, dtype {model.dtype}")
    if args.decoding == "guided":
        for request, refer in zip(requests, engine.screen.refer([r.messages[-1]["content"] for r in requests])):
            engine.grammars.get(request.constraints, refer)  # compiled outside the timed passes
    engine.answer(requests[:1], decoding="raw", max_new_tokens=2, batch_size=1)  # warm-up
    calls = []  # (rows, decoding steps) of each generate call
    generate = model.generate

    def counted(**kwargs):
        result = generate(**kwargs)
        calls.append(tuple(result[:, kwargs["input_ids"].shape[1]:].shape))
        return result

    model.generate = counted
    baseline = first = None
    for attention in args.attention:
        model.set_attn_implementation(attention)
        for batch in args.batch:
            for release, reuse, head in ((r, c, h) for r in args.release_below for c in args.reuse_cache
                                         for h in args.head):
                model.get_output_embeddings().__class__ = RowMajorHead if head == "row-major" else torch.nn.Linear
                calls.clear()
                started = time.perf_counter()
                replies = engine.answer(requests, decoding=args.decoding, max_new_tokens=max_new,
                                        batch_size=batch, seed=params.seed, release_below=release,
                                        reuse_cache=reuse == "on")
                wall = time.perf_counter() - started
                tokens = sum(r.completion_tokens for r in replies)
                rate = tokens / wall
                baseline, first = baseline or rate, first or replies
                valid = sum(r.answer is not None for r in replies)
                same = sum(a.token_ids == b.token_ids for a, b in zip(replies, first))
                slots = sum(rows * steps for rows, steps in calls)
                print(f"attention {attention:>5}, batch {batch:3d}, release_below {release}, cache reuse {reuse:>3}, "
                      f"head {head}: "
                      f"{tokens:6d} tokens "
                      f"in {wall:6.1f} s = {rate:6.1f} tokens/s ({rate / baseline:.2f}x the first); "
                      f"{len(calls)} generate calls, slot use {tokens / max(slots, 1):.0%}; valid "
                      f"{valid}/{len(replies)}; identical to the first {same}/{len(replies)}", flush=True)


if __name__ == "__main__":
    main()
