"""Run context, atomic artifact writes and stage manifests.

Every pipeline run has a run ID; its artifacts live under
``<artifacts_dir>/<run_id>/<stage>/``. A stage is complete when its
``manifest.json`` exists: the manifest is written last and atomically, so a
killed stage never looks complete. Files are written to a temporary sibling
and renamed into place (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import orjson
from pydantic import BaseModel, ValidationError

from fitsense.config import Params
from fitsense.errors import InputDataError, MissingUpstreamError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RunContext:
    """What every stage entry function receives: validated params and where the run lives."""

    params: Params
    run_id: str
    artifacts_dir: Path

    @classmethod
    def create(cls, params: Params, run_id: str | None = None) -> "RunContext":
        run_id = run_id or params.run.run_id
        return cls(params=params, run_id=run_id, artifacts_dir=Path(params.run.artifacts_dir))

    @property
    def run_dir(self) -> Path:
        return self.artifacts_dir / self.run_id

    def stage_dir(self, stage: str, create: bool = True) -> Path:
        path = self.run_dir / stage
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def manifest(self, stage: str) -> dict | None:
        """The stage's manifest, or None when the stage has not completed in this run."""
        path = self.run_dir / stage / MANIFEST
        return read_json(path) if path.exists() else None

    def require(self, stage: str, filename: str) -> Path:
        """Path of an upstream artifact; a clear error when the upstream stage has not run."""
        path = self.run_dir / stage / filename
        if not path.exists():
            raise MissingUpstreamError(
                f"{path} is missing: run the '{stage}' stage for run '{self.run_id}' first "
                f"(fitsense stage {stage} --run-id {self.run_id})"
            )
        return path


def locate_artifact(path: str | None, stage_dir: Path) -> Path | None:
    """A path recorded in an artifact (``student.json``'s adapter): as written, or the file of
    that name in ``stage_dir`` when the run folder has been moved or copied since."""
    if not path:
        return None
    recorded = Path(path)
    if recorded.exists():
        return recorded
    moved = stage_dir / recorded.name
    return moved if moved.exists() else recorded


def available_cpus() -> int:
    """CPUs this process may run on (the worker processes data stages fork)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` (fsynced) only on success."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name; swap it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _to_jsonable(obj: Any) -> Any:
    return obj.model_dump(mode="json", exclude_none=True) if isinstance(obj, BaseModel) else obj


def write_json(path: str | Path, data: Any) -> Path:
    with atomic_open(path) as fh:
        json.dump(_to_jsonable(data), fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    return Path(path)


# orjson writes some floats differently from the json module: exponent forms (1e-05 as 0.00001, 1e+16 as
# 1e16, 1.5e-07 as 1.5e-7) and inf/nan (as null, where the json module writes Infinity/NaN). A line that
# may hold one is written by the json module instead, so files stay byte-identical to what it writes.
# (Substring tests: a regex scan costs more than orjson saves; a false alarm only costs speed.)
_ORJSON_FLOAT_MARKS = (b"0.0000", b"e1", b"e2", b"e3", b"null", *(b"e-%d" % d for d in range(1, 10)))


def jsonl_line(rec: Any) -> bytes:
    """One JSON line (keys sorted, compact, UTF-8), byte for byte what ``json.dumps(..., sort_keys=True,
    ensure_ascii=False, separators=(",", ":"))`` writes. Pydantic records go through orjson (~3.5x faster),
    anything else through the json module."""
    data = _to_jsonable(rec)
    if isinstance(rec, BaseModel):
        try:
            line = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # what orjson refuses (integers beyond 64 bits): the json module writes it
            pass
        else:
            if not any(mark in line for mark in _ORJSON_FLOAT_MARKS):
                return line + b"\n"
    return (json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            + "\n").encode("utf-8")


def write_jsonl(path: str | Path, records: Iterable[Any]) -> int:
    """Write records (dicts or Pydantic models) as JSON lines, atomically, as they come (an iterator is
    never held in memory); returns the count."""
    n = 0
    with atomic_open(path, "wb") as fh:
        for rec in records:
            fh.write(jsonl_line(rec))
            n += 1
    return n


def describe_invalid(exc: Exception) -> str:
    """One line saying what is wrong with a record: the first failing field, or the JSON error."""
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "record"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return f"{where}: {err['msg']}{more}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    return " ".join(str(exc).split())


def loads_json(text: str | bytes) -> Any:
    """``json.loads``, through orjson (~3x faster) where it can: on what orjson refuses (NaN, integers
    beyond 64 bits, lone surrogates, bad JSON) the json module decides, with its own error message."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def iter_jsonl(path: str | Path, model: type[BaseModel] | None = None) -> Iterator:
    """Yield JSON lines one at a time (memory stays flat); a bad line raises ``InputDataError``
    naming the file and line number."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = loads_json(line)
                yield model.model_validate(obj) if model else obj
            except (ValueError, ValidationError) as exc:  # json or pydantic: report where
                raise InputDataError(f"{path}:{lineno}: invalid record: {describe_invalid(exc)}") from None


def read_jsonl(path: str | Path, model: type[BaseModel] | None = None) -> list:
    """Read JSON lines; a bad line raises ``InputDataError`` naming the file and line number."""
    return list(iter_jsonl(path, model))


def read_json(path: str | Path) -> Any:
    """Read one JSON document; a corrupt file raises ``InputDataError`` naming it."""
    try:
        return loads_json(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputDataError(f"{path}: {describe_invalid(exc)}") from None


# --------------------------------------------------------------------------- manifests


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_sha256(path: str | Path) -> str:
    """Hash of a file, or of a directory's relative paths and file contents."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def code_version() -> str:
    """The git commit of the code (with -dirty), or the package version outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=here, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        if rev:
            return rev
    except (OSError, subprocess.SubprocessError):
        pass
    from fitsense import __version__

    return __version__


def write_manifest(
    ctx: RunContext,
    stage: str,
    outputs: dict[str, str | Path],
    rows: dict[str, int] | None = None,
    extra: dict | None = None,
) -> dict:
    """Record a finished stage: output hashes, row counts, params hash, code version.

    Written last, so its presence means the stage completed.
    """
    stage_dir = ctx.stage_dir(stage)
    manifest = {
        "stage": stage,
        "run_id": ctx.run_id,
        "params_hash": ctx.params.section_hash(),
        "code_version": code_version(),
        "outputs": {
            name: {"path": str(Path(p).relative_to(stage_dir)) if Path(p).is_relative_to(stage_dir) else str(p),
                   "sha256": tree_sha256(p)}
            for name, p in outputs.items()
        },
        "rows": rows or {},
        **(extra or {}),
    }
    write_json(stage_dir / MANIFEST, manifest)
    return manifest
