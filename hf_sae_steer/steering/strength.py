"""Strength arithmetic: strengths that mean the same thing across SAEs, methods and models
(``docs/method.md`` §6).

The additive methods (``add``, ``clamp`` with ``preserve_error``, ``vector``) add a fixed vector
``u`` to every steered hidden state, times the strength. A strength is only meaningful next to
the size of what it is added to, so strengths are set by a *norm fraction* ``ρ``: the strength
that makes the added vector ``ρ`` times the mean norm of a reference token's hidden state (in
the SAE's input space for ``add``/``clamp``, in the raw residual stream for ``vector``). The
fit records those mean norms, so any artifact can turn ``ρ`` into a strength.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from hf_sae_steer.sae.base import SAE, SparseCode
from hf_sae_steer.steering.names import MAX_NORM_FRACTION

if TYPE_CHECKING:
    from hf_sae_steer.scores.record import FeatureScores

# The recommended norm fraction: the largest of 1/8, 1/4, 1/2, 1 at which the demo's `add`
# steering kept the upper 95% bound of its perplexity ratio to the unsteered model under 2x, on
# the tuning prompts (never the evaluation's): scripts/tune_norm_fraction.py, tuning.json.
NORM_FRACTION = 0.5
REFERENCE_CLAMP_VALUE = 10.0


def clamp_values(
    scores: Tensor, clamp_k: int, clamp_value: float | None, typical: Tensor | None
) -> SparseCode:
    """The latents ``clamp`` raises and by how much: the ``clamp_k`` top-scoring latents, each by
    ``clamp_value``, or, when that is ``None``, by its typical activation on the reference set
    (the reference's ``+10`` when the scores carry no typical activations)."""
    top = torch.topk(scores.float(), clamp_k).indices
    if clamp_value is None and typical is not None:
        values = typical.float()[top]
    else:
        value = REFERENCE_CLAMP_VALUE if clamp_value is None else clamp_value
        values = torch.full((clamp_k,), float(value))
    return SparseCode(top, values)


def added_vector(
    method: str,
    sae: SAE | None,
    *,
    latents: SparseCode | None = None,
    clamp: SparseCode | None = None,
    vector: Tensor | None = None,
) -> Tensor:
    """``u``: what an additive method adds at strength 1, per unit of the token's scale (``add``,
    ``clamp``: the SAE's input space) or in the residual stream itself (``vector``)."""
    if method == "vector":
        if vector is None:
            raise ValueError("The vector method needs a steering vector.")
        return vector.detach().double().cpu()
    code = latents if method == "add" else clamp
    if sae is None or code is None:
        raise ValueError(f"The {method} method needs an SAE and its latents.")
    placed = SparseCode(code.indices.to(sae.device), code.values.to(sae.device, sae.dtype))
    with torch.no_grad():
        return sae.decode_change(placed).double().cpu()


def check_norm_fraction(norm_fraction: float) -> float:
    """``norm_fraction`` as a float, when finite and at most :data:`MAX_NORM_FRACTION` in size."""
    number = isinstance(norm_fraction, (int, float)) and not isinstance(norm_fraction, bool)
    value = float(norm_fraction) if number else math.nan
    if not math.isfinite(value) or abs(value) > MAX_NORM_FRACTION:
        raise ValueError(
            f"norm_fraction (--norm-fraction) must be a finite number from -{MAX_NORM_FRACTION:g} "
            f"to {MAX_NORM_FRACTION:g}, got {norm_fraction!r}: it sets the added vector's size as "
            f"a fraction of a hidden state's (default {NORM_FRACTION:g})."
        )
    return value


def strength_for(norm_fraction: float, u: Tensor, mean_norm: float) -> float:
    """The strength at which ``u`` has norm ``norm_fraction * mean_norm``."""
    size = float(u.norm())
    if size == 0 or mean_norm <= 0:
        raise ValueError("Cannot calibrate a strength: the added vector or the mean norm is 0.")
    return norm_fraction * mean_norm / size


# -- reading an artifact's calibration ----------------------------------------------------
def fluency_strength(method: str, artifact: FeatureScores | None) -> float | None:
    """``strength="calibrated"``: the strength the artifact's fluency calibration chose for
    ``method`` (``docs/method.md`` §6); ``None`` for ``add``/``vector`` without one (then the
    default norm fraction's, as 0.2's artifacts had)."""
    fluency = artifact.calibration.fluency if artifact is not None else None
    if fluency is not None and fluency.method == method:
        return float(fluency.strength)
    if method in ("add", "vector"):
        return None
    # One line for the API, the CLI and the server alike (which prefix the item it came from).
    if fluency is None:
        measured = (
            "these scores have none (fitted with calibrate_strength=False, or by a rule whose "
            "steering adds no vector)"
        )
        other = ""
    else:
        measured = f"it measured {fluency.method} only, not {method}"
        other = f", or steer with {fluency.method}"
    raise ValueError(
        'The strength "calibrated" is what the fluency calibration of the scores measured, and '
        f"{measured}: give {method} a number as its strength{other}."
    )


def calibrated_strength(step: Any, artifact: FeatureScores | None) -> float:
    """The strength of the default norm fraction, when the artifact records the mean norms;
    else 1 (a vector or weights given by the user are taken as they are)."""
    if step.added is None or artifact is None:
        return 1.0
    calibration = artifact.calibration
    norm = calibration.mean_norm_raw if step.method == "vector" else calibration.mean_norm
    if norm is None:
        return 1.0
    return strength_for(NORM_FRACTION, step.added.double().cpu(), float(norm))
