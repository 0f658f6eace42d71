"""A topic judge from another source: a classifier and a centroid built from texts about the topic
that share neither source nor style with the texts the steering is fitted on.

The benchmark's own measure (``eval.txt`` against ``negatives.jsonl``) comes from the same
WordNet lexicographer files, in the same gloss style, as the fit texts, so a steering that
reproduces the style can score as on-topic. A *judge* is trained on dictionary definitions
(``scripts/build_judges.py``: Webster's 1913 via GCIDE, ``Headword: definition.``) whose
headwords are none of the benchmark's lemmas:

- ``<topic>/judge.txt``: the topic's positives;
- ``judge_negatives.jsonl`` (beside the topic folders): a broad pool, each row with the
  ``topics`` it touches; a topic's negatives are the rows that do not touch it.

One line in four (:func:`judge_split`, a fixed hash of the text) is held out of the fit, so the
judge reports its AUC on texts it never saw (``heldout_auc``), besides its cross-validated AUC,
and, given the topic's WordNet texts, a *transfer* AUC: how well it tells the benchmark's
``eval.txt`` from the benchmark's negatives, a source it was not trained on either.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from hf_sae_steer.data.embedders import embed_prompts
from hf_sae_steer.evaluation.classifier import TopicClassifier, auc

JUDGE_FILE = "judge.txt"
NEGATIVES_FILE = "judge_negatives.jsonl"
HELDOUT_EVERY = 4  # one text in four is held out of the judge's fit

JudgeSplit = Literal["fit", "heldout"]


def judge_split(text: str) -> JudgeSplit:
    """Whether ``text`` is in the judge's fit or held out: a fixed hash, so every run agrees."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") % HELDOUT_EVERY == 0 else "fit"


@dataclass(frozen=True)
class JudgeTexts:
    """A topic's judge texts, split into the part the judge is fitted on and the held-out part."""

    topic: str
    positives: list[str]
    negatives: list[str]
    heldout_positives: list[str]
    heldout_negatives: list[str]

    @classmethod
    def from_lists(
        cls, topic: str, positives: Sequence[str], negatives: Sequence[str]
    ) -> JudgeTexts:
        """Split ``positives`` and ``negatives`` by :func:`judge_split`."""
        pos = [t for t in positives if judge_split(t) == "fit"]
        neg = [t for t in negatives if judge_split(t) == "fit"]
        held_pos = [t for t in positives if judge_split(t) == "heldout"]
        held_neg = [t for t in negatives if judge_split(t) == "heldout"]
        return cls(topic, pos, neg, held_pos, held_neg)


def load_judge_texts(folder: str | Path, topic: str) -> JudgeTexts:
    """The judge texts of ``topic`` under ``folder`` (``storage/topics``)."""
    root = Path(folder)
    path = root / topic / JUDGE_FILE
    pool = root / NEGATIVES_FILE
    if not path.is_file() or not pool.is_file():
        raise FileNotFoundError(
            f"No judge texts for topic {topic!r} in {root} (need {topic}/{JUDGE_FILE} and "
            f"{NEGATIVES_FILE}): build them with scripts/build_judges.py."
        )
    positives = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(pool, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    negatives = [r["text"] for r in rows if topic not in r.get("topics", ())]
    return JudgeTexts.from_lists(topic, positives, negatives)


@dataclass
class Judge:
    """``P(topic)`` and the centroid cosine of texts, by a judge from another source.

    >>> texts = load_judge_texts("storage/topics", "medical")  # doctest: +SKIP
    >>> judge = build_judge(embedder, texts)
    >>> judge.heldout_auc, judge.probability(["The patient had a fever."])
    """

    topic: str
    classifier: TopicClassifier
    centroid: Tensor
    cv_auc: float
    heldout_auc: float
    transfer_auc: float | None = None

    @property
    def embedder(self) -> Any:
        return self.classifier.embedder

    def probability(self, texts: Sequence[str]) -> Tensor:
        """``P(topic)`` of each text, float64 ``[len(texts)]``."""
        return self.classifier.probability(texts)

    def measure(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(cosine to the centroid, P(topic))`` of each text, both float64 ``[len(texts)]``."""
        if not texts:
            empty = torch.zeros(0, dtype=torch.float64)
            return empty, empty
        (emb,), _ = embed_prompts(self.embedder, [list(texts)], progress=False)
        return self.measure_embeddings(emb)

    def measure_embeddings(self, embeddings: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`measure` of texts already embedded by the judge's embedder."""
        emb = F.normalize(embeddings.double(), dim=-1)
        return emb @ self.centroid, self.classifier.probability_of_embeddings(embeddings)

    def summary(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "cv_auc": self.cv_auc,
            "heldout_auc": self.heldout_auc,
            "transfer_auc": self.transfer_auc,
            "examples": [self.classifier.n_positive, self.classifier.n_negative],
        }


class CachedEmbedder:
    """An embedder that embeds each distinct text once (a judge's shared negatives, the same
    continuation judged twice): a ``list[str] -> Tensor`` callable for ``embedder=``."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.cache: dict[str, Tensor] = {}

    def __call__(self, texts: list[str]) -> Tensor:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if todo:
            (emb,), _ = embed_prompts(self.embedder, [todo], progress=False)
            self.cache.update(zip(todo, emb, strict=True))
        if not texts:
            return torch.zeros(0, 0, dtype=torch.float64)
        return torch.stack([self.cache[t] for t in texts])


def build_judge(
    embedder: Any,
    texts: JudgeTexts,
    *,
    transfer: tuple[Sequence[str], Sequence[str]] | None = None,
    seed: int = 0,
) -> Judge:
    """Fit the classifier (as :class:`TopicClassifier`) and the centroid on the fit part of
    ``texts``; measure its AUC on the held-out part and, with ``transfer = (positives,
    negatives)`` (e.g. the topic's ``eval.txt`` and the benchmark's negatives), on those."""
    if len(texts.heldout_positives) < 2 or len(texts.heldout_negatives) < 2:
        raise ValueError(
            f"Judge {texts.topic!r} needs at least two held-out texts of each class; give it "
            f"more texts (one in {HELDOUT_EVERY} is held out)."
        )
    classifier = TopicClassifier.fit(embedder, texts.positives, texts.negatives, seed=seed)
    (pos,), _ = embed_prompts(classifier.embedder, [list(texts.positives)], progress=False)
    centroid = F.normalize(F.normalize(pos.double(), dim=-1).mean(dim=0), dim=0)
    held = classifier.probability([*texts.heldout_positives, *texts.heldout_negatives])
    labels = [1] * len(texts.heldout_positives) + [0] * len(texts.heldout_negatives)
    transfer_auc = None
    if transfer is not None:
        t_pos, t_neg = list(transfer[0]), list(transfer[1])
        p = classifier.probability([*t_pos, *t_neg])
        transfer_auc = auc(p, [1] * len(t_pos) + [0] * len(t_neg))
    return Judge(
        texts.topic, classifier, centroid, classifier.cv_auc, auc(held, labels), transfer_auc
    )
