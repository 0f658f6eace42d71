#!/usr/bin/env bash
# Assembles a Hugging Face Space of the playground in OUT (default dist/space): spaces/app.py, the
# Space card (its config: the Gradio SDK at the version installed here), the package with its
# demo assets unpacked from a wheel of this checkout (the Space imports it from its own folder),
# and requirements.txt with the package's dependencies. Upload OUT as a Gradio Space.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-dist/space}"
PY="${PYTHON:-.venv/bin/python}"
rm -rf "$OUT" && mkdir -p "$OUT"
WHEELS="$(mktemp -d)"
trap 'rm -rf "$WHEELS"' EXIT
"$PY" -m pip wheel -q --no-deps -w "$WHEELS" .
"$PY" -m zipfile -e "$WHEELS"/hf_sae_steer-*.whl "$WHEELS/unpacked"
cp -r "$WHEELS/unpacked/hf_sae_steer" "$OUT/"
cp spaces/app.py "$OUT/app.py"
"$PY" - "$OUT" <<'PYTHON'
import sys, tomllib
from pathlib import Path

import gradio

out = Path(sys.argv[1])
card = Path("spaces/README.md").read_text().replace("GRADIO_VERSION", gradio.__version__)
(out / "README.md").write_text(card)
deps = tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]
# gradio itself comes with the Space's SDK (sdk_version in the card)
(out / "requirements.txt").write_text("\n".join(deps) + "\n")
print(f"Space in {out}: app.py, README.md (gradio {gradio.__version__}), requirements.txt, "
      "hf_sae_steer/ with the demo assets")
PYTHON
