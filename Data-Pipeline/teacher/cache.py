"""Content-addressed teacher response cache (SQLite, shared by every run).

Key: sha256 of (teacher model, messages, generation params); value: the
completion text and its token counts. One SQLite file in WAL mode: each put is
its own transaction, so a killed process never leaves a torn entry, several
processes (Airflow shards) can share it, and a fully cached rerun of 10k
queries is one indexed lookup each instead of 10k file opens.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from fitsense.data.teacher.client import Completion


def cache_key(model: str, messages: list[dict], params: dict) -> str:
    blob = json.dumps({"model": model, "messages": messages, "params": params},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    def __init__(self, cache_dir: str | Path):
        path = Path(cache_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "responses.sqlite"
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: durable across a killed process (not across power loss), and fast.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._seen: dict[str, Completion] = {}  # entries never change (first answer wins): read each once
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
            "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL)"
        )

    def get(self, key: str) -> Completion | None:
        if key in self._seen:
            return self._seen[key]
        row = self._db.execute(
            "SELECT text, prompt_tokens, completion_tokens FROM responses WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        completion = self._seen[key] = Completion(*row)
        return completion

    def put(self, key: str, completion: Completion) -> None:
        self._db.execute(
            # first answer wins: concurrent identical requests must not change what reruns replay
            "INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?)",
            (key, completion.text, completion.prompt_tokens, completion.completion_tokens),
        )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()
