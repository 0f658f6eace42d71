"""Steering away from a topic, on bare tensors (``docs/method.md`` §9). Nothing here knows
about models or hooks.

With ``z`` the SAE code of a hidden state ``x``, ``S`` the topic's latents and ``s`` the
strength (the SAE's error is always kept, so only the change of latents is decoded):

========  =========================================================  ==========================
suppress  ``x - s g(x) Σ_{i∈S} z_i W_dec[i]``                          conditional: nothing
          (``g = 1``: ``z_i -> (1-s) z_i``, zero at s = 1, negative     changes where no latent
          beyond; with a posterior, ``g = p(topic | x)``)               of ``S`` fires
ablate    ``x - s (x·d) d``, ``d`` the unit topic direction             directional ablation
                                                                        (Arditi et al. 2024)
vector    ``x - s v``, ``v`` the mean difference                        CAA subtraction
attenuate ``x - s p(topic | x) v``                                      CAA subtraction where the
                                                                        SAE sees the topic
========  =========================================================  ==========================

The posterior is naive Bayes over which latents of ``S`` fire on a token (for ``attenuate``:
the latents most specific to the topic, :func:`hf_sae_steer.scoring.away.topic_gate`), with the
firing frequencies of each latent on the alignment set's tokens and on the reference set's,
from the fit's sums: ``p = sigmoid(b + Σ_{i∈S} [z_i > 0] w_i)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TopicLatents:
    """The latents ``suppress`` attenuates, and optionally the posterior that gates it:
    ``log_odds`` (one per latent) and ``bias`` (``None``: no gate, ``g = 1``)."""

    indices: Tensor
    log_odds: Tensor | None = None
    bias: float | None = None

    def __post_init__(self) -> None:
        indices = torch.as_tensor(self.indices).long().flatten()
        if indices.numel() == 0:
            raise ValueError("suppress needs at least one topic latent.")
        object.__setattr__(self, "indices", indices)
        if (self.log_odds is None) != (self.bias is None):
            raise ValueError("A posterior needs both log_odds and bias (or neither).")
        if self.log_odds is not None:
            odds = torch.as_tensor(self.log_odds, dtype=torch.float32).flatten()
            if odds.numel() != indices.numel() or not torch.isfinite(odds).all():
                raise ValueError("log_odds needs one finite value per topic latent.")
            if not math.isfinite(float(self.bias)):  # type: ignore[arg-type]
                raise ValueError("The posterior's bias must be finite.")
            object.__setattr__(self, "log_odds", odds)
            object.__setattr__(self, "bias", float(self.bias))  # type: ignore[arg-type]

    @property
    def gated(self) -> bool:
        return self.log_odds is not None

    def check(self, d_sae: int) -> None:
        if ((self.indices < 0) | (self.indices >= d_sae)).any():
            raise ValueError(f"A topic latent is out of range for d_sae={d_sae}.")


def topic_posterior(topic_code: Tensor, log_odds: Tensor, bias: float) -> Tensor:
    """``p(topic | token)`` from the topic latents' values ``topic_code`` [..., k]."""
    fires = (topic_code > 0).to(log_odds.dtype)
    return torch.sigmoid(bias + fires @ log_odds)


def suppression_change(topic_code: Tensor, rows: Tensor, gate: Tensor | None) -> Tensor:
    """``-g Σ_i z_i W_dec[i]`` at strength 1, in the decoder's space: ``topic_code`` [..., k]
    the topic latents' values, ``rows`` [k, d] their decoder rows, ``gate`` [...] or None."""
    change = -(topic_code @ rows)
    return change if gate is None else change * gate.unsqueeze(-1)


def attenuation_change(gate: Tensor, vector: Tensor) -> Tensor:
    """``-g v`` at strength 1: ``vector`` [d] subtracted in proportion to ``gate`` [...]."""
    return -gate.unsqueeze(-1) * vector


def ablation_change(x: Tensor, unit: Tensor) -> Tensor:
    """``-(x·d) d`` at strength 1: the component of ``x`` along the unit direction ``d``."""
    return -(x @ unit).unsqueeze(-1) * unit


def unit_direction(vector: Tensor) -> Tensor:
    size = float(vector.float().norm())
    if size == 0 or not math.isfinite(size):
        raise ValueError("ablate needs a topic direction that is finite and not zero.")
    return vector.float() / size
