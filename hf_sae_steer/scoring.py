"""Feature scores from an alignment set (METHOD.md §3) and their uncertainty report.

Scoring walks forward once per set: embed both sets, take each reference prompt's distance to
the alignment set, then run the model only up to the hooked site in batches, encode with the
SAE and accumulate ``sum_i d_i^2 a_if`` and ``sum_i a_if`` batch by batch, so memory is bounded
by the batch and not by the size of the reference set.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hf_sae_steer.data import DEFAULT_EMBEDDER, Embedder, embed_prompts, hash_prompts, load_prompts
from hf_sae_steer.report import TOP_K, ScoreReport, build_report
from hf_sae_steer.sae.base import SAE, NormInfo
from hf_sae_steer.sites import ModelLayout, Site, find_layout, run_to_site
from hf_sae_steer.steered import steering_suspended

SUMMARIES = ("avg", "max", "counts")
# Tokens per SAE call: bounds the dense [tokens, d_sae] pre-activations (~256 MB at 32k latents).
TOKEN_SLICE = 2048


@dataclass(repr=False)
class FeatureScores:
    """Per-latent scores in [0, 1] for one SAE at one site, with where they came from."""

    scores: Tensor
    coverage: float
    layer: int | None = None
    site: str | None = None
    summary: str | None = None
    sae_fingerprint: str | None = None
    sae_spec: str | None = None
    model_id: str | None = None
    embedder: str | None = None
    reference_size: int | None = None
    reference_hash: str | None = None
    alignment_size: int | None = None
    alignment_hash: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)
    quality: ScoreReport | None = None

    def __post_init__(self) -> None:
        self.scores = torch.as_tensor(self.scores, dtype=torch.float32).detach().cpu().flatten()
        self.coverage = float(self.coverage)

    @property
    def d_sae(self) -> int:
        return self.scores.numel()

    def __repr__(self) -> str:
        where = f"layer={self.layer}, site={self.site}, " if self.layer is not None else ""
        return (
            f"FeatureScores(d_sae={self.d_sae}, {where}summary={self.summary}, "
            f"coverage={self.coverage:.3f}, sae_fingerprint={self.sae_fingerprint})"
        )

    def report(self) -> ScoreReport:
        """Coverage, FVU, top latents firing on the alignment set, effective latents, warnings."""
        if self.quality is not None:
            return self.quality
        return build_report(self.scores, self.coverage, None, self.stats.get("align_fire_counts"))

    def top_latents(self, k: int = TOP_K) -> Tensor:
        """Indices of the ``k`` highest-scoring latents, best first."""
        return torch.topk(self.scores, min(k, self.d_sae)).indices

    # -- artifacts (hf_sae_steer.artifacts) ------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        from hf_sae_steer.artifacts import save_pretrained

        return save_pretrained(self, path)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        from hf_sae_steer.artifacts import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | Path, revision: str | None = None
    ) -> FeatureScores:
        from hf_sae_steer.artifacts import from_pretrained

        return from_pretrained(path_or_repo_id, revision=revision)

    @classmethod
    def from_csv(cls, path: str | Path, **metadata: Any) -> FeatureScores:
        from hf_sae_steer.artifacts import from_csv

        return from_csv(path, **metadata)

    # -- METHOD.md §3 ----------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        model: nn.Module,
        tokenizer: Any,
        sae: SAE,
        layer: int | None = None,
        site: str | None = None,
        *,
        reference: Any,
        alignment: Any,
        summary: str = "avg",
        skip_first_token: bool = True,
        embedder: Embedder = DEFAULT_EMBEDDER,
        batch_size: int = 16,
        max_length: int | None = None,
        embed_max_seq_length: int | None = None,
        report_max_tokens: int | None = 256,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> FeatureScores:
        """Score every latent of ``sae`` by how close the prompts it fires on are to ``alignment``.

        >>> scores = FeatureScores.fit(model, tok, sae, layer=9, site="resid_post",
        ...                            reference=load_prompts("ref.csv"),
        ...                            alignment=load_prompts("med.csv"), summary="avg")
        >>> scores.scores.shape, scores.coverage, scores.report().warnings

        ``reference``/``alignment`` take anything :func:`load_prompts` does. ``embedder`` is a
        sentence-transformers id or path, a ``SentenceTransformer``, or any callable
        ``list[str] -> Tensor[n, dim]`` (used as is). Prompts longer than ``max_length`` (default:
        the model's context) are scored in windows of that length, each a fresh sequence. The
        report's alignment statistics (FVU, latents firing) read the first ``report_max_tokens``
        tokens of each alignment text (``None``: all): about the text the embedder reads.
        """
        if summary not in SUMMARIES:
            raise ValueError(f"Unknown summary {summary!r}; use one of {', '.join(SUMMARIES)}.")
        reference, alignment = load_prompts(reference), load_prompts(alignment)
        layout = find_layout(model)
        where = _resolve_site(sae, layout, layer, site)
        device = torch.device(device) if device is not None else _model_device(model)
        runner = _Runner(
            model,
            tokenizer,
            layout,
            where,
            _sae_on(sae, device),
            device,
            skip_first=skip_first_token,
            batch_size=batch_size,
            max_length=max_length or _context_length(model, tokenizer),
            progress=progress,
        )

        # Embeddings first: d_i must be known before the SAE pass to accumulate per batch.
        (ref_emb, align_emb), embedder_name = embed_prompts(
            embedder, [reference, alignment], device, embed_max_seq_length, progress
        )
        d2 = torch.cdist(ref_emb, align_emb).min(dim=1).values.pow(2)

        was_training = model.training
        model.eval()  # dropout would make the summaries random
        try:
            with torch.inference_mode(), steering_suspended(model):  # score the base model
                align_counts, fvu = runner.alignment_stats(alignment, report_max_tokens)
                num, den, ref_counts = runner.accumulate(reference, summary, d2)
        finally:
            model.train(was_training)

        fired = den > 0
        raw_scores = torch.where(fired, num / den.clamp_min(1e-300), 0.0)
        scores = normalise(raw_scores, fired)
        coverage = float(fired.double().mean())
        report = build_report(scores, coverage, fvu, align_counts)
        for note in report.warnings:
            warnings.warn(note, stacklevel=2)
        return cls(
            scores=scores,
            coverage=coverage,
            layer=where.layer,
            site=where.kind,
            summary=summary,
            sae_fingerprint=sae.fingerprint(),
            sae_spec=sae.cfg.spec,
            model_id=_model_id(model),
            embedder=embedder_name,
            reference_size=len(reference),
            reference_hash=hash_prompts(reference),
            alignment_size=len(alignment),
            alignment_hash=hash_prompts(alignment),
            options={
                "skip_first_token": skip_first_token,
                "max_length": runner.max_length,
                "embed_max_seq_length": embed_max_seq_length,
                "report_max_tokens": report_max_tokens,
            },
            stats={
                "raw_scores": raw_scores.float(),
                "mass": den.float(),
                "ref_fire_counts": ref_counts,
                "align_fire_counts": align_counts,
            },
            quality=report,
        )


def normalise(raw: Tensor, fired: Tensor) -> Tensor:
    """``s = 1 - (r - min r) / max(r - min r)`` over the latents that fired; 0 for the others.

    When every fired latent has the same ``r`` they are all equally close: each gets 1.
    """
    scores = torch.zeros(raw.shape, dtype=torch.float64)
    if fired.any():
        r = raw.double()[fired]
        r = r - r.min()
        top = r.max()
        scores[fired] = 1 - r / top if top > 0 else 1.0
    return scores.float()


@dataclass
class _Runner:
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
        pad = getattr(self.tokenizer, "pad_token_id", None)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        self.pad_id = pad if pad is not None else eos if eos is not None else 0

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
        summary: str,
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
        self, prompts: Sequence[str], summary: str, d2: Tensor
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
                recon = self.sae.decode_sparse(top.indices, top.values, info)
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
        summary: str,
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


def _reduce(z: Tensor, summary: str) -> Tensor:
    """One window's tokens ``[t, d_sae]`` -> its raw summary (activations are >= 0)."""
    if summary == "max":
        return z.amax(dim=0)
    return (z != 0).sum(dim=0).float() if summary == "counts" else z.sum(dim=0)


def _combine(acc: Tensor, new: Tensor, summary: str) -> Tensor:
    return torch.maximum(acc, new) if summary == "max" else acc + new


def _resolve_site(sae: SAE, layout: ModelLayout, layer: int | None, site: str | None) -> Site:
    layer = layer if layer is not None else sae.cfg.layer
    kind = site if site is not None else sae.cfg.site
    if layer is None or kind is None:
        raise ValueError(
            "Where should the SAE read the model? Pass layer= and site= (e.g. layer=9, "
            "site='resid_post'): the SAE's config does not name "
            + (
                "its layer or site."
                if layer is None and kind is None
                else "its layer."
                if layer is None
                else "its site."
            )
        )
    layout.check_layer(layer)
    return Site(layer % layout.n_layers, kind)


def _sae_on(sae: SAE, device: torch.device) -> SAE:
    """The SAE in float32 on ``device``; a copy when it lives elsewhere (the caller's is kept)."""
    if sae.device == device and sae.dtype == torch.float32:
        return sae
    return copy.deepcopy(sae).to(device=device, dtype=torch.float32)


def _model_device(model: nn.Module) -> torch.device:
    param = next((p for p in model.parameters() if p.device.type != "meta"), None)
    return param.device if param is not None else torch.device("cpu")


def _context_length(model: nn.Module, tokenizer: Any) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 10**7 else None


def _model_id(model: nn.Module) -> str | None:
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return name or None
