"""The cross-source judge: its files, its fixed held-out split, its AUCs and centroid against plain
computations, and the embedding cache."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from hf_sae_steer.evaluation.judges import (
    CachedEmbedder,
    JudgeTexts,
    build_judge,
    judge_split,
    load_judge_texts,
)

WORDS = ("fever", "cough", "pain", "river", "bridge", "wheat", "hall", "boat")
SICK = ["Fever: a hot body", "Cough: a sound of the chest", "Pain: what hurts", "Ache: pain again"]
PLACES = ["River: water that flows", "Bridge: a way over a river", "Hall: a large room",
          "Wheat: a grain", "Boat: it floats on a river", "Barn: a farm building"]  # fmt: skip


def embed(texts):
    """Counts of a few words (deterministic), as a sentence embedder would see them."""
    return torch.tensor([[float(t.lower().count(w)) for w in WORDS] + [1.0] for t in texts])


def texts_of(heads, n):
    """``n`` distinct lines built from ``heads`` (numbered, so each hashes differently)."""
    return [f"{h} ({i})" for i, h in zip(range(n), itertools.cycle(heads), strict=False)]


def plain_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def write_topic(root, positives, rows):
    (root / "sick").mkdir()
    (root / "sick" / "judge.txt").write_text("\n".join(positives) + "\n", encoding="utf-8")
    with open(root / "judge_negatives.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def test_the_split_is_fixed_and_holds_out_about_one_in_four():
    lines = [f"Word {i}: a definition" for i in range(2000)]
    held = [t for t in lines if judge_split(t) == "heldout"]
    assert [judge_split(t) for t in lines] == [judge_split(t) for t in lines]
    assert 0.21 < len(held) / len(lines) < 0.29
    texts = JudgeTexts.from_lists("x", lines[:40], lines[40:100])
    assert sorted(texts.positives + texts.heldout_positives) == sorted(lines[:40])
    assert not set(texts.positives) & set(texts.heldout_positives)
    assert all(judge_split(t) == "heldout" for t in texts.heldout_negatives)


def test_loading_keeps_out_negatives_that_touch_the_topic(tmp_path):
    rows = [{"text": t, "topics": []} for t in texts_of(PLACES, 40)]
    rows += [{"text": "Fever ward: a room for the sick", "topics": ["sick"]}]
    write_topic(tmp_path, texts_of(SICK, 30), rows)
    texts = load_judge_texts(tmp_path, "sick")
    negatives = texts.negatives + texts.heldout_negatives
    assert len(negatives) == 40 and not any("ward" in t for t in negatives)
    assert len(texts.positives + texts.heldout_positives) == 30
    with pytest.raises(FileNotFoundError, match="build_judges.py"):
        load_judge_texts(tmp_path, "food")


def test_auc_and_centroid_agree_with_plain_computations(tmp_path):
    positives, negatives = texts_of(SICK, 32), texts_of(PLACES, 48)
    texts = JudgeTexts.from_lists("sick", positives, negatives)
    transfer = (["a fever and a cough", "pain", "river pain"], ["a bridge", "the hall", "boat"])
    judge = build_judge(embed, texts, transfer=transfer)
    held = texts.heldout_positives + texts.heldout_negatives
    labels = [1] * len(texts.heldout_positives) + [0] * len(texts.heldout_negatives)
    p = judge.probability(held).tolist()
    assert judge.heldout_auc == pytest.approx(plain_auc(p, labels)) and judge.heldout_auc > 0.9
    p_transfer = judge.probability(transfer[0] + transfer[1]).tolist()
    assert judge.transfer_auc == pytest.approx(plain_auc(p_transfer, [1, 1, 1, 0, 0, 0]))
    # The centroid: the normalised mean of the normalised embeddings of the fit positives.
    rows = [[float(v) for v in e] for e in embed(texts.positives)]
    unit = [[v / sum(w * w for w in r) ** 0.5 for v in r] for r in rows]
    mean = [sum(col) / len(unit) for col in zip(*unit, strict=True)]
    norm = sum(v * v for v in mean) ** 0.5
    assert judge.centroid.tolist() == pytest.approx([v / norm for v in mean])
    cosine, prob = judge.measure(["fever and pain", "a river"])
    q = [float(v) for v in embed(["fever and pain"])[0]]
    q_norm = sum(v * v for v in q) ** 0.5
    expected = sum(a * b / (q_norm * norm) for a, b in zip(q, mean, strict=True))
    assert float(cosine[0]) == pytest.approx(expected)
    assert prob[0] > 0.5 > prob[1]
    assert judge.summary()["examples"] == [len(texts.positives), len(texts.negatives)]


def test_too_few_heldout_texts_is_one_clear_error():
    texts = JudgeTexts(topic="sick", positives=SICK, negatives=PLACES, heldout_positives=SICK[:1],
                       heldout_negatives=PLACES[:3])  # fmt: skip
    with pytest.raises(ValueError, match="at least two held-out texts"):
        build_judge(embed, texts)


def test_the_cache_embeds_each_text_once():
    calls = []

    def counting(texts):
        calls.append(list(texts))
        return embed(texts)

    cached = CachedEmbedder(counting)
    first = cached(["fever", "river", "fever"])
    second = cached(["river", "pain"])
    assert calls == [["fever", "river"], ["pain"]]
    assert torch.equal(first[0], first[2]) and torch.equal(first[1], second[0])
    assert torch.equal(second, embed(["river", "pain"]).double())
