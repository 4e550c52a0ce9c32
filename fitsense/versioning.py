"""Where a run's data is versioned: the project's git commit and the DVC lock entries of its outputs.

A run's outputs are versioned when they are recorded in the DVC project's
``dvc.lock`` (by ``dvc repro``, or by ``fitsense run`` and the Airflow DAG for
the DVC pipeline's run) and the lock is committed to git: then
``git checkout <commit> && dvc pull <path>`` restores them on any clone.
DVC is imported lazily (it takes about a second).
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Iterable

LOCK_FILE = "dvc.lock"


def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def open_repo(root: str | Path):
    """``dvc.repo.Repo`` for ``root``, with DVC's own console logging (INFO to stdout) turned off:
    our logs go to stderr, stdout is a command's result; DVC's warnings still reach our handler."""
    from dvc.repo import Repo

    dvc_log = logging.getLogger("dvc")
    dvc_log.handlers.clear()
    dvc_log.setLevel(logging.WARNING)
    return Repo(str(root))


def dvc_project_root(start: str | Path = ".") -> Path | None:
    """The DVC project (a folder with ``.dvc/`` and ``dvc.yaml``) that contains ``start``, or None."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        root = Path(Repo.find_root(str(Path(start).resolve())))
    except NotDvcRepoError:
        return None
    return root if (root / "dvc.yaml").is_file() else None


def git_commit(root: str | Path = ".") -> str:
    """The full commit ID of HEAD in the git repository around ``root`` ('' outside git)."""
    return _git(Path(root), "rev-parse", "HEAD")


def commit_recording(root: str | Path, dvc_hash: str) -> str:
    """The first git commit whose ``dvc.lock`` records ``dvc_hash`` ('' when none does yet)."""
    found = _git(Path(root), "log", "--all", "--format=%H", "--reverse", "-S", dvc_hash, "--", LOCK_FILE)
    return found.splitlines()[0] if found else ""


def locked_outputs(root: Path, stages: Iterable[str]) -> dict[str, str]:
    """``{output path relative to root: DVC hash}`` of the stages' outputs that ``dvc.lock`` records
    and whose workspace content is still what it records (an output changed since is left out)."""
    found: dict[str, str] = {}
    with open_repo(root) as repo:
        for name in stages:
            for stage in repo.stage.collect(name):
                for out in stage.outs:
                    if out.hash_info and out.hash_info.value and not out.workspace_status():
                        found[os.path.relpath(out.fs_path, root)] = out.hash_info.value
    return found
