#!/usr/bin/env bash
# Install (if needed) and run the whole test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The PostgreSQL loader test runs against a scratch server when this machine has PostgreSQL
# (or against FITSENSE_TEST_POSTGRES_URL if set); otherwise it is skipped.
if [ -z "${FITSENSE_TEST_POSTGRES_URL:-}" ]; then
  . scripts/scratch-postgres.sh
fi
python -m pytest "$@"
