"""The ``mean_diff`` rule (``docs/method.md`` §6): the direction from the reference set's mean
hidden state to the alignment set's, in the SAE's input space, written as a non-negative
combination of ``k`` decoder rows (non-negative orthogonal matching pursuit). It picks latents
by what they *write*, which is what steers; steered with ``add``.
"""

from __future__ import annotations

import torch

from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scoring.rules.base import (
    PURSUIT_K,
    PursuitOptions,
    RuleResult,
    SelectionRule,
    check_direction,
    nn_omp,
    recommend_add,
)
from hf_sae_steer.scoring.walk.passes import ScoringSums

MEAN_DIFF_K = PURSUIT_K


def mean_diff_rule(sums: ScoringSums, sae: SAE, *, k: int = MEAN_DIFF_K) -> RuleResult:
    """``Δ = mean(alignment) - mean(reference)`` in the SAE's input space, approximated by a
    non-negative combination of ``k`` decoder rows; scores are the weights over their maximum."""
    if not 1 <= k <= sae.d_sae:
        raise ValueError(f"k must be between 1 and d_sae={sae.d_sae}, got {k}.")
    delta, delta_raw = check_direction(sums)
    latents, weights, residual = nn_omp(sae.W_dec.detach().double().cpu(), delta, k)
    if not len(latents):
        raise ValueError(
            "mean_diff: no decoder row of the SAE points along the direction from the reference "
            "mean to the alignment mean: there is nothing to steer with (rule='seed' still ranks "
            "latents)."
        )
    scores = torch.zeros(sae.d_sae, dtype=torch.float32)
    if len(latents):
        scores[latents] = (weights / weights.max()).float()
    norm2 = float(delta.pow(2).sum())
    explained = 1.0 - float(residual.pow(2).sum()) / norm2 if norm2 > 0 else 0.0
    stats = {
        "latents": latents,
        "weights": weights.float(),
        "delta": delta.float(),
        "delta_raw": delta_raw.float(),
    }
    return RuleResult(scores, stats, {"k": k}, explained)


MEAN_DIFF = SelectionRule("mean_diff", mean_diff_rule, PursuitOptions, recommend_add)
