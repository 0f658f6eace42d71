"""The topic classifier: AUC against a plain pairwise count, a learnable topic, calibration."""

from __future__ import annotations

import itertools

import pytest
import torch

from hf_sae_steer.evaluation.classifier import TopicClassifier, auc

TOPIC = ["fever and cough", "a fever again", "cough, fever, pain", "pain and fever", "fever"]
OTHER = ["the river flows", "a bridge of steel", "wheat and barley", "the old hall",
         "a quiet village", "boats on the lake", "the farmer sang"]  # fmt: skip


def embed(texts):
    """Counts of a few words, as a sentence embedder would see them (deterministic)."""
    words = ("fever", "cough", "pain", "river", "bridge", "wheat", "hall", "the", "a")
    return torch.tensor([[float(t.count(w)) for w in words] + [1.0] for t in texts])


def plain_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40,), generator=g).double()  # many ties
    labels = torch.randint(0, 2, (40,), generator=g)
    assert auc(scores, labels) == pytest.approx(plain_auc(scores.tolist(), labels.tolist()))
    assert auc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0 and auc([0.1, 0.9], [1, 0]) == 0.0
    with pytest.raises(ValueError, match="one positive and one negative"):
        auc([0.5, 0.6], [1, 1])


def test_a_learnable_topic():
    clf = TopicClassifier.fit(embed, TOPIC, OTHER)
    assert clf.cv_auc > 0.85 and (clf.n_positive, clf.n_negative) == (5, 7)
    p = clf.probability(["fever and pain", "the bridge over the river"])
    assert p[0] > 0.7 > 0.3 > p[1]
    assert clf.l2 in (1e-4, 1e-3, 1e-2, 1e-1)
    # Chosen by log-loss: on the training texts its probabilities average about the class share.
    mean_p = float(clf.probability(TOPIC + OTHER).mean())
    assert 0.25 < mean_p < 0.65
    with pytest.raises(ValueError, match="at least two texts of each class"):
        TopicClassifier.fit(embed, TOPIC[:1], OTHER)
