"""What the evaluation measures: concept relevance (embedding cosine to the alignment set),
fluency (perplexity under the unsteered model, repeated n-grams) and bootstrap intervals."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hf_sae_steer.models import model_device, pad_token_id
from hf_sae_steer.scoring.embedders import Embedder, embed_prompts

TokenIds = Sequence[int]


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


@torch.no_grad()
def perplexity(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str | TokenIds],
    continuations: Sequence[str | TokenIds],
    *,
    batch_size: int = 16,
    shard: tuple[int, int] = (0, 1),
) -> Tensor:
    """``exp(mean NLL)`` of each continuation's tokens given its prompt, under ``model`` as is.

    Call it on the unsteered model (no live SteeredModel, or inside ``steered.disabled()``).
    Strings are tokenised (prompts with the tokenizer's special tokens, continuations without);
    token ids are used as given. Sequences are right-padded and masked, so padding changes no
    score. An empty continuation has no perplexity: NaN. Returns float64 ``[n]``.

    ``shard=(i, n)`` computes only batches ``b`` with ``b mod n == i`` (the others stay NaN):
    the batches are those of the whole run, so n processes' shares merge into exactly its values.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations.")
    pairs = [
        (_ids(tokenizer, p, True), _ids(tokenizer, c, False))
        for p, c in zip(prompts, continuations, strict=True)
    ]
    out = torch.full((len(pairs),), math.nan, dtype=torch.float64)
    device = model_device(model)
    pad = pad_token_id(tokenizer)
    todo = sorted(
        (i for i, (_, c) in enumerate(pairs) if c), key=lambda i: -sum(map(len, pairs[i]))
    )
    for b, start in enumerate(range(0, len(todo), max(1, batch_size))):
        if b % shard[1] != shard[0]:
            continue
        rows = todo[start : start + batch_size]
        seqs = [pairs[i][0] + pairs[i][1] for i in rows]
        width = max(map(len, seqs))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        scored = torch.zeros(len(rows), width - 1, dtype=torch.bool)  # targets 1..width-1
        for r, i in enumerate(rows):
            p, c = pairs[i]
            ids[r, : len(p) + len(c)] = torch.tensor(p + c)
            mask[r, : len(p) + len(c)] = 1
            # A continuation token at position j is predicted from position j - 1; with an
            # empty prompt the first one has no context and is not scored.
            scored[r, max(len(p), 1) - 1 : len(p) + len(c) - 1] = True
        ids, mask = ids.to(device), mask.to(device)
        logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
        nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1).double().cpu()
        total = (nll * scored).sum(dim=1)
        count = scored.sum(dim=1)
        out[rows] = torch.where(count > 0, (total / count.clamp_min(1)).exp(), math.nan)
    return out


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


def _ids(tokenizer: Any, value: str | TokenIds, special: bool) -> list[int]:
    if isinstance(value, str):
        return list(tokenizer(value, add_special_tokens=special)["input_ids"])
    return [int(t) for t in value]
