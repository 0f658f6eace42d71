"""JumpReLU SAEs (Gemma Scope, SAELens ``jumprelu``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hf_sae_steer.sae.base import SAE, register_architecture
from hf_sae_steer.sae.config import SAEConfig


@register_architecture("jumprelu")
class JumpReLUSAE(SAE):
    """``pre * (pre > threshold)``, with a learned per-latent threshold."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae), requires_grad=False)

    def activate(self, pre: Tensor) -> Tensor:
        return torch.relu(pre) * (pre > self.threshold)
