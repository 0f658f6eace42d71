"""Fitting feature scores from an alignment set (``docs/method.md`` §3): ``FeatureScores.fit``.

Scoring walks forward once per set: embed both sets, take each reference prompt's distance to
the alignment set, then run the model only up to the hooked site in batches, encode with the
SAE and accumulate the sums a selection rule needs, batch by batch, so memory is bounded by the
batch and not by the size of the reference set.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from hf_sae_steer.models import context_length, model_device, model_id
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scoring.embedders import DEFAULT_EMBEDDER, Embedder, embed_prompts
from hf_sae_steer.scoring.passes import SUMMARIES, PromptPasses, Summary
from hf_sae_steer.scoring.prompts import hash_prompts, load_prompts
from hf_sae_steer.scoring.record import FeatureScores
from hf_sae_steer.scoring.rules import normalise
from hf_sae_steer.scoring.uncertainty import build_report
from hf_sae_steer.sites.layouts import find_layout
from hf_sae_steer.sites.resolve import resolve_site
from hf_sae_steer.steering.live import steering_suspended


def fit(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    *,
    layer: int | None = None,
    site: str | None = None,
    reference: Any,
    alignment: Any,
    summary: Summary = "avg",
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

    >>> scores = FeatureScores.fit(model, tok, sae, layer=9, site="resid_post",  # doctest: +SKIP
    ...                            reference=load_prompts("ref.csv"),
    ...                            alignment=load_prompts("med.csv"), summary="avg")
    >>> scores.scores.shape, scores.coverage, scores.report().warnings

    ``layer``/``site`` default to where the SAE was trained
    (:func:`~hf_sae_steer.sites.resolve.resolve_site`). ``reference``/``alignment`` take anything
    :func:`~hf_sae_steer.scoring.prompts.load_prompts` does. ``embedder`` is a
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
    where = resolve_site(layout, layer, site, trained=sae.cfg)
    device = torch.device(device) if device is not None else model_device(model)
    passes = PromptPasses(
        model,
        tokenizer,
        layout,
        where,
        sae.placed(device, torch.float32),
        device,
        skip_first=skip_first_token,
        batch_size=batch_size,
        max_length=max_length or context_length(model, tokenizer),
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
            align_counts, fvu = passes.alignment_stats(alignment, report_max_tokens)
            num, den, ref_counts = passes.accumulate(reference, summary, d2)
    finally:
        model.train(was_training)

    fired = den > 0
    raw_scores = torch.where(fired, num / den.clamp_min(1e-300), 0.0)
    scores = normalise(raw_scores, fired)
    coverage = float(fired.double().mean())
    report = build_report(scores, coverage, fvu, align_counts)
    for note in report.warnings:
        warnings.warn(note, stacklevel=2)
    return FeatureScores(
        scores=scores,
        coverage=coverage,
        layer=where.layer,
        site=where.kind,
        summary=summary,
        sae_fingerprint=sae.fingerprint(),
        sae_spec=sae.cfg.spec,
        model_id=model_id(model),
        embedder=embedder_name,
        reference_size=len(reference),
        reference_hash=hash_prompts(reference),
        alignment_size=len(alignment),
        alignment_hash=hash_prompts(alignment),
        options={
            "skip_first_token": skip_first_token,
            "max_length": passes.max_length,
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
