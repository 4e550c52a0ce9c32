"""Synthetic data generation speed: users/s, rows per table and wall time per size.

Runs the real stage (``generate_synthetic_data``: generation + Parquet writes +
manifest) in a temporary folder, then optionally the query stage on top:

    python benchmarks/bench_synthetic.py                    # 10k and 100k users
    python benchmarks/bench_synthetic.py --users 1000 10000 --queries 400
    python benchmarks/bench_synthetic.py --users 100000 --keep /tmp/bench   # keep the files
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from fitsense.config import load_params
from fitsense.data.queries import build_queries
from fitsense.data.synthetic import generate_synthetic_data
from fitsense.runs import RunContext


def bench(users: int, root: Path, params: str, overrides: list[str], queries: int | None) -> dict:
    p = load_params(params, [*overrides, f"synthetic.n_users={users}", f"run.artifacts_dir={root}",
                             f"run.run_id=bench-{users}"] + ([f"queries.n_queries={queries}"] if queries else []))
    ctx = RunContext.create(p)
    started = time.perf_counter()
    result = generate_synthetic_data(ctx)
    wall = time.perf_counter() - started
    size_mb = sum(f.stat().st_size for f in ctx.stage_dir("synthetic").glob("*.parquet")) / 2**20
    out = {
        "users": users,
        "wall_s": round(wall, 2),
        "generate_s": result["generate_s"],
        "users_per_s": round(users / wall),
        "total_rows": sum(result["rows"].values()),
        "parquet_mb": round(size_mb, 1),
        "rows": result["rows"],
    }
    if queries:
        started = time.perf_counter()
        q = build_queries(ctx)
        out["queries"] = q["queries"]
        out["queries_s"] = round(time.perf_counter() - started, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=None, help="also build this many queries per size")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override a param")
    parser.add_argument("--keep", default=None, help="write into this folder instead of a temporary one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-synthetic-") as tmp:
        root = Path(args.keep or tmp)
        for users in args.users:
            r = bench(users, root, args.params, args.overrides, args.queries)
            print(f"{users:>9,} users: {r['wall_s']:6.2f} s wall ({r['generate_s']:.2f} s generate), "
                  f"{r['users_per_s']:>8,} users/s, {r['total_rows']:,} rows, {r['parquet_mb']} MB Parquet"
                  + (f"; {r['queries']} queries in {r['queries_s']} s" if args.queries else ""))
            for table, n in r["rows"].items():
                print(f"    {table:<28}{n:>12,}")
            print(json.dumps({k: v for k, v in r.items() if k != "rows"}))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
