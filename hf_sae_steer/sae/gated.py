"""Gated SAEs (SAELens ``gated``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hf_sae_steer.sae.base import SAE, register_architecture
from hf_sae_steer.sae.config import SAEConfig


@register_architecture("gated")
class GatedSAE(SAE):
    """``pre`` is the gate pre-activation.

    The magnitude path shares ``W_enc`` up to ``exp(r_mag)``, so it is a function of the gate
    pre-activation alone: ``mag = (pre - b_enc) * exp(r_mag) + b_mag``. That keeps the
    activation elementwise in ``pre``, which the interventions rely on.
    """

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae), requires_grad=False)
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae), requires_grad=False)

    def activate(self, pre: Tensor) -> Tensor:
        magnitude = torch.relu((pre - self.b_enc) * torch.exp(self.r_mag) + self.b_mag)
        return magnitude * (pre > 0)
