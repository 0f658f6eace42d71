"""The ``trained`` rule: non-negative latent weights fitted by gradient on the output
(``docs/method.md`` §6).

The steering vector is ``u = Σ_i w_i W_dec[i]`` over a pool of candidate rows (the ``pool``
rows most aligned with the mean difference), ``w ≥ 0`` (``w = exp θ``), held at a fixed norm,
``ρ`` times the mean hidden-state norm, so that only the direction is learned (the strength is
calibrated afterwards). Objectives, on the alignment texts against the reference texts
(:class:`~hf_sae_steer.scoring.rules.objective.TopicMargin`):

- ``"preference"`` (reference-free, in the style of RePS): maximise the steered margin of the
  topic's mean token log-likelihood over the reference texts';
- ``"lm_kl"``: maximise the topic's log-likelihood while keeping ``KL(base ‖ steered)`` on the
  reference texts small.

Sparsity comes from the objective, never from truncation: an L1 penalty on ``w / ‖w‖₂`` (scale
free) first, then the smallest set of rows carrying 95% of the weight (at most
``max_latents``) is refitted without it. Initialised from ``mean_diff``'s pursuit over the
pool; deterministic under ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scoring.rules.base import (
    RuleResult,
    SelectionRule,
    check_direction,
    nn_omp,
    nnls,
    recommend_add,
)
from hf_sae_steer.scoring.rules.objective import TopicMargin
from hf_sae_steer.scoring.walk.passes import ScoringSums

Objective = Literal["preference", "lm_kl"]
POOL = 64
STEPS = 24
KEEP_MASS = 0.95
MAX_LATENTS = 20


@dataclass(frozen=True)
class TrainedOptions:
    """The ``trained`` rule's options (see :func:`trained_rule`), checked before any work."""

    objective: Objective = "preference"
    pool: int = POOL
    steps: int = STEPS
    lr: float = 0.15
    l1: float = 0.02
    kl_weight: float = 1.0
    norm_fraction: float = 0.5
    max_latents: int = MAX_LATENTS
    seed: int = 0
    progress: bool = False

    def check(self, d_sae: int | None = None) -> None:
        if self.objective not in ("preference", "lm_kl"):
            raise ValueError(
                f"Unknown objective {self.objective!r}; use 'preference' or 'lm_kl'."
            )
        for name in ("pool", "steps", "max_latents"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError("steps, pool and max_latents must be at least 1.")
        for name in ("lr", "l1", "kl_weight", "norm_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


def trained_rule(
    sums: ScoringSums,
    sae: SAE,
    *,
    margin: TopicMargin,
    objective: Objective = "preference",
    pool: int = POOL,
    steps: int = STEPS,
    lr: float = 0.15,
    l1: float = 0.02,
    kl_weight: float = 1.0,
    norm_fraction: float = 0.5,
    max_latents: int = MAX_LATENTS,
    seed: int = 0,
    progress: bool = False,
) -> RuleResult:
    """Fit ``w`` as above; scores are the final weights over their maximum."""
    if objective not in ("preference", "lm_kl"):
        raise ValueError(f"Unknown objective {objective!r}; use 'preference' or 'lm_kl'.")
    if steps < 1 or pool < 1 or max_latents < 1:
        raise ValueError("steps, pool and max_latents must be at least 1.")
    delta, delta_raw = check_direction(sums, "trained")
    rows = sae.W_dec.detach().double().cpu()
    cosine = rows @ delta / rows.norm(dim=1).clamp_min(1e-12)
    candidates = torch.topk(cosine, min(pool, sae.d_sae)).indices
    candidates = candidates[cosine[candidates] > 0]
    if len(candidates) == 0:
        raise ValueError("No decoder row points along the mean difference: nothing to train.")
    size = norm_fraction * sums.mean_norm()
    kl = kl_weight if objective == "lm_kl" else 0.0
    generator = torch.Generator().manual_seed(seed)
    margin.generator.manual_seed(seed)
    bar = tqdm(total=steps + steps // 2, desc="train latents", disable=not progress, leave=False)

    def fit(index: torch.Tensor, init: torch.Tensor, n_steps: int, penalty: float) -> torch.Tensor:
        dec = rows[index].float().to(margin.device)
        theta = init.clamp_min(1e-3 * float(init.max())).log().float().to(margin.device)
        theta = theta + 1e-3 * torch.randn(theta.shape, generator=generator).to(margin.device)
        theta.requires_grad_(True)
        optimiser = torch.optim.Adam([theta], lr=lr)

        def steered(w: torch.Tensor) -> torch.Tensor:
            u = w @ dec
            return margin(u * (size / u.norm().clamp_min(1e-12)), kl_weight=kl)

        # The margin's scale depends on the model and the topic; the penalty must not: measure
        # the objective in units of what the starting direction already gains.
        with torch.no_grad():
            unit = float((steered(theta.exp()) - margin(None, kl_weight=0.0)).abs())
        unit = max(unit, 1e-6)
        for _ in range(n_steps):
            with torch.enable_grad():
                w = theta.exp()
                loss = -steered(w) / unit + penalty * w.sum() / w.norm().clamp_min(1e-12)
                # Only theta's gradient: the model's parameters get no .grad from a fit.
                (theta.grad,) = torch.autograd.grad(loss, theta)
            optimiser.step()
            bar.update(1)
        return theta.detach().exp().double().cpu()

    start, start_w, _ = nn_omp(rows[candidates], delta, min(10, len(candidates)))
    init = torch.full((len(candidates),), 1e-3, dtype=torch.float64)
    if len(start):
        init[start] = start_w / start_w.max()
    w = fit(candidates, init, steps, l1)
    order = torch.argsort(w, descending=True)
    mass = torch.cumsum(w[order], 0) / w.sum()
    n_keep = min(int((mass < KEEP_MASS).sum()) + 1, max_latents)
    support = order[:n_keep]
    latents = candidates[support]
    w = fit(latents, w[support], steps // 2, 0.0)
    bar.close()
    # Scale the weights so that they write a vector as long as the mean difference (the size
    # mean_diff's weights have): strengths then mean the same for both rules.
    u = (w[:, None] * rows[latents]).sum(0)
    weights = w * float(delta.norm() / u.norm().clamp_min(1e-12))
    keep = torch.argsort(weights, descending=True)
    latents, weights = latents[keep], weights[keep]
    scores = torch.zeros(sae.d_sae, dtype=torch.float32)
    scores[latents] = (weights / weights.max()).float()
    fitted = nnls(rows[latents].T, delta)
    residual = delta - rows[latents].T @ fitted
    explained = 1.0 - float(residual.pow(2).sum() / delta.pow(2).sum())
    stats = {
        "latents": latents,
        "weights": weights.float(),
        "delta": delta.float(),
        "delta_raw": delta_raw.float(),
    }
    options = {
        "objective": objective, "pool": len(candidates), "steps": steps, "lr": lr, "l1": l1,
        "kl_weight": kl_weight, "norm_fraction": norm_fraction, "max_latents": max_latents,
        "seed": seed,
    }  # fmt: skip
    return RuleResult(scores, stats, options, explained)


TRAINED = SelectionRule("trained", trained_rule, TrainedOptions, recommend_add, needs_margin=True)
