"""TopK SAEs (OpenAI v5, SAELens ``topk``): the code is k-sparse by construction."""

from __future__ import annotations

import torch
from torch import Tensor

from hf_sae_steer.sae.base import SAE, SparseCode, register_architecture


@register_architecture("topk")
class TopKSAE(SAE):
    """ReLU of the ``k`` largest pre-activations; zeros elsewhere."""

    def activate(self, pre: Tensor) -> Tensor:
        code = self.activate_sparse(pre)
        return torch.zeros_like(pre).scatter_(-1, code.indices, code.values)

    def activate_sparse(self, pre: Tensor) -> SparseCode:
        top = torch.topk(pre, k=self.cfg.k, dim=-1, sorted=False)
        return SparseCode(top.indices, torch.relu(top.values))
