"""The score record, :class:`FeatureScores`: per-latent scores, where they came from, their
uncertainty report, and their artifact (a folder, local or on the Hub, or the reference's CSV).

It holds data and reads and writes it, and runs no algorithm: fitting lives above it, in
:mod:`hf_sae_steer.scoring.fit`. An artifact folder holds ``scores.safetensors`` (scores and
per-latent statistics), ``steering_config.json`` (provenance) and a ``README.md`` model card.
Nothing is ever unpickled.

>>> scores.save_pretrained("out/medical-gpt2-l9")                      # doctest: +SKIP
>>> scores = FeatureScores.from_pretrained("out/medical-gpt2-l9")  # or "owner/repo"
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from hf_sae_steer._version import __version__
from hf_sae_steer.folders import write_folder
from hf_sae_steer.scores.artifact_checks import (
    FORMAT,
    FORMAT_VERSION,
    check_tensors,
    read_config,
)
from hf_sae_steer.scores.card import CARD_FILE, HUB_ID, model_card, portable_name
from hf_sae_steer.scores.csv_scores import read_score_csv
from hf_sae_steer.scores.effect import SteeringEffect
from hf_sae_steer.scores.recommendation import AwayCalibration, Calibration, Recommendation
from hf_sae_steer.scores.uncertainty import TOP_K, ScoreReport, build_report

SCORES_FILE = "scores.safetensors"
CONFIG_FILE = "steering_config.json"


@dataclass(repr=False)
class FeatureScores:
    """Per-latent scores in [0, 1] for one SAE at one site, with where they came from.

    ``rule`` is the selection rule that made them (``None``: imported, or from before rules).
    ``recommended`` is the steering the rule's scores are meant for (method, strength,
    preserve_error; ``SteeredModel`` uses it when no method is given). ``calibration`` holds
    the mean hidden-state norms that turn norm fractions into strengths. ``stats`` holds
    per-latent statistics (``typical_activation``, fire counts) and the rule's tensors (for
    ``mean_diff``: ``latents``, ``weights``, ``delta``, ``delta_raw``). ``effect`` is what the
    recommended steering does in words (the tokens it raises and lowers most, measured when it
    was fitted; ``None`` for artifacts from before, or imported).
    """

    scores: Tensor
    coverage: float
    layer: int | None = None
    site: str | None = None
    summary: str | None = None
    sae_fingerprint: str | None = None
    sae_spec: str | None = None
    model_id: str | None = None
    embedder: str | None = None
    reference_size: int | None = None
    reference_hash: str | None = None
    alignment_size: int | None = None
    alignment_hash: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)
    quality: ScoreReport | None = None
    rule: str | None = None
    recommended: Recommendation | None = None
    calibration: Calibration = field(default_factory=Calibration)
    effect: SteeringEffect | None = None
    recommended_away: Recommendation | None = None

    def __post_init__(self) -> None:
        self.scores = torch.as_tensor(self.scores, dtype=torch.float32).detach().cpu().flatten()
        self.coverage = float(self.coverage)
        self.recommended = Recommendation.from_json(self.recommended)
        self.recommended_away = Recommendation.from_json(self.recommended_away)
        self.calibration = Calibration.from_json(self.calibration)
        if isinstance(self.effect, dict):
            self.effect = SteeringEffect.from_dict(self.effect)

    @property
    def d_sae(self) -> int:
        return self.scores.numel()

    def __repr__(self) -> str:
        where = f"layer={self.layer}, site={self.site}, " if self.layer is not None else ""
        return (
            f"FeatureScores(d_sae={self.d_sae}, {where}summary={self.summary}, "
            f"coverage={self.coverage:.3f}, sae_fingerprint={self.sae_fingerprint})"
        )

    def report(self) -> ScoreReport:
        """Coverage, FVU, top latents firing on the alignment set, effective latents, warnings;
        and what the recommended steering does in words, when the artifact records it."""
        report = self.quality or build_report(
            self.scores, self.coverage, None, self.stats.get("align_fire_counts")
        )
        return replace(report, effect=self.effect, steering=self._steering_lines())

    def _steering_lines(self) -> list[str]:
        """The recommended steering towards the topic and the recommended suppression."""
        lines = []
        for label, rec in (("toward", self.recommended), ("away", self.recommended_away)):
            if rec is not None:
                lines.append(
                    f"steer {label:<13}{rec.method} at strength {rec.strength:.3g}"
                    f"{' (calibrated)' if rec.calibrated else ''}: {rec.why}"
                )
        away = self.calibration.away
        if away is not None:
            points = ", ".join(
                f"{p['strength']:g}: {AwayCalibration.describe_point(p)}" for p in away.curve
                if AwayCalibration.neutral_ratio_of(p) is not None
            )
            lines.append(f"away curve         {points}")
        return lines

    def latent_weights(self) -> tuple[Tensor, Tensor] | None:
        """``(latents, weights)`` chosen by a rule that picks latents (``mean_diff``), else None."""
        if "latents" in self.stats and "weights" in self.stats:
            return self.stats["latents"].long(), self.stats["weights"].float()
        return None

    def topic_latents(self) -> tuple[Tensor, Tensor | None, float | None] | None:
        """``(latents, log_odds, bias)`` ``suppress`` attenuates (``docs/method.md`` §9): the
        latents that carry the topic's activation, and the posterior that gates them (``None``
        when ungated); ``None`` for artifacts from before 0.4."""
        return self._recorded_latents("away")

    def topic_gate(self) -> tuple[Tensor, Tensor | None, float | None] | None:
        """``(latents, log_odds, bias)`` of the posterior that gates ``attenuate``: the latents
        most specific to the topic; ``None`` for artifacts without it."""
        return self._recorded_latents("away_gate")

    def _recorded_latents(self, name: str) -> tuple[Tensor, Tensor | None, float | None] | None:
        if f"{name}_latents" not in self.stats:
            return None
        odds, bias = self.stats.get(f"{name}_log_odds"), self.stats.get(f"{name}_bias")
        return (
            self.stats[f"{name}_latents"].long(),
            None if odds is None else odds.float(),
            None if bias is None else float(bias.flatten()[0]),
        )

    def top_latents(self, k: int = TOP_K) -> Tensor:
        """Indices of the ``k`` highest-scoring latents, best first."""
        return torch.topk(self.scores, min(k, self.d_sae)).indices

    # -- the artifact --------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """The JSON side of the artifact: provenance, options, the uncertainty report and (when
        measured) the effect in words (local paths by their last component:
        :func:`~hf_sae_steer.scores.card.portable_name`)."""
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "model_id": portable_name(self.model_id),
            "sae": {
                "spec": portable_name(self.sae_spec),
                "fingerprint": self.sae_fingerprint,
                "d_sae": self.d_sae,
            },
            "layer": self.layer,
            "site": self.site,
            "rule": self.rule,
            "recommended": None if self.recommended is None else self.recommended.to_json(),
            "calibration": self.calibration.to_json(),
            "summary": self.summary,
            "embedder": portable_name(self.embedder),
            "coverage": self.coverage,
            "reference": {"size": self.reference_size, "hash": self.reference_hash},
            "alignment": {"size": self.alignment_size, "hash": self.alignment_hash},
            "options": self.options,
            "report": _finite(self.report().to_dict()),
        }
        if self.recommended_away is not None:  # absent, not null, like the effect
            config["recommended_away"] = self.recommended_away.to_json()
        if self.effect is not None:  # absent, not null: older artifacts write as they did
            config["effect"] = _finite(self.effect.to_dict())
        return config

    def save_pretrained(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the artifact folder ``path`` atomically; returns it.

        ``path`` must be new, empty or an earlier artifact; a folder with other files (a model,
        your own README) is refused unless ``overwrite=True``, which writes beside them and keeps
        them all (your own README.md too: the artifact then goes without its model card).
        """
        tensors = {"scores": self.scores}
        for name, value in self.stats.items():
            if name == "scores":
                raise ValueError("A per-latent statistic may not be called 'scores'.")
            tensors[name] = value.detach().cpu()

        def write(folder: Path) -> None:
            save_file({k: v.contiguous() for k, v in tensors.items()}, folder / SCORES_FILE)
            config = self.to_config()
            config["scores_sha256"] = _sha256(folder / SCORES_FILE)
            text = json.dumps(config, indent=2, allow_nan=False) + "\n"
            (folder / CONFIG_FILE).write_text(text, encoding="utf-8")
            (folder / CARD_FILE).write_text(model_card(config), encoding="utf-8")

        return write_folder(
            path, ARTIFACT_FILES, write, overwrite=overwrite, is_ours=is_artifact,
            optional=(CARD_FILE,),
        )  # fmt: skip

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str = "Upload feature scores with hf_sae_steer",
        create_pr: bool = False,
    ) -> Any:
        """Create ``repo_id`` (if needed) and upload the artifact folder; returns the commit."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, overwrite=True)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                allow_patterns=list(ARTIFACT_FILES),  # not the folder's hidden manifest
                repo_type="model",
                revision=revision,
                commit_message=commit_message,
                create_pr=create_pr,
            )

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | Path, revision: str | None = None
    ) -> FeatureScores:
        """Load an artifact from a folder or a Hub repo (``HF_HUB_OFFLINE=1`` uses the cache)."""
        folder = _resolve(path_or_repo_id, revision)
        config = read_config(folder / CONFIG_FILE)
        expected = config.get("scores_sha256")
        if expected is not None and expected != _sha256(folder / SCORES_FILE):
            raise ValueError(
                f"{folder} is inconsistent: {SCORES_FILE} is not the file {CONFIG_FILE} was "
                "written with (an interrupted, mixed or still-being-written copy?). Write the "
                "artifact again, or load it once its writer is done."
            )
        try:
            tensors = load_file(folder / SCORES_FILE)
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{folder / SCORES_FILE} is corrupt: {error}") from None
        scores = tensors.pop("scores", None)
        d_sae = config["sae"].get("d_sae")
        if scores is None or scores.ndim != 1 or (d_sae is not None and scores.numel() != d_sae):
            raise ValueError(
                f"{folder / SCORES_FILE} lacks a 1-D 'scores' tensor of d_sae={d_sae}."
            )
        if not torch.isfinite(scores).all():
            raise ValueError(f"{folder / SCORES_FILE} holds non-finite scores.")
        check_tensors(folder / SCORES_FILE, tensors, scores.numel())
        report = config.get("report")
        try:
            quality = ScoreReport.from_dict(report) if report else None
        except TypeError as error:
            raise ValueError(f"{folder / CONFIG_FILE}: 'report' is incomplete: {error}") from None
        return cls(
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
            quality=quality,
            rule=config.get("rule"),
            recommended=config.get("recommended"),
            recommended_away=config.get("recommended_away"),
            calibration=config.get("calibration") or {},
            effect=SteeringEffect.from_dict(config["effect"]) if config.get("effect") else None,
        )

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        *,
        layer: int | None = None,
        site: str | None = None,
        sae_spec: str | None = None,
        sae_fingerprint: str | None = None,
        model_id: str | None = None,
        summary: str | None = None,
    ) -> FeatureScores:
        """Import the reference demo's scores CSV (an index column and one score column).

        An empty (or ``nan``) cell is a latent that never fired: its score is 0 and it does not
        count towards coverage. The keyword arguments record what the CSV does not say.
        """
        scores, coverage, column = read_score_csv(path)
        return cls(
            scores=scores,
            coverage=coverage,
            layer=layer,
            site=site,
            summary=summary,
            sae_fingerprint=sae_fingerprint,
            sae_spec=sae_spec,
            model_id=model_id,
            options={"source": Path(path).name, "column": column},
        )


def load_scores(spec: str | Path, revision: str | None = None) -> FeatureScores:
    """Scores from an artifact folder, a Hub repo id, or the reference demo's CSV format."""
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise FileNotFoundError(f"Scores file {path} does not exist.")
        return FeatureScores.from_csv(path)
    if path.exists() or str(spec).startswith((".", "/", "~")):
        if not path.is_dir():
            raise FileNotFoundError(f"Scores folder {path} does not exist.")
        return FeatureScores.from_pretrained(path)
    return FeatureScores.from_pretrained(str(spec), revision=revision)


def _resolve(path_or_repo_id: str | Path, revision: str | None) -> Path:
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    if isinstance(path_or_repo_id, Path) or path.exists() or not HUB_ID.match(text):
        raise FileNotFoundError(
            f"{text!r} is neither an artifact folder nor a Hub repo id ('owner/name')."
        )
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            text,
            revision=revision,
            allow_patterns=[SCORES_FILE, CONFIG_FILE, CARD_FILE],
            library_name="hf_sae_steer",
            library_version=__version__,
        )
    )


ARTIFACT_FILES = (SCORES_FILE, CONFIG_FILE, CARD_FILE)


def is_artifact(folder: Path) -> bool:
    """Whether ``folder`` holds a score artifact of ours (its config says so)."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _finite(data: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_finite(v) for v in data]
    return data
