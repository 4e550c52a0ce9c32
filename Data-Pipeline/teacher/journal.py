"""Crash-safe capture journal: finished teacher records, appended as they come.

Lines are flushed every ``FLUSH_EVERY_S`` and fsynced every ``FSYNC_EVERY_S``;
a rerun after kill -9 skips journaled queries (a torn last line is dropped).
The journal's name binds it to what makes answers differ (teacher, generation
params, the queries file), so a changed teacher never reuses old records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from fitsense.errors import InputDataError
from fitsense.records import TeacherRecord
from fitsense.runs import RunContext, describe_invalid, file_sha256

log = logging.getLogger(__name__)

STAGE = "teacher"
FLUSH_EVERY_S = 0.05
FSYNC_EVERY_S = 0.5


class Journal:
    """Append-only JSONL of finished records; survives kill -9 (batched flush, periodic fsync)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, TeacherRecord] = {}
        self.lines: dict[str, str] = {}  # query_id -> its JSON line, reused by the final records file
        if path.exists():
            self._recover()
        # A large buffer: lines reach the OS in batches at each flush, not every few records.
        self._fh = open(path, "a", encoding="utf-8", buffering=1 << 20)
        self._synced = self._flushed = time.monotonic()

    def _recover(self) -> None:
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):  # a torn last line from a killed run: drop it
            log.warning("%s: dropping a torn last line (%d bytes) from an interrupted run", self.path, len(data) - keep)
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
        for lineno, line in enumerate(data[:keep].decode("utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rec = TeacherRecord.model_validate_json(line)
                except ValueError as exc:
                    raise InputDataError(f"{self.path}:{lineno}: corrupt journal record ({describe_invalid(exc)}); delete the file "
                                     f"to recapture (cached answers are reused)") from None
                self.done[rec.query_id] = rec
                self.lines[rec.query_id] = line

    def write(self, rec: TeacherRecord) -> None:
        line = self.lines[rec.query_id] = rec.model_dump_json(exclude_none=True)
        self._fh.write(line + "\n")
        now = time.monotonic()
        # Flushed to the OS in small batches (a killed process loses at most FLUSH_EVERY_S of
        # journal lines, whose answers the response cache serves again for free); fsynced less often.
        if now - self._flushed > FLUSH_EVERY_S:
            self._fh.flush()
            self._flushed = now
        if now - self._synced > FSYNC_EVERY_S:
            self.sync()

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._synced = self._flushed = time.monotonic()

    def close(self) -> None:
        self.sync()
        self._fh.close()


def journal_path(ctx: RunContext, queries_path: Path, shard: tuple[int, int] | None) -> Path:
    """Journal name bound to what makes answers differ, so a changed teacher never reuses old records."""
    cfg = ctx.params.teacher
    ident = json.dumps([cfg.provider, cfg.model, cfg.base_url, cfg.temperature, cfg.max_tokens, cfg.max_repairs,
                        file_sha256(queries_path)])
    fp = hashlib.sha256(ident.encode()).hexdigest()[:16]
    stem = f"records.shard-{shard[0]}-of-{shard[1]}" if shard else "records"
    return ctx.stage_dir(STAGE) / ".partial" / f"{stem}.{fp}.jsonl"
