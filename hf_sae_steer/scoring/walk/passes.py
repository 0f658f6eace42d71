"""Passes over prompts: batched forward passes to the site, SAE encoding, and the sums that the
selection rules and the uncertainty report need.

Everything a pass produces is a *sum* (:class:`ScoringSums`), so prompts can be fed in any
order and in any number of chunks, from a list or a stream, in one process or several: the
sums of the parts add up to the sums of the whole. Memory is bounded by a batch and ``d_sae``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hf_sae_steer.data.long_prompts import needs_pieces, prompt_windows, special_ids
from hf_sae_steer.models import pad_token_id
from hf_sae_steer.sae.base import SAE, NormInfo, SparseCode
from hf_sae_steer.sites.hooks import run_to_site
from hf_sae_steer.sites.layouts import ModelLayout
from hf_sae_steer.sites.names import Site

Summary = Literal["avg", "max", "counts"]
SUMMARIES: tuple[Summary, ...] = get_args(Summary)
# Tokens per SAE call: bounds the dense [tokens, d_sae] pre-activations (~256 MB at 32k latents).
TOKEN_SLICE = 2048
OnTokens = Callable[[Tensor, Tensor, Tensor, NormInfo], None]
# A fit's progress(phase, done, total): "alignment" once its texts are passed, "reference" after
# each chunk of the walk (total None: a stream of unknown size), "rule" before the rule runs.
# Raising from it stops the fit; the model is left as it was.
ProgressCallback = Callable[[str, int, int | None], None]


def _zeros(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.zeros(n, dtype=dtype)


@dataclass
class ScoringSums:
    """Additive statistics of a scoring run (float64 / int64, on CPU).

    Reference prompts, per latent ``f``: ``num = Σ_i d_i² a_if``, ``den = Σ_i a_if`` (§3 of
    ``docs/method.md``), ``ref_prompts`` = prompts it fires on. Reference tokens: their count,
    the sums of their hidden states in the SAE's input space (``x_sum``) and raw (``x_raw_sum``),
    of their norms, and per latent the activation sum and count of active tokens. Alignment:
    the same token sums, prompts each latent fires on, per latent the activation sum and count
    of active tokens, and the SAE's squared error.
    """

    d_in: int
    d_sae: int
    num: Tensor = field(init=False)
    den: Tensor = field(init=False)
    ref_prompts: Tensor = field(init=False)
    ref_n: Tensor = field(init=False)
    ref_tokens: Tensor = field(init=False)
    ref_x_sum: Tensor = field(init=False)
    ref_x_raw_sum: Tensor = field(init=False)
    ref_norm_sum: Tensor = field(init=False)
    ref_norm_raw_sum: Tensor = field(init=False)
    act_sum: Tensor = field(init=False)
    act_tokens: Tensor = field(init=False)
    align_prompts: Tensor = field(init=False)
    align_n: Tensor = field(init=False)
    align_tokens: Tensor = field(init=False)
    align_x_sum: Tensor = field(init=False)
    align_x_raw_sum: Tensor = field(init=False)
    align_sq_sum: Tensor = field(init=False)
    align_sse: Tensor = field(init=False)
    align_act_sum: Tensor = field(init=False)
    align_act_tokens: Tensor = field(init=False)

    def __post_init__(self) -> None:
        d, n = self.d_in, self.d_sae
        shapes = {
            "num": (n, torch.float64), "den": (n, torch.float64),
            "ref_prompts": (n, torch.int64), "ref_n": (1, torch.int64),
            "ref_tokens": (1, torch.int64), "ref_x_sum": (d, torch.float64),
            "ref_x_raw_sum": (d, torch.float64), "ref_norm_sum": (1, torch.float64),
            "ref_norm_raw_sum": (1, torch.float64), "act_sum": (n, torch.float64),
            "act_tokens": (n, torch.int64), "align_prompts": (n, torch.int64),
            "align_n": (1, torch.int64), "align_tokens": (1, torch.int64),
            "align_x_sum": (d, torch.float64), "align_x_raw_sum": (d, torch.float64),
            "align_sq_sum": (1, torch.float64), "align_sse": (1, torch.float64),
            "align_act_sum": (n, torch.float64), "align_act_tokens": (n, torch.int64),
        }  # fmt: skip
        for name, (size, dtype) in shapes.items():
            setattr(self, name, _zeros(size, dtype))

    def tensors(self) -> dict[str, Tensor]:
        """Every sum by name (what a checkpoint stores and what processes all-reduce)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.init}

    def load(self, tensors: dict[str, Tensor]) -> ScoringSums:
        """Set every sum from ``tensors`` (as returned by :meth:`tensors`); returns self."""
        for name, value in self.tensors().items():
            got = tensors[name]
            if got.shape != value.shape:
                raise ValueError(
                    f"Sum {name!r} has shape {tuple(got.shape)}, not {tuple(value.shape)}."
                )
            setattr(self, name, got.to("cpu", value.dtype).clone())
        return self

    def non_finite(self) -> str | None:
        """The name of the first sum holding NaN or inf, or None when every sum is finite."""
        for name, value in self.tensors().items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                return name
        return None

    def add(self, other: ScoringSums) -> ScoringSums:
        for name, value in self.tensors().items():
            value += getattr(other, name)
        return self

    # -- derived quantities ----------------------------------------------------------------
    @property
    def fired(self) -> Tensor:
        """Latents with a non-zero summary on at least one reference prompt."""
        return self.den > 0

    def reference_mean(self, raw: bool = False) -> Tensor:
        return (self.ref_x_raw_sum if raw else self.ref_x_sum) / max(int(self.ref_tokens), 1)

    def alignment_mean(self, raw: bool = False) -> Tensor:
        return (self.align_x_raw_sum if raw else self.align_x_sum) / max(int(self.align_tokens), 1)

    def mean_norm(self, raw: bool = False) -> float:
        """Mean norm of a reference token's hidden state (in the SAE's input space, or raw)."""
        total = self.ref_norm_raw_sum if raw else self.ref_norm_sum
        return float(total) / max(int(self.ref_tokens), 1)

    def typical_activation(self) -> Tensor:
        """Per latent, its mean value on the reference tokens where it is active (0 if never)."""
        return torch.where(self.act_tokens > 0, self.act_sum / self.act_tokens.clamp_min(1), 0.0)

    def fvu(self) -> float | None:
        """The SAE's fraction of variance unexplained on the alignment tokens' hidden states."""
        count = int(self.align_tokens)
        mean_sq = float(self.align_x_raw_sum.pow(2).sum()) / max(count, 1)
        variance = float(self.align_sq_sum) - mean_sq
        return float(self.align_sse) / variance if variance > 0 else None


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
        self.specials = special_ids(self.tokenizer)

    def add_reference(
        self, prompts: Sequence[str], d2: Tensor, summary: Summary, sums: ScoringSums
    ) -> None:
        """Add reference ``prompts`` (with their squared distances ``d2`` to the alignment set)."""
        d2 = d2.to("cpu", torch.float64)

        def on_tokens(x: Tensor, xp: Tensor, z: Tensor, info: NormInfo) -> None:
            sums.ref_tokens += x.shape[0]
            sums.ref_x_sum += xp.sum(dim=0, dtype=torch.float64).cpu()
            sums.ref_x_raw_sum += x.sum(dim=0, dtype=torch.float64).cpu()
            sums.ref_norm_sum += xp.double().norm(dim=-1).sum().cpu()
            sums.ref_norm_raw_sum += x.double().norm(dim=-1).sum().cpu()
            sums.act_sum += z.sum(dim=0, dtype=torch.float64).cpu()
            sums.act_tokens += (z > 0).sum(dim=0).cpu()

        for idx, raw in self.summaries(prompts, summary, "reference", on_tokens):
            raw = raw.double()
            total = raw.sum(dim=1, keepdim=True)
            a = torch.where(total > 0, raw / total.clamp_min(1e-30), 0.0)  # 0/0 -> 0
            sums.num += d2[idx] @ a
            sums.den += a.sum(dim=0)
            sums.ref_prompts += (a > 0).sum(dim=0)
        sums.ref_n += len(prompts)

    def add_alignment(
        self, prompts: Sequence[str], sums: ScoringSums, limit: int | None = None
    ) -> None:
        """Add alignment ``prompts``: token sums, latents firing, the SAE's squared error.

        Only the first ``limit`` tokens of each prompt are read (``None``: all of them).
        """

        def on_tokens(x: Tensor, xp: Tensor, z: Tensor, info: NormInfo) -> None:
            if self.sae.k is not None:  # k-sparse: decode the k selected latents only
                top = z.topk(self.sae.k, dim=-1)
                recon = self.sae.decode_code(SparseCode(top.indices, top.values), info)
            else:
                recon = self.sae.decode(z, info)
            sums.align_sse += (x - recon).pow(2).sum(dtype=torch.float64).cpu()
            sums.align_sq_sum += x.pow(2).sum(dtype=torch.float64).cpu()
            sums.align_tokens += x.shape[0]
            sums.align_x_sum += xp.sum(dim=0, dtype=torch.float64).cpu()
            sums.align_x_raw_sum += x.sum(dim=0, dtype=torch.float64).cpu()
            sums.align_act_sum += z.sum(dim=0, dtype=torch.float64).cpu()
            sums.align_act_tokens += (z > 0).sum(dim=0).cpu()

        for _, raw in self.summaries(prompts, "counts", "alignment", on_tokens, limit):
            sums.align_prompts += (raw > 0).sum(dim=0)
        sums.align_n += len(prompts)

    # -- the batched pass ------------------------------------------------------------------
    def windows(
        self, prompts: Sequence[str], limit: int | None = None
    ) -> list[tuple[int, list[int]]]:
        """(prompt index, token ids) per window, longest prompts first, windows in order."""
        cut = {"truncation": True, "max_length": limit} if limit else {}
        ids = self.tokenizer(list(prompts), verbose=False, **cut)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        n = self.max_length or max(len(t) for t in ids) or 1
        return [(i, ids[i][s : s + n]) for i in order for s in range(0, len(ids[i]), n)]

    def is_long(self, prompt: str) -> bool:
        """Whether ``prompt`` is tokenized and passed a piece at a time (:mod:`long_prompts`)."""
        return needs_pieces(prompt) and self.specials is not None and bool(self.max_length)

    def summaries(
        self,
        prompts: Sequence[str],
        summary: Summary,
        desc: str,
        on_tokens: OnTokens | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(prompt indices, raw summaries [m, d_sae])`` as prompts complete."""
        short = [i for i, prompt in enumerate(prompts) if not self.is_long(prompt)]
        if short:
            for idx, raw in self._summaries([prompts[i] for i in short], summary, desc,
                                            on_tokens, limit):  # fmt: skip
                yield torch.tensor(short)[idx], raw
        for i, prompt in enumerate(prompts):
            if self.is_long(prompt):
                yield torch.tensor([i]), self._long_summary(prompt, summary, on_tokens, limit)

    def _long_summary(
        self, prompt: str, summary: Summary, on_tokens: OnTokens | None, limit: int | None
    ) -> Tensor:
        """The raw summary ``[1, d_sae]`` of a long prompt, its windows made and passed a batch
        at a time: memory bounded by a piece of text and a batch of windows."""
        assert self.specials is not None and self.max_length
        windows = prompt_windows(self.tokenizer, prompt, self.max_length, self.specials, limit)
        step = max(1, int(self.batch_size))
        acc: Tensor | None = None
        while batch := [(0, ids) for ids in itertools.islice(windows, step)]:
            raw = self._batch(batch, summary, on_tokens)
            for row in range(len(batch)):
                acc = raw[row] if acc is None else _combine(acc, raw[row], summary)
        return (acc if acc is not None else torch.zeros(self.sae.d_sae)).unsqueeze(0)

    def _summaries(
        self,
        prompts: Sequence[str],
        summary: Summary,
        desc: str,
        on_tokens: OnTokens | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
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

    def _batch(
        self, batch: list[tuple[int, list[int]]], summary: Summary, on_tokens: OnTokens | None
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
                on_tokens(x, xp, z, info)
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
