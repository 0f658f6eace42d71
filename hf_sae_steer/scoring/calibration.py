"""Strengths that mean the same thing across SAEs, methods and models (``docs/method.md`` §6).

The additive methods (``add``, ``clamp`` with ``preserve_error``, ``vector``) add a fixed vector
``u`` to every steered hidden state, times the strength. A strength is only meaningful next to
the size of what it is added to, so strengths are set by a *norm fraction* ``ρ``: the strength
that makes the added vector ``ρ`` times the mean norm of a reference token's hidden state (in
the SAE's input space for ``add``/``clamp``, in the raw residual stream for ``vector``). The
fit records those mean norms, so any artifact can turn ``ρ`` into a strength.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from hf_sae_steer.sae.base import SAE, SparseCode
from hf_sae_steer.steering.names import MAX_NORM_FRACTION

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


def recommendation(
    method: str, strength: float, *, preserve_error: bool, norm_fraction: float | None
) -> dict[str, Any]:
    """The ``recommended`` entry of an artifact."""
    why = (
        f"strength makes the added vector {norm_fraction:g} x the mean norm of a reference "
        "token's hidden state"
        if norm_fraction is not None
        else "the reference method at full strength"
    )
    return {
        "method": method,
        "strength": strength,
        "preserve_error": preserve_error,
        "norm_fraction": norm_fraction,
        "why": why,
    }


def recommend(
    rule: str,
    scores: Tensor,
    stats: dict[str, Tensor],
    sae: SAE,
    mean_norm: float,
    norm_fraction: float = NORM_FRACTION,
) -> dict[str, Any]:
    """The steering a rule's scores are meant for (documented in ``docs/method.md`` §6):

    - ``mean_diff``, ``output``, ``trained``: ``add`` the chosen decoder rows with their weights;
    - ``support``: ``clamp`` the 5 top latents by their typical activations, error preserved;
    - ``seed``: the reference's own method, ``swap`` at strength 1.

    Additive steerings get the strength of norm fraction ``norm_fraction``. When every score is 0
    no latent was chosen, and the recommendation is no change (``orig``): ``swap`` would keep no
    latent at all and erase what the SAE reconstructs.
    """
    if not bool((scores > 0).any()):
        return {
            **recommendation("orig", 1.0, preserve_error=False, norm_fraction=None),
            "why": "every score is 0: no latent to steer with, so no change",
        }
    if rule == "seed":
        return recommendation("swap", 1.0, preserve_error=False, norm_fraction=None)
    if "latents" in stats and "weights" in stats:  # mean_diff, output, trained
        method, u = "add", added_vector(
            "add", sae, latents=SparseCode(stats["latents"], stats["weights"])
        )
    else:
        clamp = clamp_values(scores, 5, None, stats.get("typical_activation"))
        method, u = "clamp", added_vector("clamp", sae, clamp=clamp)
    strength = strength_for(norm_fraction, u, mean_norm)
    return recommendation(method, strength, preserve_error=True, norm_fraction=norm_fraction)
