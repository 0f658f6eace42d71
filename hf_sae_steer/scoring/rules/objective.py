"""What a steering does to the *output*: the topic margin under a vector added at the site
(``docs/method.md`` §6, the ``output`` and ``trained`` rules).

The margin is the mean per-token log-likelihood of the alignment texts minus that of the
reference texts (each text's mean over its tokens, then the mean over texts), with ``u`` added
at the hooked site to every token the way ``add`` adds it (times the token's preprocessing
scale). Its gradient at ``u = 0`` says, to first order, how much each decoder row would raise
the topic's likelihood against the reference's if it were added; the ``trained`` rule follows
the same margin uphill with a fixed norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hf_sae_steer.models import model_device, pad_token_id
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.sites.hooks import hook_site
from hf_sae_steer.sites.layouts import ModelLayout
from hf_sae_steer.sites.names import Site

MAX_TOKENS = 24  # per text: the topic shows in its first words; longer texts only cost time


class TopicMargin:
    """The margin of ``alignment`` over ``reference`` texts under an added vector, batched.

    ``sae`` must sit beside the hooked block (device) in float32. ``reference`` is subsampled to
    ``batch`` texts per call, with a generator seeded by ``seed`` (deterministic runs). ``rule``
    names the rule that reads the margin, in the error raised when a set has no text of two
    tokens or more (a one-token text has no next token to be likely).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        layout: ModelLayout,
        site: Site,
        sae: SAE,
        alignment: Sequence[str],
        reference: Sequence[str],
        *,
        batch: int = 8,
        seed: int = 0,
        rule: str = "output",
    ) -> None:
        self.model, self.layout, self.site, self.sae = model, layout, site, sae
        self.device = model_device(model)
        self.pad = pad_token_id(tokenizer)
        self.align = self._encode(tokenizer, alignment)
        self.ref = self._encode(tokenizer, reference)
        for name, rows in (("alignment", self.align), ("reference", self.ref)):
            if not rows:
                raise ValueError(
                    f"{rule}: every {name} text is a single token, and the {rule} rule reads how "
                    "likely a text's next tokens are: give texts of two tokens or more (a "
                    "sentence or more)."
                )
        self.batch = batch
        self.generator = torch.Generator().manual_seed(seed)

    def _encode(self, tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
        ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        return [list(t)[:MAX_TOKENS] for t in ids if len(t) >= 2]

    def _pick(self, rows: list[list[int]]) -> list[list[int]]:
        if len(rows) <= self.batch:
            return rows
        index = torch.randperm(len(rows), generator=self.generator)[: self.batch]
        return [rows[i] for i in index.tolist()]

    def _padded(self, rows: list[list[int]]) -> tuple[Tensor, Tensor]:
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, seq in enumerate(rows):
            ids[r, : len(seq)], mask[r, : len(seq)] = torch.tensor(seq), 1
        return ids.to(self.device), mask.to(self.device)

    def mean_logp(self, rows: list[list[int]], u: Tensor | None) -> Tensor:
        """The mean over ``rows`` of each text's mean token log-likelihood, ``u`` added."""
        ids, mask = self._padded(rows)
        handles = [] if u is None else hook_site(self.layout, self.site, self._adder(u))
        try:
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        finally:
            for handle in handles:
                handle.remove()
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
        token = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        scored = mask[:, 1:].float()
        return ((token * scored).sum(1) / scored.sum(1).clamp_min(1)).mean()

    def _adder(self, u: Tensor) -> Any:
        sae = self.sae

        def edit(x: Tensor) -> Tensor:
            _, info = sae.preprocess(x.detach().float())
            return x + sae.scale_change(u.to(x.device, torch.float32), info).to(x.dtype)

        return edit

    def __call__(self, u: Tensor | None, *, kl_weight: float = 0.0) -> Tensor:
        """``margin(u)`` on the alignment texts and a resample of the reference texts; with
        ``kl_weight`` the LM+KL objective instead: ``logp(alignment) − w · KL(base ‖ steered)``
        on the reference texts."""
        align = self.mean_logp(self.align, u)
        ref_rows = self._pick(self.ref)
        if kl_weight <= 0:
            return align - self.mean_logp(ref_rows, u)
        return align - kl_weight * self.kl(ref_rows, u)

    def kl(self, rows: list[list[int]], u: Tensor) -> Tensor:
        """Mean per-token ``KL(base ‖ steered)`` of the next-token distributions on ``rows``."""
        ids, mask = self._padded(rows)
        with torch.no_grad():
            base = F.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        handles = hook_site(self.layout, self.site, self._adder(u))
        try:
            steered = F.log_softmax(
                self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1
            )
        finally:
            for handle in handles:
                handle.remove()
        per_token = (base.exp() * (base - steered)).sum(-1)
        return (per_token * mask).sum() / mask.sum().clamp_min(1)

    def gradient(self) -> Tensor:
        """``∂ margin / ∂ u`` at ``u = 0`` (float64, CPU): one backward pass over all texts."""
        u = torch.zeros(self.sae.d_in, dtype=torch.float32, device=self.device, requires_grad=True)
        total = torch.zeros(self.sae.d_in, dtype=torch.float64)
        for rows, sign in ((self.align, 1.0), (self.ref, -1.0)):
            for start in range(0, len(rows), self.batch):  # a batch at a time: bounded memory
                chunk = rows[start : start + self.batch]
                with torch.enable_grad():
                    part = self.mean_logp(chunk, u) * (sign * len(chunk) / len(rows))
                    (grad,) = torch.autograd.grad(part, u)
                total += grad.double().cpu()
        return total
