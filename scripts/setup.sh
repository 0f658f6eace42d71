#!/usr/bin/env bash
# Creates .venv (Python 3.10+) with hf_sae_steer and its test extras; idempotent.
# torch is installed first as a CPU build so pip never pulls a multi-GB CUDA wheel by accident;
# set TORCH_SPEC (e.g. "torch==2.5.1") or install torch yourself to choose another build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), "hf_sae_steer needs Python 3.10+"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VPY" -c 'import torch' >/dev/null 2>&1; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    "$VPY" -m pip install -q "$TORCH_SPEC"
  else
    "$VPY" -m pip install -q --timeout 15 --retries 0 torch \
        --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
      || "$VPY" -m pip install -q torch==2.13.0 2>/dev/null \
      || "$VPY" -m pip install -q torch
  fi
fi
"$VPY" -m pip install -q -e ".[test]"
