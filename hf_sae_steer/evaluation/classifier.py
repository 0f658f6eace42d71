"""A topic classifier on sentence embeddings: the second relevance measure of the evaluation.

The centroid cosine alone rewards word salad made of topical word pieces; a classifier trained
to tell the alignment texts from the reference texts asks instead whether a continuation reads
like the topic. It is L2-regularised logistic regression on the (L2-normalised) embeddings,
classes weighted equally, its regularisation chosen by cross-validated log-loss (so its
probabilities are calibrated rather than squeezed towards 1/2), and it reports its own
cross-validated AUC so a reader can see how far to trust it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hf_sae_steer.data.embedders import embed_prompts

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
FOLDS = 5


def auc(scores: Sequence[float] | Tensor, labels: Sequence[int] | Tensor) -> float:
    """Area under the ROC curve: P(a random positive outranks a random negative), ties half."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    y = torch.as_tensor(labels).bool()
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        raise ValueError("AUC needs at least one positive and one negative example.")
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def fit_logistic(x: Tensor, y: Tensor, l2: float) -> tuple[Tensor, Tensor]:
    """``(weights, bias)`` of balanced, L2-regularised logistic regression (float64, LBFGS)."""
    x, y = x.double(), y.double()
    balance = torch.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> Tensor:
        optimiser.zero_grad()
        nll = F.binary_cross_entropy_with_logits(x @ w + b, y, weight=balance)
        total = nll + l2 * w.pow(2).sum()
        total.backward()
        return total

    with torch.enable_grad():
        optimiser.step(loss)
    return w.detach(), b.detach()


@dataclass
class TopicClassifier:
    """``P(topic | text)`` from a text's sentence embedding.

    >>> clf = TopicClassifier.fit(embedder, alignment_texts, reference_texts)  # doctest: +SKIP
    >>> clf.cv_auc, clf.probability(["The patient had a fever."])
    """

    weights: Tensor
    bias: Tensor
    embedder: Any
    cv_auc: float
    n_positive: int
    n_negative: int
    l2: float

    @classmethod
    def fit(
        cls,
        embedder: Any,
        positives: Sequence[str],
        negatives: Sequence[str],
        *,
        l2: Sequence[float] = L2_GRID,
        folds: int = FOLDS,
        seed: int = 0,
    ) -> TopicClassifier:
        """Train on ``positives`` (the alignment set) against ``negatives`` (the reference set).

        The L2 strength is the one of ``l2`` with the lowest balanced log-loss on out-of-fold
        predictions over ``folds`` stratified folds; ``cv_auc`` is those predictions' AUC.
        """
        (pos, neg), _ = embed_prompts(embedder, [list(positives), list(negatives)], progress=False)
        x = F.normalize(torch.cat([pos, neg]).double(), dim=-1)
        y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
        if min(len(pos), len(neg)) < 2:
            raise ValueError("The classifier needs at least two texts of each class.")
        fold_of = _stratified_folds(y, max(2, min(folds, len(pos), len(neg))), seed)
        best: tuple[float, float, Tensor] | None = None  # (log-loss, l2, out-of-fold logits)
        for strength in l2:
            logits = torch.empty(len(y), dtype=torch.float64)
            for fold in range(int(fold_of.max()) + 1):
                test = fold_of == fold
                w, b = fit_logistic(x[~test], y[~test], strength)
                logits[test] = x[test] @ w + b
            balance = torch.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
            loss = float(F.binary_cross_entropy_with_logits(logits, y, weight=balance))
            if best is None or loss < best[0]:
                best = (loss, strength, logits)
        assert best is not None
        w, b = fit_logistic(x, y, best[1])
        return cls(w, b, embedder, auc(best[2], y), len(pos), len(neg), best[1])

    def probability(self, texts: Sequence[str]) -> Tensor:
        """``P(topic)`` of each text, float64 ``[len(texts)]``."""
        if not texts:
            return torch.zeros(0, dtype=torch.float64)
        (emb,), _ = embed_prompts(self.embedder, [list(texts)], progress=False)
        return self.probability_of_embeddings(emb)

    def probability_of_embeddings(self, embeddings: Tensor) -> Tensor:
        """``P(topic)`` of texts already embedded (by the same embedder)."""
        return torch.sigmoid(F.normalize(embeddings.double(), dim=-1) @ self.weights + self.bias)


def _stratified_folds(y: Tensor, folds: int, seed: int) -> Tensor:
    """A fold number per example, each class spread evenly over the folds."""
    generator = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(len(y), dtype=torch.long)
    for label in (1.0, 0.0):
        members = torch.nonzero(y == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        fold_of[members] = torch.arange(len(members)) % folds
    return fold_of
