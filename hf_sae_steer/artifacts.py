"""Score artifacts: a folder (local or on the Hub), the reference demo's CSV, and the SAE check.

A folder holds ``scores.safetensors`` (the scores and per-latent statistics),
``steering_config.json`` (where the scores came from) and a ``README.md`` model card. Nothing is
ever unpickled: tensors come from safetensors, everything else from JSON or CSV.

>>> scores.save_pretrained("out/medical-gpt2-l9")
>>> scores = FeatureScores.from_pretrained("out/medical-gpt2-l9")  # or "owner/repo"
"""

from __future__ import annotations

import csv
import json
import math
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hf_sae_steer.report import ScoreReport
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scoring import FeatureScores

SCORES_FILE = "scores.safetensors"
CONFIG_FILE = "steering_config.json"
CARD_FILE = "README.md"
FORMAT = "hf_sae_steer/feature_scores"
FORMAT_VERSION = 1
TAGS = ("hf_sae_steer", "sparse-autoencoder", "sae", "steering", "feature-scores")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def to_config(scores: FeatureScores) -> dict[str, Any]:
    """The JSON side of an artifact: provenance, options and the uncertainty report."""
    from hf_sae_steer import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "model_id": scores.model_id,
        "sae": {
            "spec": scores.sae_spec,
            "fingerprint": scores.sae_fingerprint,
            "d_sae": scores.d_sae,
        },
        "layer": scores.layer,
        "site": scores.site,
        "summary": scores.summary,
        "embedder": scores.embedder,
        "coverage": scores.coverage,
        "reference": {"size": scores.reference_size, "hash": scores.reference_hash},
        "alignment": {"size": scores.alignment_size, "hash": scores.alignment_hash},
        "options": scores.options,
        "report": _finite(scores.report().to_dict()),
    }


def save_pretrained(scores: FeatureScores, path: str | Path) -> Path:
    """Write the artifact folder ``path``; returns it."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"scores": scores.scores}
    for name, value in scores.stats.items():
        if name == "scores":
            raise ValueError("A per-latent statistic may not be called 'scores'.")
        tensors[name] = value.detach().cpu()
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / SCORES_FILE)
    config = to_config(scores)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, allow_nan=False) + "\n")
    (folder / CARD_FILE).write_text(model_card(config))
    return folder


def from_pretrained(path_or_repo_id: str | Path, revision: str | None = None) -> FeatureScores:
    """Load an artifact from a local folder or a Hub repo (``HF_HUB_OFFLINE=1`` uses the cache)."""
    folder = _resolve(path_or_repo_id, revision)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}: not a FeatureScores artifact.")
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{config_path} is not a FeatureScores artifact (format {FORMAT!r}).")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{config_path} has format version {config['format_version']}; this hf_sae_steer "
            f"reads up to {FORMAT_VERSION}. Upgrade hf_sae_steer."
        )
    tensors = load_file(folder / SCORES_FILE)
    scores = tensors.pop("scores", None)
    d_sae = config["sae"].get("d_sae")
    if scores is None or scores.ndim != 1 or (d_sae is not None and scores.numel() != d_sae):
        raise ValueError(f"{folder / SCORES_FILE} lacks a 1-D 'scores' tensor of d_sae={d_sae}.")
    if not torch.isfinite(scores).all():
        raise ValueError(f"{folder / SCORES_FILE} holds non-finite scores.")
    return FeatureScores(
        scores=scores,
        coverage=config["coverage"],
        layer=config.get("layer"),
        site=config.get("site"),
        summary=config.get("summary"),
        sae_fingerprint=config["sae"].get("fingerprint"),
        sae_spec=config["sae"].get("spec"),
        model_id=config.get("model_id"),
        embedder=config.get("embedder"),
        reference_size=config.get("reference", {}).get("size"),
        reference_hash=config.get("reference", {}).get("hash"),
        alignment_size=config.get("alignment", {}).get("size"),
        alignment_hash=config.get("alignment", {}).get("hash"),
        options=config.get("options", {}),
        stats=tensors,
        quality=ScoreReport.from_dict(config["report"]) if config.get("report") else None,
    )


def push_to_hub(
    scores: FeatureScores,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload feature scores with hf_sae_steer",
    create_pr: bool = False,
) -> Any:
    """Create ``repo_id`` (if needed) and upload the artifact folder; returns the commit info."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(scores, tmp)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
        )


def from_csv(
    path: str | Path,
    *,
    layer: int | None = None,
    site: str | None = None,
    sae_spec: str | None = None,
    sae_fingerprint: str | None = None,
    model_id: str | None = None,
    summary: str | None = None,
) -> FeatureScores:
    """Import the reference demo's scores CSV: an index column and one score column.

    An empty (or ``nan``) cell is a latent that never fired: its score is 0 and it does not
    count towards coverage. The keyword arguments record what the CSV does not say.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or len(rows[0]) != 2:
        header = rows[0] if rows else []
        raise ValueError(
            f"{path} should have an index column and one score column; its header is {header}."
        )
    values: dict[int, float] = {}
    fired: dict[int, bool] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise ValueError(f"{path}, line {line}: expected 2 cells, got {len(row)}.")
        try:
            index = int(row[0])
        except ValueError:
            raise ValueError(f"{path}, line {line}: index {row[0]!r} is not an integer.") from None
        if index in values:
            raise ValueError(f"{path}, line {line}: latent {index} appears twice.")
        cell = row[1].strip()
        empty = cell == "" or cell.lower() == "nan"
        value = 0.0 if empty else _parse_score(cell, path, line)
        values[index], fired[index] = value, not empty
    n = len(values)
    if n == 0 or sorted(values) != list(range(n)):
        raise ValueError(f"{path}: the index column should hold 0..{n - 1}, each once.")
    scores = torch.tensor([values[i] for i in range(n)], dtype=torch.float32)
    coverage = sum(fired.values()) / n
    return FeatureScores(
        scores=scores,
        coverage=coverage,
        layer=layer,
        site=site,
        summary=summary,
        sae_fingerprint=sae_fingerprint,
        sae_spec=sae_spec,
        model_id=model_id,
        options={"source": path.name, "column": rows[0][1]},
    )


def check_compatible(scores: Any, sae: SAE, allow_mismatch: bool = False) -> None:
    """Refuse scores computed for another SAE (a different width, or different weights).

    Scores without a fingerprint (imported from CSV) are only checked for width.
    """
    n = int(scores.scores.numel())
    if n != sae.d_sae:
        raise ValueError(
            f"These scores have {n} entries but the SAE has d_sae={sae.d_sae} latents: they belong "
            "to another SAE. Fit scores for this SAE with FeatureScores.fit (no override exists: "
            "the latents cannot be matched)."
        )
    expected = getattr(scores, "sae_fingerprint", None)
    if expected is None:
        return
    actual = sae.fingerprint()
    if expected != actual:
        fitted_on = getattr(scores, "sae_spec", None) or "spec unknown"
        message = (
            f"These scores were fitted on SAE {expected} ({fitted_on}), but the SAE in use has "
            f"fingerprint {actual} ({sae.cfg.spec or 'spec unknown'}): its latents may mean "
            "other things. Fit scores for this SAE, or pass allow_score_mismatch=True to "
            "SteeredModel (allow_mismatch=True to check_compatible) to steer anyway."
        )
        if not allow_mismatch:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)


def model_card(config: dict[str, Any]) -> str:
    """A README.md with YAML front matter (JSON strings are valid YAML scalars)."""
    front = ["---", "library_name: hf_sae_steer", "tags:"] + [f"- {t}" for t in TAGS]
    base = config.get("model_id")
    if isinstance(base, str) and _HUB_ID.match(base) and not Path(base).exists():
        front.append(f"base_model: {json.dumps(base)}")
    front.append("---")
    report = config["report"]
    where = f"layer {config['layer']}, site `{config['site']}`"
    rows: list[tuple[str, Any]] = [
        ("model", config.get("model_id")),
        ("SAE", f"{config['sae']['spec']} (fingerprint `{config['sae']['fingerprint']}`)"),
        ("hook", where),
        ("summary", config.get("summary")),
        ("embedder", config.get("embedder")),
        ("reference set", _count(config["reference"]["size"])),
        ("alignment set", _count(config["alignment"]["size"])),
        ("coverage", f"{config['coverage']:.3f}"),
        ("FVU on the alignment set", _fmt(report.get("fvu"))),
        (f"top-{report.get('top_k')} latents firing on it", report.get("top_firing")),
        ("effective latents (exp entropy)", f"{report.get('effective_latents', 0.0):.1f}"),
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
        f"sae = load_sae({json.dumps(config['sae']['spec'] or '<the SAE these scores fit>')})",
        'steered = SteeredModel(model, sae, method="swap", scores=scores)',
        "```",
    ]
    return "\n".join(front + body) + "\n"


def _resolve(path_or_repo_id: str | Path, revision: str | None) -> Path:
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    if isinstance(path_or_repo_id, Path) or path.exists() or not _HUB_ID.match(text):
        raise FileNotFoundError(
            f"{text!r} is neither an artifact folder nor a Hub repo id ('owner/name')."
        )
    from huggingface_hub import snapshot_download

    from hf_sae_steer import __version__

    return Path(
        snapshot_download(
            text,
            revision=revision,
            allow_patterns=[SCORES_FILE, CONFIG_FILE, CARD_FILE],
            library_name="hf_sae_steer",
            library_version=__version__,
        )
    )


def _parse_score(cell: str, path: Path, line: int) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise ValueError(f"{path}, line {line}: score {cell!r} is not a number.") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}, line {line}: score {cell!r} is not finite.")
    return value


def _count(size: int | None) -> str | None:
    return None if size is None else f"{size} prompts"


def _fmt(value: Any) -> Any:
    return f"{value:.3f}" if isinstance(value, float) else value


def _finite(data: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_finite(v) for v in data]
    return data
