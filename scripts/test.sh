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
# The distributed-Airflow test (tests/test_cluster.py) also needs Redis: as root, install it when missing
# (quietly; without a network the test is skipped).
if [ "$(id -u)" = 0 ] && ! command -v redis-server >/dev/null && command -v apt-get >/dev/null; then
  { timeout 120 apt-get update -qq -o Acquire::Retries=0 && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq redis-server; } \
    >/dev/null 2>&1 || echo "redis-server could not be installed (no network?): the cluster test will be skipped"
fi
python -m pytest "$@"
