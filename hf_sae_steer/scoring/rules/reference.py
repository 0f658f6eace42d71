"""The reference rule family (``docs/method.md`` §3): rules that rank latents by where they fire.

- ``seed``: the reference rule, exactly: the ``d²``-weighted mean of where a latent fires,
  min-max normalised over the latents that fired. It ranks latents that fired once or twice,
  near the topic, first. Steered with the reference's ``swap``.
- ``support``: the reference rule with each latent's raw score shrunk towards the mean by how
  few reference prompts it fired on, so a latent needs support before it can rank high.
  Steered by clamping its top latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scoring.rules.base import (
    RuleResult,
    SelectionRule,
    normalise,
    recommend_clamp,
    recommend_swap,
)
from hf_sae_steer.scoring.walk.passes import ScoringSums

PRIOR_PROMPTS = 5  # support: pseudo-prompts at the mean raw score


@dataclass(frozen=True)
class SeedOptions:
    """The reference rule takes no option."""

    def check(self, d_sae: int | None = None) -> None:
        pass


@dataclass(frozen=True)
class SupportOptions:
    """``prior_prompts``: pseudo-prompts at the mean raw score (how much support a latent needs)."""

    prior_prompts: float = PRIOR_PROMPTS

    def check(self, d_sae: int | None = None) -> None:
        value = self.prior_prompts
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and 0 <= value < math.inf):
            raise ValueError(
                f"prior_prompts (--prior-prompts) must be a finite number >= 0, got {value!r}."
            )


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


SEED = SelectionRule("seed", seed_rule, SeedOptions, recommend_swap)
SUPPORT = SelectionRule("support", support_rule, SupportOptions, recommend_clamp)
