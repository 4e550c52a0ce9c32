"""Memory guard: a data stage too big for the machine fails before it starts, naming the setting."""

from __future__ import annotations

import pytest
from dq_factories import make_ctx

from fitsense.app.pipeline import run_stage
from fitsense.errors import UserError
from fitsense.memory import GB, MemoryLimitError, check_stage_memory


def test_too_many_queries_for_memory_names_the_setting(tmp_path):
    ctx = make_ctx(tmp_path, **{"queries.n_queries": 1_000_000})
    with pytest.raises(MemoryLimitError, match=r"queries\.n_queries=1,000,000 .* lower queries\.n_queries \(about"):
        check_stage_memory("dataset", ctx.params, available=8 * GB)
    check_stage_memory("dataset", ctx.params, available=512 * GB)  # fits: no error
    check_stage_memory("training", ctx.params, available=1 * GB)  # not a data stage: no estimate


def test_runner_refuses_before_the_stage_writes_anything(tmp_path, monkeypatch):
    ctx = make_ctx(tmp_path, **{"synthetic.n_users": 5_000_000})
    monkeypatch.setattr("fitsense.memory.available_bytes", lambda: 16 * GB)
    with pytest.raises(UserError, match=r"lower synthetic\.n_users"):
        run_stage(ctx, "synthetic")
    assert not (ctx.run_dir / "synthetic").exists()
