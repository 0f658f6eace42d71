"""The activation functions that tell SAE architectures apart; everything else is shared."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hf_sae_steer.sae.base import SAE, SAEConfig


class ReLUSAE(SAE):
    """Standard SAE (SAELens ``standard``, OpenAI v1/v4): ``relu(pre)``."""

    def activate(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)


class TopKSAE(SAE):
    """TopK SAE (OpenAI v5, SAELens ``topk``): ReLU of the ``k`` largest pre-activations."""

    def activate(self, pre: Tensor) -> Tensor:
        indices, values = self.activate_sparse(pre)
        return torch.zeros_like(pre).scatter_(-1, indices, values)

    def activate_sparse(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        top = torch.topk(pre, k=self.cfg.k, dim=-1, sorted=False)
        return top.indices, torch.relu(top.values)


class JumpReLUSAE(SAE):
    """JumpReLU SAE (Gemma Scope, SAELens ``jumprelu``): ``pre * (pre > threshold)``."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae), requires_grad=False)

    def activate(self, pre: Tensor) -> Tensor:
        return torch.relu(pre) * (pre > self.threshold)


class GatedSAE(SAE):
    """Gated SAE (SAELens ``gated``); ``pre`` is the gate pre-activation.

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


ARCHITECTURES: dict[str, type[SAE]] = {
    "relu": ReLUSAE,
    "topk": TopKSAE,
    "jumprelu": JumpReLUSAE,
    "gated": GatedSAE,
}
