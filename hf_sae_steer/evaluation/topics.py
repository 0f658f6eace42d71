"""The multi-topic benchmark's topics: example texts to fit on, other texts to measure with,
and negatives for each topic's classifier (built by ``scripts/build_topics.py``).

A topic folder holds ``fit.txt`` (what a user would bring: scores, prefixes and fine-tuning see
only these) and ``eval.txt`` (other texts of the topic: the centroid and the classifier's
positives). ``negatives.jsonl`` beside the folders holds broad texts, each with its ``source``;
a topic's negatives are those from other sources. ``topics.json`` says which topics are for
*tuning* (every default is chosen on them) and which are *held out* (reported).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Split = Literal["tuning", "heldout"]


@dataclass(frozen=True)
class Topic:
    name: str
    split: Split
    source: str
    fit: list[str]
    eval: list[str]
    negatives: list[str]


def load_topics(folder: str | Path, split: Split | None = None) -> list[Topic]:
    """The topics listed in ``folder/topics.json`` (only ``split``'s when given), in its order."""
    root = Path(folder)
    index = root / "topics.json"
    if not index.is_file():
        raise FileNotFoundError(
            f"No topics.json in {root}: build the topics with scripts/build_topics.py."
        )
    listed = json.loads(index.read_text(encoding="utf-8"))["topics"]
    with open(root / "negatives.jsonl", encoding="utf-8") as fh:
        negatives = [json.loads(line) for line in fh if line.strip()]
    topics = []
    for entry in listed:
        if split is not None and entry["split"] != split:
            continue
        name, source = entry["name"], entry["source"]
        if source == "medical domain":
            others = [n["text"] for n in negatives if not n["medical"]]
        else:
            others = [n["text"] for n in negatives if n["source"] != source]
        topics.append(
            Topic(
                name=name,
                split=entry["split"],
                source=source,
                fit=_lines(root / name / "fit.txt"),
                eval=_lines(root / name / "eval.txt"),
                negatives=others,
            )
        )
    return topics


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
