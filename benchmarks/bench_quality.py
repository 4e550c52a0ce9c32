"""Dataset build and data-quality stage speed on a real upstream chain.

Runs synthetic -> queries -> teacher (offline teacher by default) -> dataset ->
quality in a temporary folder and prints each stage's wall time, the quality
stage's own breakdown (Great Expectations, stats/anomalies/drift/bias,
reports) and the key quality figures:

    python benchmarks/bench_quality.py                          # 300 users, 400 queries (params defaults)
    python benchmarks/bench_quality.py --users 1000 --queries 2000
    python benchmarks/bench_quality.py --keep /tmp/bench-quality   # keep the artifacts (report.md, data_docs/)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from fitsense.app.pipeline import run_stage
from fitsense.config import load_params
from fitsense.runs import RunContext

STAGES = ("synthetic", "queries", "teacher", "dataset", "quality")


def bench(root: Path, params: str, overrides: list[str], users: int, queries: int) -> dict:
    p = load_params(params, [*overrides, f"synthetic.n_users={users}", f"queries.n_queries={queries}",
                             f"run.artifacts_dir={root}", "run.run_id=bench-quality",
                             f"teacher.cache_dir={root}/teacher-cache"])  # a cold cache: real capture time
    ctx = RunContext.create(p)
    seconds, results = {}, {}
    for stage in STAGES:
        started = time.perf_counter()
        results[stage] = run_stage(ctx, stage)
        seconds[stage] = round(time.perf_counter() - started, 2)
    metrics = json.loads((ctx.stage_dir("quality") / "metrics.json").read_text())
    return {
        "users": users,
        "queries": queries,
        "stage_seconds": seconds,
        "quality_breakdown_s": results["quality"]["timings_s"],
        "dataset_rows": results["dataset"]["rows"],
        "dataset_dropped": results["dataset"]["dropped"],
        "quality": {k: metrics[k] for k in ("gate_passed", "expectations_evaluated", "teacher_validity_rate",
                                            "anomaly_rate", "bias_flags")},
        "report": str(ctx.stage_dir("quality") / "report.md"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override a param")
    parser.add_argument("--keep", default=None, help="write into this folder instead of a temporary one")
    args = parser.parse_args()
    if args.keep:
        print(json.dumps(bench(Path(args.keep), args.params, args.overrides, args.users, args.queries), indent=2))
        return
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        print(json.dumps(bench(Path(tmp), args.params, args.overrides, args.users, args.queries), indent=2))


if __name__ == "__main__":
    main()
