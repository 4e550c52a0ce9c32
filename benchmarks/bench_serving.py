"""Serving speed and outcomes: p50/p95 latency and answers/s at concurrency 1, 4 and 16, fallback rate, screen.

Builds a run in a temporary folder (synthetic -> queries -> offline teacher ->
dataset), registers a student in a fresh MLflow store (the base model with a
zero-initialised LoRA adapter: the compute of a trained one), starts
``fitsense serve``'s app in-process and sends the test split's requests (with
their constraints) through the ``openai`` SDK at each concurrency level. The
same requests run at every level, so the answers/s ratio compares like with like.

    python benchmarks/bench_serving.py --model tiny --max-new-tokens 48    # the tests' tiny random Llama: seconds
    python benchmarks/bench_serving.py --model bundled --requests 16        # SmolLM2-135M, the server's max_new_tokens
    python benchmarks/bench_serving.py --model /path/to/model --set serving.max_batch_size=16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

REPO = Path(__file__).resolve().parent.parent
DATA_STAGES = ("synthetic", "queries", "teacher", "dataset")


def _base_model(spec: str, root: Path) -> str:
    if spec == "tiny":
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_model import build_tiny_model

        return str(build_tiny_model(REPO / ".cache" / "test" / "tiny-llama"))
    return "bundled:smollm2-135m" if spec == "bundled" else spec


def register(root: Path, model: str, overrides: list[str]):
    """A run with data stages done and a registered, promoted student; returns its RunContext."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fitsense.app.pipeline import run_stage
    from fitsense.config import load_params
    from fitsense.registry.register import register_student
    from fitsense.runs import RunContext, write_json
    from fitsense.training.student import resolve_base_model

    params = load_params(None, [
        f"run.artifacts_dir={root}/artifacts", "run.run_id=bench-serving", f"teacher.cache_dir={root}/teacher-cache",
        f"registry.tracking_uri=sqlite:///{root}/mlruns.db", f"registry.artifact_location={root}/mlartifacts",
        f"training.base_model={model}", "training.device=cpu", "serving.fallback=offline",
        f"serving.log_url=sqlite:///{root}/inference.sqlite", "serving.timeout_s=3600", *overrides])
    ctx = RunContext.create(params)
    for stage in DATA_STAGES:
        run_stage(ctx, stage)
    base = resolve_base_model(params.training)
    adapter = ctx.stage_dir("training") / "adapter"
    lora = params.training.lora
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                                LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=lora.target_modules,
                                           task_type="CAUSAL_LM"))
    peft_model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(adapter)
    write_json(ctx.stage_dir("training") / "student.json", {
        "base_model": model, "base_model_path": str(Path(base).resolve()), "adapter_dir": str(adapter),
        "mlflow_run_id": None})
    write_json(ctx.stage_dir("evaluation") / "metrics.json",
               {"models": {"student": {"validity": 1.0, "adherence": 1.0, "referral_recall": 1.0}}})
    register_student(ctx)
    return ctx


async def run_level(base_url: str, requests: list[dict], concurrency: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=3600)
    gate = asyncio.Semaphore(concurrency)
    latencies, infos = [0.0] * len(requests), [{}] * len(requests)

    async def one(i: int, req: dict) -> None:
        async with gate:
            started = time.perf_counter()
            resp = await client.chat.completions.create(model="student", **req)
            latencies[i] = time.perf_counter() - started
            infos[i] = resp.model_extra["fitsense"] | {"completion_tokens": resp.usage.completion_tokens}

    started = time.perf_counter()
    await asyncio.gather(*[one(i, r) for i, r in enumerate(requests)])
    wall = time.perf_counter() - started
    await client.close()
    q = statistics.quantiles(latencies, n=20, method="inclusive")
    return {"concurrency": concurrency, "n": len(requests), "wall_s": wall, "answers_per_s": len(requests) / wall,
            "p50_s": statistics.median(latencies), "p95_s": q[18], "infos": infos}


def attention_loader(attn: str | None):
    """``load_version``, with the model's attention implementation switched to ``attn`` (when given)."""
    from fitsense.registry.serving.student import load_version

    def load(params, ref):
        answerer = load_version(params, ref)
        if attn:
            answerer.model.set_attn_implementation(attn)
        return answerer

    return load


def wilson(k: int, n: int) -> str:
    if n == 0:
        return "n/a (n=0)"
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(method="wilson")
    return f"{k}/{n} = {k / n:.1%} (95% CI {ci.low:.1%}-{ci.high:.1%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny | bundled | a local model folder")
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="serving.max_new_tokens (default: the server default, 768)")
    parser.add_argument("--split-requests", type=int, default=None,
                        help="test-split requests for the fallback and screen figures (default: the whole split)")
    parser.add_argument("--attn", choices=("sdpa", "eager"), default=None,
                        help="switch the served model's attention after loading (default: as load_student loads it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value params override")
    args = parser.parse_args()

    import torch

    from fitsense.records import DistillRecord
    from fitsense.registry.serving.server import build_service, running_server
    from fitsense.runs import read_jsonl

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        cap = [f"serving.max_new_tokens={args.max_new_tokens}"] if args.max_new_tokens else []
        ctx = register(root, _base_model(args.model, root), [*cap, *args.overrides])
        print(f"set-up (data stages, adapter, registration): {time.perf_counter() - started:.1f}s")
        test = read_jsonl(ctx.require("dataset", "test.jsonl"), DistillRecord)
        requests = [{"messages": [m.model_dump() for m in rec.messages if m.role != "assistant"],
                     "extra_body": {"constraints": rec.constraints.model_dump()}}
                    for rec in (test * (args.requests // len(test) + 1))[: max(args.requests, len(test))]]
        service = build_service(ctx.params, loader=attention_loader(args.attn))
        with running_server(service) as base_url:
            asyncio.run(run_level(base_url, requests[:2], 2))  # warm-up, untimed
            levels = []
            for c in args.concurrency:
                levels.append(asyncio.run(run_level(base_url, requests[: args.requests], c)))
                print(f"  c{c}: {levels[-1]['wall_s']:.0f}s", flush=True)
            test = test[: args.split_requests]
            split = asyncio.run(run_level(base_url, requests[: len(test)], max(args.concurrency)))
            batches = list(service.batcher.batch_sizes)

    cfg = ctx.params.serving
    print(f"model {args.model}, attention {args.attn or 'as loaded'}, max_new_tokens {cfg.max_new_tokens}, "
          "micro-batches of up to "
          f"{cfg.max_batch_size} or {cfg.max_wait_ms:g} ms, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'concurrency':>11} {'n':>4} {'p50 s':>7} {'p95 s':>7} {'answers/s':>10} {'vs c1':>6}")
    for lv in levels:
        ratio = lv["answers_per_s"] / levels[0]["answers_per_s"]
        print(f"{lv['concurrency']:>11} {lv['n']:>4} {lv['p50_s']:>7.2f} {lv['p95_s']:>7.2f} "
              f"{lv['answers_per_s']:>10.3f} {ratio:>5.2f}x")
    print(f"batch sizes served: mean {statistics.mean(batches):.1f}, max {max(batches)}")
    top = levels[-1]["answers_per_s"] / levels[0]["answers_per_s"]
    print(f"target: c{levels[-1]['concurrency']} >= 2.5x the answers/s of c{levels[0]['concurrency']}: "
          f"{top:.2f}x, {'met' if top >= 2.5 else 'missed'}")

    infos = split["infos"]  # the whole test split, in order
    needs = [rec.constraints.referral_required for rec in test]
    refer = [i["screen"] == "refer" for i in infos]
    caught = sum(r and n for r, n in zip(refer, needs))
    subset = " (the first of the split)" if args.split_requests else ""
    print(f"test split: {len(test)} queries{subset}, {sum(needs)} need a referral; screen referred {sum(refer)}")
    print(f"  screen recall {wilson(caught, sum(needs))}, precision {wilson(caught, sum(refer))}")
    generated = [i for i in infos if i["decoding"] != "screen"]
    print(f"  generated answers valid {wilson(sum(bool(i['valid']) for i in generated), len(generated))}, "
          f"adherent {wilson(sum(bool(i['valid']) and not i['violations'] for i in generated), len(generated))}")
    print(f"  fallback to the teacher {wilson(sum(i['fallback'] for i in generated), len(generated))} "
          "of generated answers")

if __name__ == "__main__":
    main()
