"""Standard ReLU SAEs (SAELens ``standard``, OpenAI v1/v4)."""

from __future__ import annotations

import torch
from torch import Tensor

from hf_sae_steer.sae.base import SAE, register_architecture


@register_architecture("relu")
class ReLUSAE(SAE):
    """``relu(pre)``."""

    def activate(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)
