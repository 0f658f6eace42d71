"""A second judge of the same continuations: every cosine and P(topic) recomputed against plain
computations, everything else (perplexity, speed, the texts) kept, and the merged table."""

from __future__ import annotations

import math

import pytest
import torch

from hf_sae_steer.evaluation.classifier import TopicClassifier
from hf_sae_steer.evaluation.remeasure import remeasure, with_columns_of
from hf_sae_steer.evaluation.result import EvalResult, summarise

WORDS = ("fever", "pain", "cough", "river", "boat", "hall")
SICK = ["fever and pain", "a cough with fever", "pain in the chest", "fever, cough, pain"]
OTHER = ["a boat on the river", "the hall by the river", "a boat in the hall", "river water"]
TEXTS = {  # (label, norm fraction) -> one continuation per prompt
    ("orig", None): ["the river ran", "a hall", "boat and river"],
    ("add", 0.5): ["the fever ran", "a pain hall", "cough and river"],
    ("add", 1.0): ["fever fever", "pain and cough", "fever cough pain"],
}


def embed(texts):
    """Counts of a few words, plus a constant (deterministic; not normalised on purpose)."""
    return torch.tensor([[float(t.count(w)) for w in WORDS] + [0.5] for t in texts])


def evaluation() -> EvalResult:
    records = []
    for (label, rho), texts in TEXTS.items():
        for i, text in enumerate(texts):
            records.append({
                "label": label, "kind": "base" if label == "orig" else "steering",
                "method": None if label == "orig" else "add", "preserve_error": label != "orig",
                "strength": None if rho is None else 4 * rho, "norm_fraction": rho,
                "prompt_index": i, "sample": 0, "continuation": text, "n_tokens": 3,
                "relevance_centroid": 0.0, "relevance_nearest": 0.0, "p_topic": 0.5,
                "perplexity": 10.0 + i + (rho or 0.0) * 5, "repetition": 0.0,
            })  # fmt: skip
    timing = {("orig", None, None): (9, 3.0), ("add", 2.0, 0.5): (9, 1.5),
              ("add", 4.0, 1.0): (9, 0.5)}  # fmt: skip
    rows = summarise(records, timing, n_boot=200, seed=0)
    return EvalResult(rows, records, {"n_boot": 200, "seed": 0})


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def test_every_continuation_is_judged_anew_and_nothing_else_changes():
    result = evaluation()
    classifier = TopicClassifier.fit(embed, SICK, OTHER, folds=2)
    again = remeasure(result, embed, SICK, classifier)
    # plain cosine to the centroid of the unit-normalised alignment embeddings
    aligned = [unit(v) for v in embed(SICK).tolist()]
    centroid = unit([sum(col) / len(aligned) for col in zip(*aligned, strict=True)])
    for old, new in zip(result.samples, again.samples, strict=True):
        text = new["continuation"]
        assert text == old["continuation"] and new["perplexity"] == old["perplexity"]
        cosine = sum(a * b for a, b in zip(unit(embed([text])[0].tolist()), centroid, strict=True))
        assert new["relevance_centroid"] == pytest.approx(cosine)
        assert new["p_topic"] == pytest.approx(float(classifier.probability([text])[0]))
    assert result.samples[0]["p_topic"] == 0.5  # the original is left as it was
    for old, new in zip(result.rows, again.rows, strict=True):
        assert (new["label"], new["norm_fraction"]) == (old["label"], old["norm_fraction"])
        assert new["tokens_per_s"] == pytest.approx(old["tokens_per_s"])
        assert new["perplexity_ratio" if old["label"] != "orig" else "perplexity"] == (
            pytest.approx(old["perplexity_ratio" if old["label"] != "orig" else "perplexity"])
        )
    # the medical continuations gain on the new judge, paired against orig's
    strong = next(r for r in again.rows if r["norm_fraction"] == 1.0)
    assert strong["p_topic_delta"] > 0 and strong["relevance_centroid_delta"] > 0
    assert again.config["classifier_cv_auc"] == classifier.cv_auc
    assert again.config["classifier_examples"] == [len(SICK), len(OTHER)]


def test_the_merged_table_carries_both_judges_row_by_row():
    result = evaluation()
    again = remeasure(result, embed, SICK, TopicClassifier.fit(embed, SICK, OTHER, folds=2))
    merged = with_columns_of(result, again, "second_")
    for row, first, second in zip(merged.rows, result.rows, again.rows, strict=True):
        assert row["p_topic"] == first["p_topic"]
        assert row["second_p_topic"] == second["p_topic"]
        assert row["second_relevance_centroid_lo"] == second["relevance_centroid_lo"]
        assert "second_perplexity" not in row
        if first["label"] != "orig":
            assert row["second_p_topic_delta"] == second["p_topic_delta"]


def test_an_empty_evaluation_is_refused():
    classifier = TopicClassifier.fit(embed, SICK, OTHER, folds=2)
    with pytest.raises(ValueError, match="no continuations"):
        remeasure(EvalResult([], [], {}), embed, SICK, classifier)
