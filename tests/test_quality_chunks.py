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
