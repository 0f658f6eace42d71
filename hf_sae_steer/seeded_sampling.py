"""Sampling whose random draws belong to each row, not to the batch it runs in.

``torch.multinomial`` draws one stream for a whole batch, so what a row samples depends on
which rows share its batch (and, across processes, on which process ran it). Here row ``r``
has its own key (e.g. from its prompt and sample number): at step ``t`` it takes the top-k
tokens by logit and picks ``argmax(log_softmax(top-k logits / temperature) + g[r, t])``, with
Gumbel noise ``g`` drawn on the CPU from a generator seeded with the row's key (the Gumbel-max
trick: an exact sample of the top-k distribution). A row samples the same tokens in any batch,
on any process and device, for the same logits; rows sharing a key share their random numbers
(common random numbers: a steered row and its unsteered twin see the same noise).

Used as a ``logits_processor`` of greedy ``generate``: it leaves only the chosen token finite.
It can also keep, for some rows, the log-probability of each chosen token under the logits the
model returned (installed as a forward hook on the model with :meth:`RowSeededSampler.observe`:
the model's own output, before any other processor of ``generate`` touched it), so that an
unsteered row's perplexity needs no second pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import LogitsProcessor

KEY_STRIDE = 1_000_003


def row_key(seed: int, item: int, sample: int) -> int:
    """The key of sample ``sample`` of item ``item`` (e.g. a prompt) in a run seeded ``seed``."""
    return (seed * KEY_STRIDE + item) * KEY_STRIDE + sample


def gumbel_noise(key: int, steps: int, top_k: int) -> Tensor:
    """``[steps, top_k]`` standard Gumbel noise of row key ``key`` (float64, CPU)."""
    generator = torch.Generator().manual_seed(key % 2**63)
    uniform = torch.rand(steps, top_k, generator=generator, dtype=torch.float64)
    tiny = torch.finfo(torch.float64).tiny  # rand may return 0: log(0) would be -inf
    return -(-uniform.clamp_min(tiny).log()).log()


class RowSeededSampler(LogitsProcessor):
    """Top-k sampling at ``temperature`` for a batch whose row ``r`` has key ``keys[r]``; one
    instance per ``generate`` call (it counts the steps)."""

    def __init__(
        self,
        keys: Sequence[int],
        *,
        steps: int,
        top_k: int = 50,
        temperature: float = 1.0,
        scored_rows: Sequence[int] = (),
    ) -> None:
        if not temperature > 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a positive number, got {temperature}.")
        self.top_k, self.temperature, self.steps = top_k, float(temperature), steps
        self.noise = torch.stack([gumbel_noise(k, steps, top_k) for k in keys]) if keys else None
        self.step = 0
        self.scored_rows = list(scored_rows)
        self._log_probs: list[Tensor] = []  # per step: [scored rows] on the model's device
        self._placed: Tensor | None = None
        self._observed: Tensor | None = None

    @property
    def log_probs(self) -> Tensor:
        """``[scored rows, steps run]`` float64: each scored row's log-probability of the token
        it chose at each step, under the observed logits (empty without :meth:`observe`)."""
        if not self._log_probs:
            return torch.zeros(len(self.scored_rows), 0, dtype=torch.float64)
        return torch.stack(self._log_probs, dim=1).double().cpu()

    def observe(self, module: nn.Module, args: Any, output: Any) -> None:
        """A forward hook for the model: keeps the last position's logits of this step."""
        logits = output.logits if hasattr(output, "logits") else output[0]
        self._observed = logits[:, -1, :]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.noise is None or self.step >= self.steps:
            raise RuntimeError("RowSeededSampler: more steps or rows than it was built for.")
        if self._placed is None or self._placed.device != scores.device:
            self._placed = self.noise.to(scores.device, torch.float32)
        k = min(self.top_k, scores.shape[-1])
        values, tokens = scores.float().topk(k, dim=-1)
        logp = (values / self.temperature).log_softmax(dim=-1)
        pick = (logp + self._placed[:, self.step, :k]).argmax(dim=-1, keepdim=True)
        chosen = tokens.gather(-1, pick)
        if self.scored_rows and self._observed is not None:
            rows = torch.tensor(self.scored_rows, device=scores.device)
            raw = self._observed.index_select(0, rows).float()
            picked = raw.gather(-1, chosen.index_select(0, rows)).squeeze(-1)
            self._log_probs.append(picked - raw.logsumexp(dim=-1))
        self._observed = None
        self.step += 1
        out = torch.full_like(scores, -math.inf)
        return out.scatter_(-1, chosen, 0.0)
