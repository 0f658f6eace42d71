"""Selection rules: how the sums of a scoring run become per-latent scores (``docs/method.md`` §3
and §6).

- ``seed``: the reference rule, exactly: the ``d²``-weighted mean of where a latent fires,
  min-max normalised over the latents that fired. It ranks latents that fired once or twice,
  near the topic, first.
- ``support``: the reference rule with each latent's raw score shrunk towards the mean by how
  few reference prompts it fired on, so a latent needs support before it can rank high.
- ``mean_diff``: the direction from the reference set's mean hidden state to the alignment
  set's, in the SAE's input space, written as a non-negative combination of ``k`` decoder rows
  (non-negative orthogonal matching pursuit). It picks latents by what they *write*, which is
  what steers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scoring.passes import ScoringSums

PRIOR_PROMPTS = 5  # support: pseudo-prompts at the mean raw score
# mean_diff: latents chosen. 10, chosen on the benchmark's tuning topics (docs/benchmark.md);
# 0.2 used 5, which fell behind CAA at matched fluency.
MEAN_DIFF_K = 10
# mean_diff: a |delta| below this fraction of a token's typical norm is float noise (the same
# prompts in both sets, summed in another order), not a direction.
NO_DIRECTION = 1e-4


@dataclass
class RuleResult:
    """What a rule produces: scores in [0, 1], tensors for the artifact, options it used."""

    scores: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    delta_explained: float | None = None


def normalise(raw: Tensor, fired: Tensor) -> Tensor:
    """``s = 1 - (r - min r) / max(r - min r)`` over the latents that fired; 0 for the others.

    When every fired latent has the same ``r`` they are all equally close: each gets 1.
    """
    scores = torch.zeros(raw.shape, dtype=torch.float64)
    if fired.any():
        r = raw.double()[fired]
        r = r - r.min()
        top = r.max()
        scores[fired] = 1 - r / top if top > 0 else 1.0
    return scores.float()


def raw_scores(sums: ScoringSums) -> Tensor:
    """``r_f = Σ_i d_i² a_if / Σ_i a_if`` (0 for latents that never fired)."""
    return torch.where(sums.fired, sums.num / sums.den.clamp_min(1e-300), 0.0)


def seed_rule(sums: ScoringSums, sae: SAE) -> RuleResult:
    """The reference rule (§3), unchanged."""
    raw = raw_scores(sums)
    return RuleResult(normalise(raw, sums.fired), {"raw_scores": raw.float()})


def support_rule(
    sums: ScoringSums, sae: SAE, *, prior_prompts: float = PRIOR_PROMPTS
) -> RuleResult:
    """The reference rule with ``r_f`` shrunk to the mean: ``(n_f r_f + m r̄) / (n_f + m)``.

    ``n_f`` is the number of reference prompts latent ``f`` fires on, ``m = prior_prompts`` and
    ``r̄ = Σ num / Σ den`` the mean ``d²`` of the activation mass. A latent seen on one prompt
    keeps about ``1 / (1 + m)`` of its distance from the mean; one seen on fifty keeps most.
    """
    if prior_prompts < 0:
        raise ValueError(f"prior_prompts must be >= 0, got {prior_prompts}.")
    raw = raw_scores(sums)
    fired = sums.fired
    mean = float(sums.num.sum() / sums.den.sum()) if fired.any() else 0.0
    n = sums.ref_prompts.double()
    shrunk = torch.where(fired, (n * raw + prior_prompts * mean) / (n + prior_prompts), 0.0)
    return RuleResult(
        normalise(shrunk, fired),
        {"raw_scores": raw.float(), "shrunk_scores": shrunk.float()},
        {"prior_prompts": prior_prompts},
    )


def check_direction(sums: ScoringSums) -> tuple[Tensor, Tensor]:
    """``Δ`` (the SAE's input space) and ``Δ_raw``: alignment minus reference mean hidden state;
    an error when there is none (no tokens, not finite, or float noise)."""
    if int(sums.align_tokens) == 0 or int(sums.ref_tokens) == 0:
        raise ValueError("mean_diff needs tokens in both the reference and the alignment set.")
    delta = sums.alignment_mean() - sums.reference_mean()
    delta_raw = sums.alignment_mean(raw=True) - sums.reference_mean(raw=True)
    size, typical = float(delta.norm()), sums.mean_norm()
    if not math.isfinite(size) or not math.isfinite(typical):
        raise ValueError(
            "mean_diff: the direction from the reference mean to the alignment mean is not "
            "finite (NaN or inf hidden states at the site); score the model in float32."
        )
    if size <= NO_DIRECTION * typical:
        raise ValueError(
            f"mean_diff: the alignment set's mean hidden state equals the reference set's "
            f"(|delta| = {size:.3g} against a typical norm of {typical:.3g}): there is no "
            "direction to steer towards. Give alignment texts of the topic, not the reference set."
        )
    return delta, delta_raw


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


# -- non-negative orthogonal matching pursuit ----------------------------------------------
def nn_omp(rows: Tensor, target: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pick up to ``k`` of ``rows`` [n, d] whose non-negative combination best fits ``target``.

    Greedy: add the row most positively aligned with the residual (by cosine), refit all weights
    by non-negative least squares, repeat; stop early when no row points along the residual.
    Returns ``(indices, weights, residual)``; rows whose refitted weight is 0 are dropped.
    """
    rows, target = rows.double(), target.double()
    norms = rows.norm(dim=1).clamp_min(1e-12)
    chosen: list[int] = []
    weights = torch.zeros(0, dtype=torch.float64)
    residual = target.clone()
    for _ in range(k):
        cosine = (rows @ residual) / norms
        if chosen:
            cosine[chosen] = -math.inf
        best = int(cosine.argmax())
        if not cosine[best] > 1e-12:
            break
        chosen.append(best)
        weights = nnls(rows[chosen].T, target)
        residual = target - rows[chosen].T @ weights
    keep = weights > 0
    index = torch.tensor(chosen, dtype=torch.int64)[keep] if chosen else torch.zeros(0).long()
    return index, weights[keep], residual


def nnls(a: Tensor, b: Tensor, tol: float = 1e-10) -> Tensor:
    """``argmin_{x >= 0} ||a x - b||`` by Lawson and Hanson's active-set method (small ``a``)."""
    m = a.shape[1]
    x = torch.zeros(m, dtype=torch.float64)
    passive = torch.zeros(m, dtype=torch.bool)
    for _ in range(3 * m + 10):
        gradient = a.T @ (b - a @ x)
        candidates = (~passive) & (gradient > tol)
        if not candidates.any():
            break
        passive[int(torch.where(candidates, gradient, -math.inf).argmax())] = True
        while True:
            trial = torch.zeros(m, dtype=torch.float64)
            trial[passive] = torch.linalg.lstsq(a[:, passive], b.unsqueeze(1)).solution.squeeze(1)
            if (trial[passive] > tol).all():
                x = trial
                break
            blocking = passive & (trial <= tol)
            step = (x[blocking] / (x[blocking] - trial[blocking])).min()
            x = x + step * (trial - x)
            passive &= x > tol
            x[~passive] = 0.0
            if not passive.any():
                break
    return x
