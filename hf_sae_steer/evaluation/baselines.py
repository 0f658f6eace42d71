"""Baselines that steer without an SAE: a topical prompt prefix, fine-tuning on the alignment
set (what the paper compares its scoring time against), and directional ablation of the topic's
mean difference (the vector baseline for steering away)."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hf_sae_steer.models import model_device, pad_token_id
from hf_sae_steer.sites.hooks import hook_site
from hf_sae_steer.sites.layouts import find_layout
from hf_sae_steer.sites.names import Site

PREFIX_TOKENS = 24


def topic_prefix(
    tokenizer: Any, alignment: Sequence[str], embeddings: Tensor, max_tokens: int = PREFIX_TOKENS
) -> str:
    """The most typical alignment text (nearest the embeddings' centroid), cut to ``max_tokens``
    tokens: context a user could paste before a prompt."""
    emb = F.normalize(embeddings.double(), dim=-1)
    centroid = F.normalize(emb.mean(dim=0), dim=0)
    text = alignment[int((emb @ centroid).argmax())]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    return tokenizer.decode(ids).strip()


class FineTuner:
    """Fine-tunes a copy of a causal LM on texts, one epoch at a time, timing the training.

    Full-parameter AdamW on the causal LM loss, each text a sequence ending in EOS; the user's
    model is never touched. ``seconds`` is the wall-clock time spent training so far.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        texts: Sequence[str],
        *,
        lr: float = 5e-4,
        batch_size: int = 8,
        max_length: int = 128,
        seed: int = 0,
    ) -> None:
        self.model = copy.deepcopy(model)
        self.tokenizer, self.texts, self.batch_size = tokenizer, list(texts), batch_size
        eos = getattr(tokenizer, "eos_token_id", None)
        end = [eos] if eos is not None else []
        encoded = tokenizer(self.texts, add_special_tokens=False)["input_ids"]
        self.ids = [(list(ids) + end)[:max_length] for ids in encoded]
        self.optimiser = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.epochs, self.seconds, self.last_loss = 0, 0.0, float("nan")

    def train_to(self, epochs: int) -> nn.Module:
        """Train until ``epochs`` epochs are done; returns the fine-tuned model (in eval mode)."""
        device, pad = model_device(self.model), pad_token_id(self.tokenizer)
        start = time.perf_counter()
        self.model.train()
        with torch.enable_grad():
            while self.epochs < epochs:
                order = torch.randperm(len(self.ids), generator=self.generator).tolist()
                for b in range(0, len(order), self.batch_size):
                    rows = [self.ids[i] for i in order[b : b + self.batch_size]]
                    width = max(map(len, rows))
                    ids = torch.full((len(rows), width), pad, dtype=torch.long)
                    mask = torch.zeros_like(ids)
                    for r, seq in enumerate(rows):
                        ids[r, : len(seq)], mask[r, : len(seq)] = torch.tensor(seq), 1
                    labels = ids.masked_fill(mask == 0, -100)
                    out = self.model(
                        input_ids=ids.to(device), attention_mask=mask.to(device),
                        labels=labels.to(device),
                    )  # fmt: skip
                    self.optimiser.zero_grad()
                    out.loss.backward()
                    self.optimiser.step()
                    self.last_loss = float(out.loss.detach())
                self.epochs += 1
        self.seconds += time.perf_counter() - start
        return self.model.eval()


@contextlib.contextmanager
def directional_ablation(
    model: nn.Module, site: Site, direction: Tensor, strength: float = 1.0
) -> Iterator[nn.Module]:
    """Within the block, ``site``'s hidden state ``x`` becomes ``x - strength (x.d) d`` with
    ``d`` the unit ``direction`` (Arditi et al. 2024: ``strength`` 1 projects the direction out,
    2 reflects it): the strongest vector baseline for steering away. The hooks are gone after
    the block, even on error."""
    norm = float(direction.norm())
    if not math.isfinite(norm) or norm == 0:
        raise ValueError("Directional ablation needs a non-zero, finite direction.")
    unit = (direction.detach().float() / norm).flatten()

    def edit(x: Tensor) -> Tensor:
        d = unit.to(x.device, x.dtype)
        return x - strength * (x @ d).unsqueeze(-1) * d

    handles = hook_site(find_layout(model), site, edit)
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
