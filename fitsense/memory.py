"""Refuse a data stage up front when its rows would not fit in memory.

A stage that runs out of memory swaps or is killed minutes in, with nothing said. Instead the
runner estimates each data stage's peak memory from the setting that sizes it (bytes per row,
measured with benchmarks/bench_data_scale.py) and stops before the stage starts when the
estimate exceeds the memory available, naming the setting to lower.
"""

from __future__ import annotations

from dataclasses import dataclass

from fitsense.config import Params
from fitsense.errors import ConfigError

GB = 1024**3
BASE_BYTES = 600 * 1024**2  # interpreter, pandas, pyarrow, sklearn, Great Expectations imported
HEADROOM = 0.9  # of the available memory a stage may plan to use


class MemoryLimitError(ConfigError):
    """The rows a setting asks for would not fit in the memory this machine has available."""


@dataclass(frozen=True)
class RowCost:
    setting: str  # the dotted param whose value is the row count
    bytes_per_row: int  # peak RSS growth per row


# Peak memory per row at 300k queries and 120k users (bench_data_scale.py; forked workers included, as the
# sum of their proportional set sizes), less BASE_BYTES, rounded up ~15%: synthetic 1.0 GB (users drawn and
# written 25k at a time; what still grows is the planner's plan cache, bounded at 200k plans), queries 0.9 GB
# (parent and two workers: a batch reads only its users' row groups, per-user facts packed in one buffer),
# teacher 0.9 GB (flat: it streams 10k queries at a time), dataset 2.5 GB (compact columns and the MinHash
# index of the kept examples; 6.2 GB measured at 1M), quality 1.1 GB at 100k (big synthetic tables checked in
# 500k-row batches; 2.7 GB for the 142.5M synthetic rows of 400k users).
STAGE_ROW_COSTS: dict[str, RowCost] = {
    "synthetic": RowCost("synthetic.n_users", 4_500),
    "queries": RowCost("queries.n_queries", 2_000),
    "teacher": RowCost("queries.n_queries", 1_500),
    "dataset": RowCost("queries.n_queries", 7_500),
    "quality": RowCost("queries.n_queries", 5_000),
}


def setting_value(params: Params, dotted: str) -> int:
    value = params
    for part in dotted.split("."):
        value = getattr(value, part)
    return int(value)


def estimated_bytes(stage: str, params: Params) -> tuple[int, RowCost, int] | None:
    """(estimated peak bytes, the cost model, rows) for a data stage; None for other stages."""
    cost = STAGE_ROW_COSTS.get(stage)
    if cost is None:
        return None
    rows = setting_value(params, cost.setting)
    return BASE_BYTES + rows * cost.bytes_per_row, cost, rows


def available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def check_stage_memory(stage: str, params: Params, available: int | None = None) -> None:
    """Raise ``MemoryLimitError`` naming the setting when the stage's estimate does not fit."""
    estimate = estimated_bytes(stage, params)
    if estimate is None:
        return
    need, cost, rows = estimate
    available = available_bytes() if available is None else available
    budget = available * HEADROOM
    if need <= budget:
        return
    fits = max(0, int((budget - BASE_BYTES) // cost.bytes_per_row))
    raise MemoryLimitError(
        f"stage {stage}: {cost.setting}={rows:,} needs about {need / GB:.1f} GB of memory, "
        f"{available / GB:.1f} GB is available: lower {cost.setting} (about {fits:,} fits) "
        f"or run on a machine with more memory"
    )
