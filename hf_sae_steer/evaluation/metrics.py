"""What the evaluation measures: concept relevance (embedding cosine to the alignment set),
fluency (perplexity under the unsteered model, repeated n-grams) and bootstrap intervals."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hf_sae_steer.data.embedders import Embedder, embed_prompts
from hf_sae_steer.generation import TokenIds, perplexity

__all__ = ["TokenIds", "perplexity"]  # perplexity lives beside generation, re-exported here


def concept_relevance(
    texts: Sequence[str], alignment_embeddings: Tensor, embedder: Embedder, *, k: int = 5
) -> tuple[Tensor, Tensor]:
    """Cosine of each text's sentence embedding to the alignment set: ``(centroid, nearest)``.

    ``centroid[i]`` is the cosine to the L2-normalised mean of the (L2-normalised) alignment
    embeddings; ``nearest[i]`` is the mean cosine to the ``k`` most similar alignment texts (all
    of them when there are fewer than ``k``). Embeddings are L2-normalised here, so a callable
    embedder need not normalise. Returns two float64 tensors ``[len(texts)]``.
    """
    if not texts:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    (emb,), _ = embed_prompts(embedder, [list(texts)], progress=False)
    return relevance_of_embeddings(emb, alignment_embeddings, k=k)


def relevance_of_embeddings(
    embeddings: Tensor, alignment_embeddings: Tensor, *, k: int = 5
) -> tuple[Tensor, Tensor]:
    """:func:`concept_relevance` of texts already embedded: ``(centroid, nearest)``."""
    emb = F.normalize(embeddings.double(), dim=-1)
    align = F.normalize(torch.as_tensor(alignment_embeddings).double(), dim=-1)
    centroid = F.normalize(align.mean(dim=0), dim=0)
    sims = emb @ align.T
    nearest = sims.topk(min(k, align.shape[0]), dim=1).values.mean(dim=1)
    return emb @ centroid, nearest


def repeated_ngram_share(tokens: str | TokenIds, n: int = 3) -> float:
    """Share of the ``n``-gram occurrences whose ``n``-gram occurs more than once in ``tokens``.

    A string is split on whitespace; otherwise pass token ids. All distinct ``n``-grams give 0;
    one ``n``-gram repeated three or more times (``a b c a b c a b c``, or one token repeated)
    gives exactly 1: each of its occurrences, including the first, is a repeat. Fewer than
    ``n`` tokens have no ``n``-grams: 0.
    """
    seq = tokens.split() if isinstance(tokens, str) else list(tokens)
    grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(1 for g in grams if counts[g] > 1) / len(grams)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray | Tensor,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    groups: Sequence[Hashable] | None = None,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean and its percentile bootstrap interval (95% by default).

    With ``groups`` (e.g. the prompt of each continuation) whole groups are resampled, so
    several samples of one prompt count as one correlated unit. NaNs are dropped; no values
    give NaNs, one value (or one group) gives a zero-width interval.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    g = np.arange(x.size) if groups is None else np.asarray(list(groups), dtype=object)
    keep = np.isfinite(x)
    x, g = x[keep], g[keep]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    _, gid = np.unique(g.astype(str), return_inverse=True)
    sums = np.bincount(gid, weights=x)
    counts = np.bincount(gid).astype(np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, sums.size, size=(n_boot, sums.size))
    means = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(x.mean()), float(lo), float(hi)
