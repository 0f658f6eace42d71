"""Passes over prompts: batched forward passes to the site, SAE encoding, per-prompt summaries
and the sums scoring needs, with memory bounded by the batch and not by the prompt set."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hf_sae_steer.models import pad_token_id
from hf_sae_steer.sae.base import SAE, NormInfo, SparseCode
from hf_sae_steer.sites.hooks import run_to_site
from hf_sae_steer.sites.layouts import ModelLayout
from hf_sae_steer.sites.names import Site

Summary = Literal["avg", "max", "counts"]
SUMMARIES: tuple[Summary, ...] = get_args(Summary)
# Tokens per SAE call: bounds the dense [tokens, d_sae] pre-activations (~256 MB at 32k latents).
TOKEN_SLICE = 2048


@dataclass
class PromptPasses:
    """Batched forward passes to the site, SAE encoding and per-prompt summaries."""

    model: nn.Module
    tokenizer: Any
    layout: ModelLayout
    site: Site
    sae: SAE
    device: torch.device
    skip_first: bool = True
    batch_size: int = 16
    max_length: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.pad_id = pad_token_id(self.tokenizer)

    def windows(
        self, prompts: Sequence[str], limit: int | None = None
    ) -> list[tuple[int, list[int]]]:
        """(prompt index, token ids) per window, longest prompts first, windows in order."""
        cut = {"truncation": True, "max_length": limit} if limit else {}
        ids = self.tokenizer(list(prompts), verbose=False, **cut)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        n = self.max_length or max(len(t) for t in ids) or 1
        return [(i, ids[i][s : s + n]) for i in order for s in range(0, len(ids[i]), n)]

    def summaries(
        self,
        prompts: Sequence[str],
        summary: Summary,
        desc: str,
        on_tokens: Callable[[Tensor, Tensor, NormInfo], None] | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(prompt indices, raw summaries [m, d_sae])`` as prompts complete."""
        windows = self.windows(prompts, limit)
        left = {i: 0 for i in range(len(prompts))}
        for i, _ in windows:
            left[i] += 1
        empty = [i for i, n in left.items() if n == 0]  # no tokens at all: a zero summary
        if empty:
            yield torch.tensor(empty), torch.zeros(len(empty), self.sae.d_sae)
        pending: dict[int, Tensor] = {}
        bar = tqdm(total=len(windows), desc=desc, unit="seq", disable=not self.progress)
        step = max(1, int(self.batch_size))
        for start in range(0, len(windows), step):
            batch = windows[start : start + step]
            raw = self._batch(batch, summary, on_tokens)
            done, rows = [], []
            for row, (i, _) in enumerate(batch):
                acc = pending.pop(i, None)
                cur = raw[row] if acc is None else _combine(acc, raw[row], summary)
                left[i] -= 1
                if left[i]:
                    pending[i] = cur
                else:
                    done.append(i)
                    rows.append(cur)
            bar.update(len(batch))
            if done:
                yield torch.tensor(done), torch.stack(rows)
        bar.close()

    def accumulate(
        self, prompts: Sequence[str], summary: Summary, d2: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``sum_i d_i^2 a_if``, ``sum_i a_if`` and per-latent firing counts over ``prompts``."""
        num = torch.zeros(self.sae.d_sae, dtype=torch.float64)
        den = torch.zeros(self.sae.d_sae, dtype=torch.float64)
        counts = torch.zeros(self.sae.d_sae, dtype=torch.int64)
        for idx, raw in self.summaries(prompts, summary, "reference"):
            raw = raw.double()
            total = raw.sum(dim=1, keepdim=True)
            a = torch.where(total > 0, raw / total.clamp_min(1e-30), 0.0)  # 0/0 -> 0
            num += d2[idx] @ a
            den += a.sum(dim=0)
            counts += (a > 0).sum(dim=0)
        return num, den, counts

    def alignment_stats(
        self, prompts: Sequence[str], limit: int | None
    ) -> tuple[Tensor, float | None]:
        """Per-latent count of alignment prompts it fires on, and the SAE's FVU on them.

        Only the first ``limit`` tokens of each prompt are read (``None``: all of them).
        """
        sse = sum_sq = count = 0.0
        total = torch.zeros(self.sae.d_in, dtype=torch.float64)

        def on_tokens(x: Tensor, z: Tensor, info: NormInfo) -> None:
            nonlocal sse, sum_sq, count
            if self.sae.k is not None:  # k-sparse: decode the k selected latents only
                top = z.topk(self.sae.k, dim=-1)
                recon = self.sae.decode_code(SparseCode(top.indices, top.values), info)
            else:
                recon = self.sae.decode(z, info)
            sse += float((x - recon).pow(2).sum(dtype=torch.float64))
            sum_sq += float(x.pow(2).sum(dtype=torch.float64))
            total.add_(x.sum(dim=0, dtype=torch.float64).cpu())
            count += x.shape[0]

        counts = torch.zeros(self.sae.d_sae, dtype=torch.int64)
        for _, raw in self.summaries(prompts, "counts", "alignment", on_tokens, limit):
            counts += (raw > 0).sum(dim=0)
        variance = sum_sq - float(total.pow(2).sum()) / max(count, 1)
        return counts, (sse / variance if variance > 0 else None)

    def _batch(
        self,
        batch: list[tuple[int, list[int]]],
        summary: Summary,
        on_tokens: Callable[[Tensor, Tensor, NormInfo], None] | None,
    ) -> Tensor:
        """Raw (unnormalised) summaries ``[len(batch), d_sae]`` of one batch of windows."""
        width = max(len(ids) for _, ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        # Right padding whatever the tokenizer says: under causal attention the real tokens
        # never see the pads after them, and their positions start at 0 as when run alone.
        for row, (_, ids) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        inputs = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
        hidden = run_to_site(self.model, self.layout, self.site, **inputs)
        keep = mask.bool()
        if self.skip_first:
            keep[:, 0] = False  # each window's first token (right padding: never a pad)
        # Boolean selection keeps pads out of every sum; the kept tokens come out window by
        # window, so each window is one contiguous segment of x_all.
        x_all = hidden[keep.to(hidden.device)].to(self.sae.device, torch.float32)
        sizes = keep.sum(dim=1).tolist()
        ends = keep.sum(dim=1).cumsum(0).tolist()
        out = torch.zeros(len(batch), self.sae.d_sae, device=self.sae.device)
        for s in range(0, x_all.shape[0], TOKEN_SLICE):
            x = x_all[s : s + TOKEN_SLICE]
            xp, info = self.sae.preprocess(x)
            z = self.sae.activate(self.sae.encode_pre(xp))
            if on_tokens is not None:
                on_tokens(x, z, info)
            for row, (size, end) in enumerate(zip(sizes, ends, strict=True)):
                lo, hi = max(end - size, s), min(end, s + x.shape[0])
                if lo < hi:
                    out[row] = _combine(out[row], _reduce(z[lo - s : hi - s], summary), summary)
        return out.cpu()


def _reduce(z: Tensor, summary: Summary) -> Tensor:
    """One window's tokens ``[t, d_sae]`` -> its raw summary (activations are >= 0)."""
    if summary == "max":
        return z.amax(dim=0)
    return (z != 0).sum(dim=0).float() if summary == "counts" else z.sum(dim=0)


def _combine(acc: Tensor, new: Tensor, summary: Summary) -> Tensor:
    return torch.maximum(acc, new) if summary == "max" else acc + new
