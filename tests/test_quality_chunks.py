"""Quality inputs are read in chunks: same frame as in one go, a bad line still named by file and line."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fitsense.data.quality import tables
from fitsense.errors import InputDataError


def _write(path, n):
    rows = [{"query_id": f"q{i:05d}", "user_id": i // 2, "kind": "plan_creation", "messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "u" * i}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_chunked_frame_equals_one_frame_and_names_a_bad_line_past_the_first_chunk(tmp_path, monkeypatch):
    path = tmp_path / "queries.jsonl"
    rows = _write(path, 7)
    monkeypatch.setattr(tables, "CHUNK_ROWS", 2)
    pd.testing.assert_frame_equal(tables.chunked_frame(path, tables.queries_frame), tables.queries_frame(rows))
    lines = path.read_text().splitlines()
    lines[5] = lines[5][:-3]  # truncated JSON on line 6, in the third chunk
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputDataError, match=r"queries\.jsonl:6: invalid record"):
        tables.chunked_frame(path, tables.queries_frame)


def test_audit_reads_queries_as_far_as_the_teacher_records_need(tmp_path):
    """The audit joins each teacher record to its query reading the queries alongside: records out of
    the queries' order, or without a query, give the same audit as a lookup in all queries."""
    import random

    from dq_factories import make_ctx, write_inputs

    from fitsense.runs import read_jsonl

    ctx = make_ctx(tmp_path)
    write_inputs(ctx, n_users=12, per_user=2, seed=3)
    queries = read_jsonl(ctx.stage_dir("queries") / "queries.jsonl")
    records = read_jsonl(ctx.stage_dir("teacher") / "records.jsonl")
    in_order = tables.audit_frame(records, queries)
    assert len(in_order) == sum(r["status"] == "ok" for r in records) > 10
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    by_id = tables.audit_frame(shuffled, queries).set_index("query_id").sort_index()
    pd.testing.assert_frame_equal(by_id, in_order.set_index("query_id").sort_index())
    orphan = {**records[0], "query_id": "no-such-query"}
    assert len(tables.audit_frame([orphan, *records[1:]], queries)) == len(in_order) - (records[0]["status"] == "ok")
