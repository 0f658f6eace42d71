"""Steering quality, measured: concept relevance against fluency for each method and strength.

No LLM judge is needed: relevance is the sentence-embedding cosine of a continuation to the
alignment set, fluency is the continuation's perplexity under the *unsteered* model and its
share of repeated 3-grams, cost is generated tokens per second. Every method sees the same
prompts and the same sampling seeds (common random numbers), so differences between methods
are not sampling noise between runs; intervals are 95% percentile bootstraps over prompts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from hf_sae_steer.evaluation.metrics import concept_relevance, perplexity, repeated_ngram_share
from hf_sae_steer.evaluation.result import EvalResult, label, summarise
from hf_sae_steer.generation import Generator, sampling_options
from hf_sae_steer.models import model_id
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scoring.embedders import DEFAULT_EMBEDDER, Embedder, embed_prompts, load_embedder
from hf_sae_steer.scoring.prompts import load_prompts
from hf_sae_steer.scoring.record import FeatureScores
from hf_sae_steer.sites.layouts import find_layout
from hf_sae_steer.sites.resolve import resolve_site
from hf_sae_steer.steering.interventions import METHODS, REFERENCE_METHODS, Method
from hf_sae_steer.steering.steered import Scores, SteeredModel

NEAREST_K = 5


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    scores: Scores,
    prompts: Any,
    alignment: Any,
    *,
    methods: Sequence[Method] = REFERENCE_METHODS,
    preserve_error: Sequence[bool] = (False, True),
    strengths: Sequence[float] = (0.5, 1.0, 2.0),
    samples: int = 3,
    max_new_tokens: int = 24,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 50,
    embedder: Embedder | None = None,
    layer: int | None = None,
    site: str | None = None,
    batch_size: int = 16,
    n_boot: int = 1000,
    progress: bool = True,
) -> EvalResult:
    """Generate from held-out ``prompts`` under each method x preserve_error x strength and
    measure concept relevance, fluency and cost against the unsteered ``orig`` baseline.

    >>> result = evaluate(model, tok, load_sae("storage/demo/sae"),              # doctest: +SKIP
    ...                   FeatureScores.from_pretrained("storage/demo/scores"),
    ...                   prompts="storage/demo/prompts.txt",
    ...                   alignment="storage/demo/alignment.txt", strengths=(1.0, 2.0))
    >>> print(result.to_markdown()); result.save("eval/")

    ``prompts``/``alignment`` take anything :func:`load_prompts` does; prompts should be held
    out from the alignment and reference sets. ``orig`` runs once (it ignores strength and
    preserve_error); ``sae`` with preserve_error is the identity and is reported as such.
    Sample ``j`` of every prompt uses the same seed under every configuration; results depend
    on ``batch_size`` only through which rows share a seeded batch. ``temperature <= 0`` is
    greedy decoding (then use ``samples=1``). ``embedder`` defaults to the scores' embedder.
    """
    prompt_texts, align_texts = load_prompts(prompts), load_prompts(alignment)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; use some of {', '.join(METHODS)}.")
    if samples < 1 or max_new_tokens < 1:
        raise ValueError("samples and max_new_tokens must be at least 1.")
    if not strengths and any(m != "orig" for m in methods):
        raise ValueError("Give at least one strength for the steering methods.")
    embed_model, embedder_name = _embedder_for(embedder, scores)  # loaded once, used twice
    sampling = sampling_options(
        max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=temperature,
        top_k=top_k, top_p=1.0,
    )  # fmt: skip
    gen = Generator(
        tokenizer, prompt_texts, samples=samples, seed=seed, batch_size=batch_size, options=sampling
    )
    where = resolve_site(
        find_layout(model), layer, site, scores=_artifact(scores), trained=sae.cfg, warn=False
    )
    groups = [("orig", None)] if "orig" in methods else []
    groups += [(m, bool(e)) for m in dict.fromkeys(methods) if m != "orig" for e in preserve_error]
    n_configs = sum(1 if m == "orig" else len(strengths) for m, _ in groups)
    records: list[dict[str, Any]] = []
    timing: dict[tuple, tuple[int, float]] = {}  # config -> (tokens, seconds)

    def run(target: nn.Module, method: str, keep_err: bool | None, strength: float | None) -> None:
        continuations, seconds = gen.run(target)
        timing[(method, keep_err, strength)] = (sum(c.steps for c in continuations), seconds)
        for c in continuations:
            records.append(
                {
                    "method": method,
                    "preserve_error": keep_err,
                    "strength": strength,
                    "label": label(method, keep_err),
                    "prompt_index": c.prompt_index,
                    "sample": c.sample,
                    "seed": c.seed,
                    "prompt": prompt_texts[c.prompt_index],
                    "continuation": c.text,
                    "n_tokens": len(c.token_ids),
                    "repetition": repeated_ngram_share(c.token_ids, 3),
                    "_ids": c.token_ids,
                }
            )

    clock = [time.perf_counter()]
    bar = tqdm(total=n_configs, desc="eval", unit="config", disable=not progress)
    was_training = model.training
    model.eval()
    try:
        gen.warm_up(model)
        for method, keep_err in groups:
            if method == "orig":  # the plain model: the unsteered baseline and its speed
                run(model, method, None, None)
                bar.update(1)
                continue
            with SteeredModel(
                model,
                sae,
                layer=where.layer,
                site=where.kind,
                method=method,  # type: ignore[arg-type]
                scores=scores,
                strength=strengths[0],
                preserve_error=bool(keep_err),
            ) as steered:  # no hooks survive, even on error
                for strength in strengths:
                    steered.set_strength(strength)  # cheap: no hook moves
                    run(steered, method, keep_err, float(strength))
                    bar.update(1)
        # Every hook is gone now, so this is the unsteered model's perplexity.
        prompt_ids = [gen.prompt_ids[r["prompt_index"]] for r in records]
        ids = [r.pop("_ids") for r in records]
        clock.append(time.perf_counter())
        ppl = perplexity(model, tokenizer, prompt_ids, ids, batch_size=batch_size)
        clock.append(time.perf_counter())
    finally:
        bar.close()
        model.train(was_training)
    (align_emb,), _ = embed_prompts(embed_model, [align_texts], progress=False)
    texts = [r["continuation"] for r in records]
    centroid, nearest = concept_relevance(texts, align_emb, embed_model, k=NEAREST_K)
    for r, c, n, p in zip(records, centroid.tolist(), nearest.tolist(), ppl.tolist(), strict=True):
        r.update(relevance_centroid=c, relevance_nearest=n, perplexity=p)
    clock.append(time.perf_counter())
    config = {
        "methods": list(methods),
        "preserve_error": [bool(e) for e in preserve_error],
        "strengths": [float(s) for s in strengths],
        "samples": samples,
        "seed": seed,
        **sampling,
        "batch_size": batch_size,
        "n_boot": n_boot,
        "embedder": embedder_name,
        "nearest_k": min(NEAREST_K, len(align_texts)),
        "layer": where.layer,
        "site": where.kind,
        "n_prompts": len(prompt_texts),
        "n_alignment": len(align_texts),
        "model": model_id(model),
        "sae": sae.cfg.spec,
        "sae_fingerprint": sae.fingerprint(),
        "seconds": dict(
            zip(("generate", "perplexity", "embed"), np.diff(clock).tolist(), strict=True)
        ),
    }
    rows = summarise(records, timing, n_boot, seed)
    return EvalResult(rows=rows, samples=records, config=config)


def _embedder_for(embedder: Embedder | None, scores: Any) -> tuple[Any, str]:
    """The given embedder, else the one the scores were fitted with, else the default."""
    if embedder is not None:
        return load_embedder(embedder, None)
    name = getattr(scores, "embedder", None) or DEFAULT_EMBEDDER
    try:
        return load_embedder(name, None)
    except Exception as err:  # e.g. the scores were fitted with a plain callable
        raise ValueError(
            f"Cannot load the embedder the scores were fitted with ({name!r}); pass embedder=."
        ) from err


def _artifact(scores: Scores) -> FeatureScores | None:
    return scores if isinstance(scores, FeatureScores) else None
