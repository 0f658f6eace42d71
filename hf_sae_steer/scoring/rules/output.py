"""The ``output`` rule: ``mean_diff``'s pursuit over the decoder rows that raise the topic's
likelihood (``docs/method.md`` §6).

``mean_diff`` picks rows by what they write into the *input* space; a row can reproduce part of
the mean difference and still do nothing for the topic downstream (or push the output the wrong
way). Each row's *output score* is the first-order change of the topic margin
(:class:`~hf_sae_steer.scoring.rules.objective.TopicMargin`) when the row is added at the site:
``o_i = W_dec[i] · ∂margin/∂u`` at ``u = 0``, one backward pass for all rows. Rows with
``o_i ≤ 0`` are dropped, then non-negative matching pursuit fits the mean difference with ``k``
of the rest.
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
from hf_sae_steer.scoring.rules.objective import TopicMargin
from hf_sae_steer.scoring.walk.passes import ScoringSums

OUTPUT_K = PURSUIT_K



def output_rule(
    sums: ScoringSums, sae: SAE, *, margin: TopicMargin, k: int = OUTPUT_K
) -> RuleResult:
    """Rows with a positive output score, ``k`` of them fitted to the mean difference."""
    if not 1 <= k <= sae.d_sae:
        raise ValueError(f"k must be between 1 and d_sae={sae.d_sae}, got {k}.")
    delta, delta_raw = check_direction(sums, "output")
    rows = sae.W_dec.detach().double().cpu()
    output = rows @ margin.gradient()
    keep = torch.nonzero(output > 0).flatten()
    picked, weights, residual = nn_omp(rows[keep], delta, k)
    latents = keep[picked]
    scores = torch.zeros(sae.d_sae, dtype=torch.float32)
    if len(latents):
        scores[latents] = (weights / weights.max()).float()
    norm2 = float(delta.pow(2).sum())
    stats = {
        "latents": latents,
        "weights": weights.float(),
        "delta": delta.float(),
        "delta_raw": delta_raw.float(),
        "output_scores": output.float(),
    }
    explained = 1.0 - float(residual.pow(2).sum()) / norm2
    return RuleResult(scores, stats, {"k": k, "kept_rows": len(keep)}, explained)


OUTPUT = SelectionRule("output", output_rule, PursuitOptions, recommend_add, needs_margin=True)
