"""Shared fixtures: a tiny student model built once per test session, small params."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with the real SmolLM2 tokenizer (seconds to build, MBs on disk)."""
    from tiny_model import build_tiny_model

    cache = Path(os.environ.get("FITSENSE_TEST_CACHE", REPO / ".cache" / "test"))
    return build_tiny_model(cache / "tiny-llama")
