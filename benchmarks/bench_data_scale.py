"""How the data stages grow with the number of queries: seconds, peak RSS, log-log slope.

For each size, runs synthetic -> queries -> teacher (offline) -> dataset -> quality, each
stage in its own process (``fitsense stage``), so its peak RSS is its own. Users scale with
the queries (``--queries-per-user``). Prints, per stage and size, wall and CPU seconds (CPU
includes forked workers: on a loaded machine wall exceeds CPU / cores), the peak RSS of the
largest process and of the stage with its workers, then the growth exponent between
consecutive sizes (log-log slope of wall seconds: 1.0 is linear):

    python benchmarks/bench_data_scale.py --queries 10000 100000 1000000
    python benchmarks/bench_data_scale.py --queries 2000 20000 --keep /tmp/scale   # keep the runs
    python benchmarks/bench_data_scale.py --stages synthetic queries teacher       # the first stages only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

STAGES = ("synthetic", "queries", "teacher", "dataset", "quality")


def _tree_rss(proc: psutil.Process) -> int:
    """Memory of a process and its children (forked workers) together: the sum of their proportional set
    sizes (a page shared by k processes counts 1/k in each), i.e. what they hold between them."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_full_info().pss
    return total


def run_stage(stage: str, run_id: str, overrides: list[str]) -> dict:
    cmd = [sys.executable, "-m", "fitsense.app.cli", "stage", stage, "--run-id", run_id]
    for o in overrides:
        cmd += ["--set", o]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watched, tree_peak, done = psutil.Process(proc.pid), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            with contextlib.suppress(psutil.Error):
                tree_peak[0] = max(tree_peak[0], _tree_rss(watched))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr_tail = proc.stderr.read()  # drained while it runs (a full pipe would block the stage)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's peak RSS, and CPU with its waited-for workers
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"stage {stage} failed (exit {proc.returncode}):\n{stderr_tail[-3000:]}")
    return {"seconds": round(seconds, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024),  # ru_maxrss: KiB on Linux; the largest process
            "tree_rss_mb": round(tree_peak[0] / 1024**2)}


def bench(root: Path, sizes: list[int], queries_per_user: float, extra: list[str],
          stages: tuple[str, ...] = STAGES) -> dict:
    results: dict[str, dict[int, dict]] = {s: {} for s in stages}
    for n in sizes:
        users = max(300, int(n / queries_per_user))
        overrides = [*extra, f"synthetic.n_users={users}", f"queries.n_queries={n}", f"run.artifacts_dir={root}",
                     f"teacher.cache_dir={root}/teacher-cache-{n}", "teacher.provider=offline"]
        for stage in stages:
            results[stage][n] = run_stage(stage, f"scale-{n}", overrides)
            r = results[stage][n]
            print(f"{n:>9} {stage:<10} {r['seconds']:>9.1f} s {r['cpu_s']:>9.1f} s CPU {r['peak_rss_mb']:>7} MB "
                  f"(all processes {r['tree_rss_mb']} MB)", file=sys.stderr, flush=True)
    return results


def slopes(per_size: dict[int, dict]) -> list[float]:
    sizes = sorted(per_size)
    return [round(math.log(per_size[b]["seconds"] / per_size[a]["seconds"]) / math.log(b / a), 2)
            for a, b in zip(sizes, sizes[1:])]


def report(results: dict[str, dict[int, dict]]) -> str:
    sizes = sorted(next(iter(results.values())))
    head = "stage       " + "".join(f"{n:>34}" for n in sizes) + "   slope(s) between sizes"
    lines = [head, " " * 12 + "".join(f"{'wall s   CPU s  RSS MB  all MB':>34}" for _ in sizes)]
    for stage, per_size in results.items():
        cells = "".join(f"{per_size[n]['seconds']:>12.1f}{per_size[n]['cpu_s']:>8.1f}{per_size[n]['peak_rss_mb']:>7}"
                        f"{per_size[n]['tree_rss_mb']:>7}" for n in sizes)
        lines.append(f"{stage:<12}{cells}   {slopes(per_size)}")
    seconds = {n: sum(results[s][n]["seconds"] for s in results) for n in sizes}
    cpu = {n: sum(results[s][n]["cpu_s"] for s in results) for n in sizes}
    peak = {n: max(results[s][n]["peak_rss_mb"] for s in results) for n in sizes}
    tree = {n: max(results[s][n]["tree_rss_mb"] for s in results) for n in sizes}
    lines.append(f"{'total':<12}" + "".join(f"{seconds[n]:>12.1f}{cpu[n]:>8.1f}{peak[n]:>7}{tree[n]:>7}"
                                            for n in sizes))
    lines.append("slopes: log-log of wall seconds. RSS MB: the largest process (peak); all MB: the stage and its forked "
                 "workers together (sum of proportional set sizes, sampled every 0.2 s).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries-per-user", type=float, default=2.5)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override a param")
    parser.add_argument("--keep", default=None, help="write the runs into this folder")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="the stages to run, in pipeline order from synthetic (each needs the ones before it)")
    args = parser.parse_args()
    sizes = sorted(args.queries)
    stages = tuple(s for s in STAGES if s in args.stages)
    if stages != STAGES[:len(stages)]:
        parser.error(f"--stages must be the first stages of {', '.join(STAGES)} (each reads the ones before it)")
    if args.keep:
        results = bench(Path(args.keep), sizes, args.queries_per_user, args.overrides, stages)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            results = bench(Path(tmp), sizes, args.queries_per_user, args.overrides, stages)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps({s: {str(n): v for n, v in r.items()} for s, r in results.items()},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
