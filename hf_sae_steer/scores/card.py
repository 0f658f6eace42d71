"""The model card (``README.md``) of a score artifact: YAML front matter and a summary table."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PureWindowsPath
from typing import Any

CARD_FILE = "README.md"
TAGS = ("hf_sae_steer", "sparse-autoencoder", "sae", "steering", "feature-scores")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
SCHEME = re.compile(r"^[A-Za-z][\w+.-]+:")  # openai:, saelens:, hf://, https://: not a path


def portable_name(spec: str | None) -> str | None:
    """What an artifact records of a model, SAE or embedder: a Hub id, a spec with a scheme or a
    relative path as it is; an absolute (or home- or dot-relative) local path by its last
    component (a card is shared; the folder it came from on one machine means nothing on
    another, and may say too much about it)."""
    if spec is None:
        return None
    text = str(spec)
    if SCHEME.match(text):
        return text
    # Relative paths are kept: they name no machine, and artifacts written before 0.4 (the
    # demo's "storage/demo/model") then load and save as they were.
    local = os.path.isabs(text) or text.startswith(("~", ".")) or "\\" in text
    if not local:
        return text
    name = PureWindowsPath(text.rstrip("/\\")).name if "\\" in text else Path(text).name
    return name or text


def model_card(config: dict[str, Any]) -> str:
    """A README.md with YAML front matter (JSON strings are valid YAML scalars)."""
    front = ["---", "library_name: hf_sae_steer", "tags:"] + [f"- {t}" for t in TAGS]
    base = config.get("model_id")
    if isinstance(base, str) and HUB_ID.match(base) and not Path(base).exists():
        front.append(f"base_model: {json.dumps(base)}")
    front.append("---")
    report = config["report"]
    where = f"layer {config['layer']}, site `{config['site']}`"
    rows: list[tuple[str, Any]] = [
        ("model", config.get("model_id")),
        ("SAE", f"{config['sae']['spec']} (fingerprint `{config['sae']['fingerprint']}`)"),
        ("hook", where),
        ("selection rule", config.get("rule")),
        ("recommended steering", _steering(config.get("recommended"))),
        ("summary", config.get("summary")),
        ("embedder", config.get("embedder")),
        ("reference set", _count(config["reference"]["size"])),
        ("alignment set", _count(config["alignment"]["size"])),
        ("coverage", f"{config['coverage']:.3f}"),
        ("FVU on the alignment set", _fmt(report.get("fvu"))),
        (f"top-{report.get('top_k')} latents firing on it", report.get("top_firing")),
        ("effective latents (exp entropy)", f"{report.get('effective_latents', 0.0):.1f}"),
        ("target direction explained", _share(report.get("delta_explained"))),
    ]
    body = [
        f"# Feature scores: {config.get('model_id')}, {where}",
        "",
        "Per-latent steering scores in [0, 1] for a sparse autoencoder, fitted with "
        f"[hf_sae_steer](https://pypi.org/project/hf-sae-steer/) {config['library_version']}.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {'unknown' if v is None else v} |" for k, v in rows],
        "",
        *[f"> Warning: {w}" for w in report.get("warnings", [])],
        "",
        "```python",
        "from hf_sae_steer import FeatureScores, SteeredModel, load_sae",
        "",
        'scores = FeatureScores.from_pretrained("<this repo>")',
        f"sae = load_sae({json.dumps(_loadable(config['sae']['spec']))})",
        "steered = SteeredModel(model, sae, scores=scores)  # the recommended steering",
        "```",
    ]
    return "\n".join(front + body) + "\n"


def _loadable(spec: str | None) -> str:
    """The SAE spec for the card's snippet: one with a scheme loads anywhere; a local folder's
    name (or nothing) does not."""
    return spec if spec and SCHEME.match(spec) else "<the SAE these scores fit>"


def _steering(rec: dict[str, Any] | None) -> str | None:
    if not rec:
        return None
    keep = ", preserve_error" if rec.get("preserve_error") else ""
    return f"`{rec['method']}` at strength {rec['strength']:.3g}{keep} ({rec.get('why', '')})"


def _share(value: float | None) -> str | None:
    return None if value is None else f"{value:.1%}"


def _count(size: int | None) -> str | None:
    return None if size is None else f"{size} prompts"


def _fmt(value: Any) -> Any:
    return f"{value:.3f}" if isinstance(value, float) else value
