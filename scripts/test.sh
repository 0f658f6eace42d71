#!/usr/bin/env bash
# Sets up .venv if needed, then runs ruff and the test suite (offline; no GPU, no Hub).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m ruff check hf_sae_steer tests scripts
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
