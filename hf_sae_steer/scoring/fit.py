"""Fitting feature scores from an alignment set (``docs/method.md`` §3, §6): ``FeatureScores.fit``.

Scoring walks forward once per set: embed the (small) alignment set and run it to the site,
then take the reference set in chunks: embed a chunk, take each prompt's distance to the
alignment set, run the model only up to the hooked site, encode with the SAE and add to the
sums (:class:`~hf_sae_steer.scoring.passes.ScoringSums`). A selection rule turns the sums into
scores; memory is bounded by a chunk and ``d_sae``, not by the size of the reference set.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hf_sae_steer.models import context_length, model_device, model_id
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scoring.calibration import NORM_FRACTION, recommend
from hf_sae_steer.scoring.embedders import DEFAULT_EMBEDDER, Embedder, embed_prompts, load_embedder
from hf_sae_steer.scoring.passes import SUMMARIES, PromptPasses, ScoringSums, Summary
from hf_sae_steer.scoring.prompts import hash_prompts, load_prompts
from hf_sae_steer.scoring.record import FeatureScores
from hf_sae_steer.scoring.rules import DEFAULT_RULE, RULES, Rule, apply_rule
from hf_sae_steer.scoring.uncertainty import build_report
from hf_sae_steer.sites.layouts import find_layout
from hf_sae_steer.sites.resolve import resolve_site
from hf_sae_steer.steering.live import steering_suspended

CHUNK = 1024  # reference prompts embedded and passed at a time


def fit(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    *,
    layer: int | None = None,
    site: str | None = None,
    reference: Any,
    alignment: Any,
    rule: Rule = DEFAULT_RULE,
    k: int | None = None,
    prior_prompts: float | None = None,
    norm_fraction: float = NORM_FRACTION,
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
    """Score every latent of ``sae`` for steering towards ``alignment``.

    >>> scores = FeatureScores.fit(model, tok, sae, layer=9, site="resid_post",  # doctest: +SKIP
    ...                            reference=load_prompts("ref.csv"),
    ...                            alignment=load_prompts("med.csv"))
    >>> scores.recommended, scores.report()

    ``rule`` picks the selection rule (:mod:`~hf_sae_steer.scoring.rules`): ``"mean_diff"`` (the
    default; ``k`` latents, 5 by default), ``"support"`` (``prior_prompts``, 5 by default) or
    ``"seed"``, the reference rule exactly. The artifact records the steering its rule
    recommends, at the strength of norm fraction ``norm_fraction``
    (:mod:`~hf_sae_steer.scoring.calibration`).

    ``layer``/``site`` default to where the SAE was trained
    (:func:`~hf_sae_steer.sites.resolve.resolve_site`). ``reference``/``alignment`` take anything
    :func:`~hf_sae_steer.scoring.prompts.load_prompts` does. ``embedder`` is a
    sentence-transformers id or path, a ``SentenceTransformer``, or any callable
    ``list[str] -> Tensor[n, dim]`` (used as is). Prompts longer than ``max_length`` (default:
    the model's context) are scored in windows of that length, each a fresh sequence. The
    alignment statistics (FVU, latents firing, its mean hidden state) read the first
    ``report_max_tokens`` tokens of each alignment text (``None``: all): about what the embedder
    reads.
    """
    if summary not in SUMMARIES:
        raise ValueError(f"Unknown summary {summary!r}; use one of {', '.join(SUMMARIES)}.")
    if rule not in RULES:
        raise ValueError(f"Unknown rule {rule!r}; use one of {', '.join(RULES)}.")
    given = {"k": k, "prior_prompts": prior_prompts}
    rule_options = {name: value for name, value in given.items() if value is not None}
    started = time.perf_counter()
    reference, alignment = load_prompts(reference), load_prompts(alignment)
    layout = find_layout(model)
    where = resolve_site(layout, layer, site, trained=sae.cfg)
    device = torch.device(device) if device is not None else model_device(model)
    placed = sae.placed(device, torch.float32)
    passes = PromptPasses(
        model,
        tokenizer,
        layout,
        where,
        placed,
        device,
        skip_first=skip_first_token,
        batch_size=batch_size,
        max_length=max_length or context_length(model, tokenizer),
        progress=progress,
    )
    embed_model, embedder_name = load_embedder(embedder, device)
    sums = ScoringSums(sae.d_in, sae.d_sae)
    was_training = model.training
    model.eval()  # dropout would make the summaries random
    try:
        with torch.inference_mode(), steering_suspended(model):  # score the base model
            (align_emb,), _ = embed_prompts(
                embed_model, [alignment], device, embed_max_seq_length, progress=False
            )
            passes.add_alignment(alignment, sums, report_max_tokens)
            for chunk in _chunks(reference, CHUNK):
                d2 = squared_distances(embed_model, chunk, align_emb, device, embed_max_seq_length)
                passes.add_reference(chunk, d2, summary, sums)
    finally:
        model.train(was_training)
    return from_sums(
        sums,
        sae,
        rule=rule,
        rule_options=rule_options,
        norm_fraction=norm_fraction,
        layer=where.layer,
        site=where.kind,
        summary=summary,
        model_id=model_id(model),
        embedder=embedder_name,
        reference_hash=hash_prompts(reference),
        alignment_hash=hash_prompts(alignment),
        options={
            "skip_first_token": skip_first_token,
            "max_length": passes.max_length,
            "embed_max_seq_length": embed_max_seq_length,
            "report_max_tokens": report_max_tokens,
            "fit_seconds": time.perf_counter() - started,
        },
    )


def squared_distances(
    embedder: Any,
    prompts: Sequence[str],
    align_emb: Tensor,
    device: torch.device | None = None,
    max_seq_length: int | None = None,
) -> Tensor:
    """``d_i²``: each prompt's squared distance to its nearest alignment text (§3, step 3)."""
    (emb,), _ = embed_prompts(embedder, [list(prompts)], device, max_seq_length, progress=False)
    return torch.cdist(emb, align_emb).min(dim=1).values.pow(2)


def from_sums(
    sums: ScoringSums,
    sae: SAE,
    *,
    rule: str,
    rule_options: dict[str, Any],
    norm_fraction: float,
    warn: bool = True,
    **fields: Any,
) -> FeatureScores:
    """The score record of a finished run: the rule's scores, its recommended steering, the
    uncertainty report (warned about, once, when ``warn``) and provenance ``fields``."""
    result = apply_rule(rule, sums, sae, **rule_options)
    coverage = float(sums.fired.double().mean())
    stats = {
        **result.stats,
        "mass": sums.den.float(),
        "ref_fire_counts": sums.ref_prompts,
        "align_fire_counts": sums.align_prompts,
        "typical_activation": sums.typical_activation().float(),
    }
    picked = int((result.scores > 0).sum()) if "latents" in result.stats else None
    report = build_report(
        result.scores,
        coverage,
        sums.fvu(),
        sums.align_prompts,
        sums.ref_prompts,
        result.delta_explained,
        top_k=picked,
    )
    if warn:
        for note in report.warnings:
            warnings.warn(note, stacklevel=3)
    try:
        recommended = recommend(rule, result.scores, stats, sae, sums.mean_norm(), norm_fraction)
    except ValueError:  # nothing to steer with (no latent fired, or no direction)
        recommended = None
    options = {**fields.pop("options", {}), "rule_options": result.options}
    return FeatureScores(
        scores=result.scores,
        coverage=coverage,
        sae_fingerprint=sae.fingerprint(),
        sae_spec=sae.cfg.spec,
        reference_size=int(sums.ref_n),
        alignment_size=int(sums.align_n),
        options=options,
        stats=stats,
        quality=report,
        rule=rule,
        recommended=recommended,
        calibration={"mean_norm": sums.mean_norm(), "mean_norm_raw": sums.mean_norm(raw=True)},
        **fields,
    )


def _chunks(items: Iterable[str], size: int) -> Iterable[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
