"""A second topic measure of an evaluation: the same continuations judged again, by another
classifier and centroid, and summarised as an :class:`~hf_sae_steer.evaluation.result.EvalResult`
of their own, with nothing generated again.

The demo's evaluation judges its continuations by a classifier from another source than the fit
texts, and reports the classifier trained on the fit texts themselves beside it; both read the
very same texts, so the two tables differ only in the judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hf_sae_steer.data.embedders import embed_prompts
from hf_sae_steer.evaluation.classifier import TopicClassifier
from hf_sae_steer.evaluation.metrics import relevance_of_embeddings
from hf_sae_steer.evaluation.result import EvalResult, Key, summarise
from hf_sae_steer.evaluation.sweep import NEAREST_K


def remeasure(
    result: EvalResult, embedder: Any, alignment: Sequence[str], classifier: TopicClassifier
) -> EvalResult:
    """``result`` with every continuation's cosine (to the centroid of ``alignment``), nearest
    cosine and ``P(topic)`` (by ``classifier``) measured anew, every row summarised again with
    the same bootstrap; perplexity, repetition and speed are the original's. ``embedder`` must
    be the one ``classifier`` was trained with."""
    if not result.samples:
        raise ValueError("The evaluation has no continuations to measure.")
    texts = list(alignment)
    records = [dict(s) for s in result.samples]
    (emb, align_emb), _ = embed_prompts(
        embedder, [[r["continuation"] for r in records], texts], progress=False
    )
    centroid, nearest = relevance_of_embeddings(emb, align_emb, k=NEAREST_K)
    p_topic = classifier.probability_of_embeddings(emb)
    for i, r in enumerate(records):
        r.update(relevance_centroid=float(centroid[i]), relevance_nearest=float(nearest[i]),
                 p_topic=float(p_topic[i]))  # fmt: skip
    # summarise() divides tokens by seconds: one "second" per row keeps each row's speed.
    timing: dict[Key, tuple[int, float]] = {
        (r["label"], r["strength"], r["norm_fraction"]): (r["tokens_per_s"], 1.0)
        for r in result.rows
    }
    c = result.config
    rows = summarise(records, timing, c["n_boot"], c["seed"])
    config = {
        **c,
        "nearest_k": min(NEAREST_K, len(texts)),
        "classifier_cv_auc": classifier.cv_auc,
        "classifier_examples": [classifier.n_positive, classifier.n_negative],
        "n_alignment": len(texts),
    }
    return EvalResult(rows=rows, samples=records, config=config)


def with_columns_of(result: EvalResult, other: EvalResult, prefix: str) -> EvalResult:
    """``result`` whose rows also carry ``other``'s relevance columns (means, intervals, paired
    gains) under ``prefix``, row matched to row by condition and point: one table of two
    judges of the same continuations."""
    names = ("relevance_centroid", "relevance_nearest", "p_topic")
    by_key = {(r["label"], r["strength"], r["norm_fraction"]): r for r in other.rows}
    rows = []
    for r in result.rows:
        theirs = by_key[(r["label"], r["strength"], r["norm_fraction"])]
        extra = {
            prefix + k: v for k, v in theirs.items()
            if k.startswith(names) and not k.startswith(prefix)
        }  # fmt: skip
        rows.append({**r, **extra})
    return EvalResult(rows=rows, samples=result.samples, config=result.config)
