"""Reading many queries fast, and holding a chunk of them without the garbage collector re-scanning them."""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, ConfigDict

from fitsense.errors import InputDataError
from fitsense.records import ChatMessage, CoachingQuery, QueryConstraints, QueryKind
from fitsense.runs import describe_invalid


class QueryHead(BaseModel):
    """What capture needs of a query for a remote teacher; parses ~4x faster than a full CoachingQuery
    (whose context only the offline teacher reads)."""

    model_config = ConfigDict(extra="ignore")
    query_id: str
    user_id: int
    kind: QueryKind
    messages: list[ChatMessage]
    constraints: QueryConstraints


def read_queries(path: Path, model: type[BaseModel] = CoachingQuery) -> list:
    """Like ``read_jsonl(path, model)`` but parsed by pydantic-core straight from the JSON text."""
    return [q for q, _ in iter_queries(path, model)]


def iter_queries(path: Path, model: type[BaseModel] = CoachingQuery) -> Iterator[tuple[BaseModel, str]]:
    """Each query parsed as ``model``, with its JSON line; a bad line raises ``InputDataError`` naming the
    file and line number."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield model.model_validate_json(line), line
                except ValueError as exc:
                    raise InputDataError(f"{path}:{lineno}: invalid query record: {describe_invalid(exc)}") from None


@contextlib.contextmanager
def few_collections() -> Iterator[None]:
    """Garbage collection tuned for holding ~10^4-10^5 live objects (a chunk of queries and records): with
    the default gen-0 threshold (700) the collector re-scanned them so often that it took about half the CPU
    of a fully cached rerun. Collections run 50x less often; undone on exit."""
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], 50_000), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
