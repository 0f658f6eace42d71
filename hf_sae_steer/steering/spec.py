"""A steering spec (``SteeringSpec``: one SAE at one site with one method) and how it resolves
against a model: the site, the method, strength and preserve_error the artifact recommends, the
intervention it becomes. Nothing here registers a hook."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from hf_sae_steer.models import hidden_size
from hf_sae_steer.sae.base import SAE, SparseCode
from hf_sae_steer.scores.compatibility import check_compatible
from hf_sae_steer.scores.record import FeatureScores, load_scores
from hf_sae_steer.sites.layouts import ModelLayout
from hf_sae_steer.sites.names import Site, SiteKind
from hf_sae_steer.sites.resolve import resolve_site
from hf_sae_steer.steering.interventions import Intervention, LatentEdit
from hf_sae_steer.steering.names import (
    AWAY_METHODS,
    DIRECTIONS,
    POSITIONS,
    Direction,
    Method,
    Positions,
)
from hf_sae_steer.steering.strength import calibrated_strength, fluency_strength
from hf_sae_steer.steering.suppression import TopicLatents

Scores = FeatureScores | Tensor | str | Path
# Latents to add, with their weights: {latent: weight}, (latents, weights), or a SparseCode.
LatentsLike = Mapping[int, float] | tuple[Sequence[int], Sequence[float]] | SparseCode


@dataclass
class SteeringSpec:
    """One steered site: an SAE at ``(layer, site)`` applying ``method`` with ``scores``.

    ``layer``/``site`` default to the score artifact's, then to where the SAE was trained
    (:func:`~hf_sae_steer.sites.resolve.resolve_site`). ``scores`` is a
    :class:`FeatureScores`, a per-latent tensor, or a path / Hub id of a score artifact.

    Left as ``None``, ``method``, ``strength`` and ``preserve_error`` come from the artifact's
    recommended steering (``FeatureScores.recommended``); without one the method is ``swap``,
    the reference's, at strength 1. ``strength="calibrated"`` takes the strength the artifact's
    fluency calibration chose (its recommended additive method; ``docs/method.md`` §6).
    ``add`` and ``vector`` without a strength get the strength of
    the default norm fraction (``docs/method.md`` §6). ``clamp_value=None`` raises each clamped
    latent by its typical activation when the artifact records them, else by the reference's
    10. ``latents`` (for ``add``) and ``vector`` (for ``vector``) override the artifact's.
    ``sae`` may be ``None`` for ``vector``, which needs no SAE.
    """

    sae: SAE | None
    layer: int | None = None
    site: SiteKind | None = None
    method: Method | None = None
    scores: Scores | None = None
    strength: float | Literal["calibrated"] | None = None
    preserve_error: bool | None = None
    edits: Sequence[LatentEdit] = field(default_factory=tuple)
    positions: Positions = "all"
    clamp_k: int = 5
    clamp_value: float | None = None
    latents: LatentsLike | None = None
    vector: Tensor | None = None
    allow_score_mismatch: bool = False
    direction: Direction = "toward"


SpecLike = SteeringSpec | Mapping[str, Any] | Sequence[Any]


def as_spec(item: SpecLike) -> SteeringSpec:
    """A :class:`SteeringSpec` from itself, a dict of its fields, or a tuple
    ``(sae, layer, site[, method[, {options}]])`` (the field order of SteeringSpec)."""
    if isinstance(item, SteeringSpec):
        return item
    if isinstance(item, Mapping):
        return SteeringSpec(**item)
    if isinstance(item, tuple | list) and 3 <= len(item) <= 5:
        sae, layer, site, *rest = item
        method = rest[0] if rest else "swap"
        options = rest[1] if len(rest) > 1 else {}
        return SteeringSpec(sae=sae, layer=layer, site=site, method=method, **options)
    raise TypeError(
        f"Cannot read a steering spec from {type(item).__name__}; pass SteeringSpec(...), a dict "
        "of its fields, or a tuple (sae, layer, site[, method[, {options}]])."
    )


def resolve_spec(
    spec: SteeringSpec, model: nn.Module, layout: ModelLayout
) -> tuple[Site, Intervention]:
    """Validate one spec against the model; build its intervention. Registers nothing."""
    sae = spec.sae
    if sae is not None and not isinstance(sae, SAE):
        raise TypeError(
            f"sae must be an hf_sae_steer SAE (from load_sae), got {type(sae).__name__}."
        )
    scores = spec.scores
    if isinstance(scores, str | Path):
        scores = load_scores(scores)
    artifact = scores if isinstance(scores, FeatureScores) else None
    if artifact is not None and sae is not None:
        check_compatible(artifact, sae, allow_mismatch=spec.allow_score_mismatch)
    trained = sae.cfg if sae is not None else None
    site = resolve_site(layout, spec.layer, spec.site, scores=artifact, trained=trained)
    if spec.positions not in POSITIONS:
        raise ValueError(
            f"Unknown positions {spec.positions!r}; use one of {', '.join(POSITIONS)}."
        )
    if spec.direction not in DIRECTIONS:
        raise ValueError(
            f"Unknown direction {spec.direction!r}; use one of {', '.join(DIRECTIONS)}."
        )
    if spec.direction == "away":
        method, strength, preserve_error = _choose_away(spec, artifact)
    else:
        method, strength, preserve_error = _choose(spec, artifact)
    latents = _as_latents(spec.latents) if spec.latents is not None else None
    if latents is None and artifact is not None and artifact.latent_weights() is not None:
        latents = SparseCode(*artifact.latent_weights())
    vector = spec.vector
    if vector is None and artifact is not None:
        vector = artifact.stats.get("delta_raw")
    width = hidden_size(model)
    d_in = sae.d_in if sae is not None else (None if vector is None else vector.numel())
    if width is not None and d_in is not None and d_in != width:
        raise ValueError(
            f"SAE width d_in={d_in} does not match the model's hidden size {width}: this SAE "
            "was trained on another model. Load an SAE for this model."
        )
    step = Intervention(
        sae,
        method,
        artifact.scores if artifact is not None else scores,
        strength=1.0 if strength is None else strength,
        preserve_error=preserve_error,
        edits=spec.edits,
        clamp_k=spec.clamp_k,
        clamp_value=spec.clamp_value,
        typical=None if artifact is None else artifact.stats.get("typical_activation"),
        latents=latents,
        vector=vector,
        topic=_topic_latents(artifact, method),
    )
    if strength is None:  # add / vector without a strength: the default norm fraction
        given = spec.latents is not None or spec.vector is not None
        step.strength = Intervention.check_strength(
            1.0 if given else calibrated_strength(step, artifact)
        )
    step.strength = signed_strength(spec.direction, method, step.strength)
    block = layout.blocks[site.layer]
    param = next((p for p in block.parameters() if p.device.type != "meta"), None)
    if param is not None and param.is_floating_point():
        step.place(param.device, param.dtype)  # beside its block (device_map="auto" too)
    return site, step


def signed_strength(direction: str, method: str, strength: float) -> float:
    """The strength an intervention applies: ``vector`` away from a topic subtracts it (CAA
    subtraction, ``x - s v``); every other method carries its direction in what it does."""
    return -strength if direction == "away" and method == "vector" else strength


def _choose(
    spec: SteeringSpec, artifact: FeatureScores | None
) -> tuple[Method, float | None, bool]:
    """Method, strength (``None``: calibrate it) and preserve_error of a spec: what it says,
    else the artifact's recommendation when the spec asks for that steering, else defaults."""
    rec = artifact.recommended if artifact is not None else None
    method = spec.method or (rec["method"] if rec else "swap")
    as_recommended = (
        rec is not None
        and method == rec["method"]
        and spec.clamp_value is None
        and spec.latents is None
        and spec.vector is None
    )
    if spec.strength == "calibrated":
        strength: float | None = fluency_strength(method, artifact)
    elif spec.strength is not None:
        strength = float(spec.strength)
    elif as_recommended:
        strength = float(rec["strength"])  # type: ignore[index]
    else:
        strength = None if method in ("add", "vector") else 1.0
    if spec.preserve_error is not None:
        preserve_error = bool(spec.preserve_error)
    elif as_recommended:
        preserve_error = bool(rec["preserve_error"])  # type: ignore[index]
    else:
        preserve_error = method == "add"  # additive: x plus a change, the error kept
    return method, strength, preserve_error


def _choose_away(
    spec: SteeringSpec, artifact: FeatureScores | None
) -> tuple[Method, float | None, bool]:
    """Method and strength of a spec steering away (``docs/method.md`` §9): what it says, else
    the artifact's recommended suppression, else ``suppress`` at 1 (the topic's latents zeroed
    where they fire) when the artifact records its topic latents, else ``ablate`` at 1."""
    rec = artifact.recommended_away if artifact is not None else None
    fallback: Method = "suppress" if _topic_latents(artifact) is not None else "ablate"
    method = spec.method or (rec.method if rec is not None else fallback)
    if method not in AWAY_METHODS:
        raise ValueError(
            f"direction='away' steers with {', '.join(AWAY_METHODS)}, not {method!r} (which "
            "writes a topic in). Leave method unset for the scores' recommended suppression."
        )
    as_recommended = rec is not None and method == rec.method and spec.vector is None
    if spec.strength == "calibrated":
        away = artifact.calibration.away if artifact is not None else None
        if away is None or away.method != method:
            raise ValueError(
                f'strength="calibrated" needs a calibration of {method!r} away from the topic, '
                "and these scores have none: give a number (1 removes the topic's part fully)."
            )
        strength: float | None = float(away.strength)
    elif spec.strength is not None:
        strength = float(spec.strength)
    elif as_recommended:
        strength = float(rec.strength)  # type: ignore[union-attr]
    else:
        strength = None if method == "vector" else 1.0
    return method, strength, True


def _topic_latents(artifact: FeatureScores | None, method: str = "suppress") -> TopicLatents | None:
    """What ``suppress`` attenuates, or the posterior that gates ``attenuate``, as recorded."""
    if artifact is None or method not in ("suppress", "attenuate"):
        return None
    found = artifact.topic_gate() if method == "attenuate" else artifact.topic_latents()
    if found is None:
        return None
    indices, log_odds, bias = found
    return TopicLatents(indices, log_odds, bias)


def _as_latents(value: LatentsLike) -> SparseCode:
    if isinstance(value, SparseCode):
        return value
    if isinstance(value, Mapping):
        return SparseCode(torch.tensor(list(value.keys())), torch.tensor(list(value.values())))
    if isinstance(value, tuple | list) and len(value) == 2:
        return SparseCode(torch.as_tensor(value[0]), torch.as_tensor(value[1]))
    raise TypeError(
        "latents= takes {latent: weight}, (latents, weights) or a SparseCode, got "
        f"{type(value).__name__}."
    )


