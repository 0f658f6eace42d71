#!/usr/bin/env bash
# Sets up .venv if needed, then runs the offline demo on the assets in storage/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/hf-sae-steer demo "$@"
