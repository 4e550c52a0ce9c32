"""Memory guard: a data stage too big for the machine fails before it starts, naming the setting."""

from __future__ import annotations

import pytest
from dq_factories import make_ctx

from fitsense.app.pipeline import run_stage
from fitsense.errors import UserError
from fitsense.memory import GB, MemoryLimitError, check_stage_memory


def test_too_many_queries_for_memory_names_the_setting(tmp_path):
    ctx = make_ctx(tmp_path, **{"queries.n_queries": 10_000_000})
    with pytest.raises(MemoryLimitError, match=r"stage dataset: queries\.n_queries=10,000,000 needs about [\d.]+ GB"
                                               r".* lower queries\.n_queries \(about [\d,]+ fits\)"):
        check_stage_memory("dataset", ctx.params, available=16 * GB)
    check_stage_memory("dataset", ctx.params, available=512 * GB)  # fits: no error
    check_stage_memory("training", ctx.params, available=1 * GB)  # not a data stage: no estimate


def test_the_rows_said_to_fit_do_fit(tmp_path):
    """The row count the message offers passes the guard; a tenth more does not."""
    import re

    ctx = make_ctx(tmp_path, **{"queries.n_queries": 10_000_000})
    with pytest.raises(MemoryLimitError) as info:
        check_stage_memory("dataset", ctx.params, available=16 * GB)
    fits = int(re.search(r"about ([\d,]+) fits", str(info.value)).group(1).replace(",", ""))
    check_stage_memory("dataset", make_ctx(tmp_path / "fits", **{"queries.n_queries": fits}).params, available=16 * GB)
    with pytest.raises(MemoryLimitError):
        check_stage_memory("dataset", make_ctx(tmp_path / "more", **{"queries.n_queries": int(fits * 1.1)}).params,
                           available=16 * GB)


def test_runner_refuses_before_the_stage_writes_anything(tmp_path, monkeypatch):
    ctx = make_ctx(tmp_path, **{"synthetic.n_users": 5_000_000})
    monkeypatch.setattr("fitsense.memory.available_bytes", lambda: 16 * GB)
    with pytest.raises(UserError, match=r"lower synthetic\.n_users"):
        run_stage(ctx, "synthetic")
    assert not (ctx.run_dir / "synthetic").exists()
