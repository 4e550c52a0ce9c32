#!/usr/bin/env bash
# Install (if needed) and run the whole pipeline end to end on the embedded defaults:
# synthetic data -> queries -> offline teacher -> dataset -> quality gate ->
# LoRA training of the bundled SmolLM2-135M student -> evaluation -> MLflow registry.
# Extra args go to `fitsense run` (e.g. --run-id demo --set training.max_steps=10).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
fitsense run "$@"
