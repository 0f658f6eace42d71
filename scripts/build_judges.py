"""Build each topic's cross-source judge texts from Webster's 1913 dictionary (GCIDE), reproducibly.

    apt-get install -y dict-gcide wordnet-base     # the dictionary and WordNet (never committed)
    python scripts/build_judges.py                 # writes storage/topics/<topic>/judge.txt, ...

The benchmark's topics (``scripts/build_topics.py``) are WordNet glosses, and so are the texts
their classifier and centroid are built from: a steering that reproduces the gloss style could
win by style alone. A *judge* built from another source and style asks whether a text is about
the topic. Its texts are definitions from GCIDE (the 1913 Webster with later additions, GPL),
one definition sense per line, written ``Headword: definition.``:

- a topic's **positives** (``<topic>/judge.txt``) are definition senses of (a) noun headwords
  all of whose WordNet noun senses belong to the topic (its lexicographer file; for
  ``medical``, the demo's medical subset), unless the sense carries the subject label of a
  field outside the topic (``(Law)``, ``(Naut.)``, ...; kept for the broad topics artifact,
  act, communication, group, person, location), and of (b) any headword when the sense carries
  one of the topic's subject labels (``(Zool.)`` for animal, ``(Med.)`` for medical, ...);
- ``judge_negatives.jsonl`` is a broad pool of definition senses, round-robin over WordNet's
  lexicographer files of their headwords' first senses, each with the ``topics`` it touches
  (any WordNet noun sense of the headword in the topic, or a topic label): a topic's negatives
  are the rows that do not touch it;
- every headword that is a lemma of a benchmark text (any topic's ``fit.txt``/``eval.txt``, the
  demo's alignment set, ``negatives.jsonl``) is left out, so the judge never saw the words the
  fit texts define.

Each line is assigned to the judge's *training* part or its *held-out* part by a fixed hash of
its text (one in four held out), so its AUC can be measured on texts it was not fitted on
(``hf_sae_steer.evaluation.judges``). ``judges.json`` records what was built and how.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from demo_corpus import WORDNET_DIR, document, load_wordnet, medical_subset

ROOT = Path(__file__).resolve().parents[1]
GCIDE = Path("/usr/share/dictd/gcide.dict.dz")

LEXFILE = {
    "food": "noun.food", "animal": "noun.animal", "body": "noun.body", "plant": "noun.plant",
    "person": "noun.person", "artifact": "noun.artifact", "location": "noun.location",
    "communication": "noun.communication", "substance": "noun.substance", "act": "noun.act",
    "group": "noun.group",
}  # fmt: skip
# GCIDE subject labels that say a sense is about a topic.
LABELS = {
    "medical": ("Med.", "Pathol.", "Surg.", "Therap."),
    "food": ("Cookery",),
    "animal": ("Zool.",),
    "body": ("Anat.",),
    "plant": ("Bot.",),
    "substance": ("Chem.", "Min."),
    "location": ("Geog.",),
}
MAX_POSITIVES, NEGATIVES_PER_LEXFILE, MIN_WORDS, MAX_WORDS = 320, 45, 5, 60

_ACCENT = re.compile(r"\[[=^'`~.\"*,-]?([a-zA-Z])[=^'`~.\"*,-]?\]")
_LIGATURE = re.compile(r"\[(ae|AE|oe|OE)\]")
_UMLAUT = re.compile(r"\[([aeiouAEIOU])um\]")
_SOURCE_TAG = re.compile(r"\[(?:[^\]]*Webster[^\]]*|PJC\.?|RDH|RHUD|WordNet[^\]]*|Century[^\]]*)\]")
_LABEL = re.compile(r"^\(([A-Z][A-Za-z. ]{1,24})\)\s*")
_CITATION = re.compile(r"\s--\s?[A-Z][^.;]*(?:\.[^.;]*)?\.?$")


@dataclass(frozen=True)
class Sense:
    headword: str
    pos: str
    label: str | None
    text: str  # "Headword: definition."


def clean(text: str) -> str | None:
    """Plain text of a GCIDE fragment; ``None`` when markup survives or it is obsolete."""
    if "[Obs.]" in text or re.search(r"\[[^\]]*WordNet", text):
        return None  # obsolete, or taken from WordNet (the benchmark's own source)
    text = _SOURCE_TAG.sub("", text)
    text = re.sub(r"\[(R\.|Colloq\.|Archaic|Rare|U\. ?S\.|Eng\.|Scot\.|Prov\. Eng\.)\]", "", text)
    text = _LIGATURE.sub(r"\1", text)
    text = _UMLAUT.sub(r"\1", text)
    text = _ACCENT.sub(r"\1", text)
    text = text.replace("{", "").replace("}", "").replace("\\", "")
    text = re.sub(r"\s+", " ", text).strip()
    text = _CITATION.sub("", text).strip()
    text = re.sub(r"\s+AS\.$", "", text)  # what is left of a "[... + AS]" source tag
    if "[" in text or "]" in text or "--" in text:
        return None
    return text


def _skip_brackets(text: str) -> str:
    """``text`` after a leading ``[...]`` (an etymology, which may nest brackets)."""
    if not text.startswith("["):
        return text
    depth = 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if depth == 0:
            return text[i + 1 :]
    return ""


def entry_senses(entry: str) -> list[Sense]:
    """The definition senses of one GCIDE entry (notes, quotations and compounds left out)."""
    head, _, rest = entry.partition("\n")
    m = re.match(r"^([A-Za-z][A-Za-z' -]*?) \\[^\\]*\\(.*)$", head)
    if not m:
        return []
    headword = m.group(1).strip()
    header = m.group(2) + " " + rest.split("\n\n", 1)[0]
    pos_m = re.search(r",\s*(n|v\. ?[ti]|a|adv)\.", header)
    pos = {"n": "n", "a": "a", "adv": "r"}.get(pos_m.group(1), "v") if pos_m else "?"
    blocks = [b for b in entry.split("\n\n") if b.strip()]
    first = blocks[0]
    # The first block's definition follows the part of speech and the etymology "[...]".
    body = first.split("\n", 1)[1] if "\n" in first else ""
    header_label = None
    if pos_m:
        body = _skip_brackets(first[first.find(pos_m.group(0)) + len(pos_m.group(0)) :].lstrip())
        label_m = _LABEL.match(body.strip())
        if label_m:
            header_label = label_m.group(1)
    senses: list[Sense] = []
    candidates = [body] + blocks[1:]
    for block in candidates:
        stripped = block.strip()
        if not stripped or stripped.startswith(("Note:", "{", "Syn.", "Syn ", "--")):
            continue
        lines = block.split("\n")
        if block is not body and len(lines[0]) - len(lines[0].lstrip()) >= 8:
            continue  # a quotation
        for part in re.split(r"(?:^|\s)\d+\.\s", stripped):
            part = re.split(r"\s\([a-z]\)\s", " " + part)[0]  # keep the first sub-sense only
            label = header_label
            part = part.strip()
            lm = _LABEL.match(part)
            if lm:
                label, part = lm.group(1), part[lm.end() :]
            text = clean(part)
            if text is None:
                continue
            words = text.split()
            if not MIN_WORDS <= len(words) <= MAX_WORDS or not text[0].isalpha():
                continue
            if text.startswith(("See ", "Same as", "Syn", "Usage", "Hence")):
                continue  # a cross-reference, synonyms or a usage note: no definition
            text = text[0].upper() + text[1:]
            if text[-1] not in ".!?":
                text += "."
            senses.append(Sense(headword, pos, label, f"{headword}: {text}"))
    return senses


def read_gcide(path: Path = GCIDE) -> list[Sense]:
    if not path.exists():
        raise SystemExit(f"GCIDE not found at {path}; install it: apt-get install dict-gcide")
    data = gzip.open(path, "rb").read().decode("utf-8", errors="replace")
    # Entries start at a line "Head \Hy"phen\ ..." at column 0; the dictd headers come first.
    starts = [m.start() for m in re.finditer(r"(?m)^[A-Za-z][^\n]{0,60}? \\[^\\\n]+\\", data)]
    senses = []
    for a, b in zip(starts, starts[1:] + [len(data)], strict=True):
        senses += entry_senses(data[a:b])
    return senses


def lemma_of(text: str) -> list[str]:
    """The lemmas a WordNet document defines: ``Lemma, also called Other, is ...``."""
    head = re.split(r" (?:is|means) ", text, maxsplit=1)[0]
    if head.lower().startswith("to "):
        head = head[3:]
    parts = head.split(", also called ")
    return [p.strip(" ,").lower() for p in parts if p.strip()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--topics", type=Path, default=ROOT / "storage" / "topics")
    p.add_argument("--demo", type=Path, default=ROOT / "storage" / "demo")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    info = json.loads((a.topics / "topics.json").read_text(encoding="utf-8"))
    names = [t["name"] for t in info["topics"]]
    synsets = load_wordnet(WORDNET_DIR)
    medical = medical_subset(synsets)
    noun_senses = _noun_sense_order(WORDNET_DIR)

    # Every lemma a benchmark text defines (all its synset's words) is left out of the judges.
    bench_texts: set[str] = set()
    for name in names:
        for part in ("fit.txt", "eval.txt"):
            bench_texts |= set((a.topics / name / part).read_text(encoding="utf-8").splitlines())
    bench_texts |= set((a.demo / "alignment.txt").read_text(encoding="utf-8").splitlines())
    with open(a.topics / "negatives.jsonl", encoding="utf-8") as fh:
        bench_texts |= {json.loads(line)["text"] for line in fh if line.strip()}
    excluded: set[str] = set()
    for s in synsets.values():
        if s.definition and document(s) in bench_texts:
            excluded |= {w.lower() for w in s.words}
    for text in bench_texts:
        excluded |= set(lemma_of(text))

    def topics_of_synset(key: tuple[str, str]) -> set[str]:
        s = synsets[key]
        found = {t for t, lex in LEXFILE.items() if s.lexname == lex}
        return found | ({"medical"} if key in medical else set())

    def member_of(headword: str) -> set[str]:
        """Topics every noun sense of the headword belongs to (a dictionary's senses of the
        headword are then about the topic too, whichever WordNet sense they match)."""
        keys = noun_senses.get(headword.lower().replace(" ", "_"), [])
        if not keys:
            return set()
        per = [topics_of_synset(k) for k in keys]
        return set.intersection(*per)

    def touches(headword: str) -> set[str]:
        keys = noun_senses.get(headword.lower().replace(" ", "_"), [])
        return set().union(*(topics_of_synset(k) for k in keys)) if keys else set()

    label_topic = {label: t for t, labels in LABELS.items() for label in labels}
    senses = [s for s in read_gcide() if s.headword.lower() not in excluded]
    print(f"{len(senses)} GCIDE senses after leaving out {len(excluded)} benchmark lemmas")
    positives: dict[str, list[str]] = defaultdict(list)
    for s in senses:
        labelled = label_topic.get(s.label or "")
        wanted = {labelled} if labelled else (member_of(s.headword) if s.pos == "n" else set())
        if s.label and not labelled and s.label not in ("Fig.",):
            # A label of another field (Law, Naut., Mus., ...) moves a sense out of a topic
            # unless the topic is one the headword belongs to entirely (e.g. a tool's Mech.).
            wanted = {t for t in wanted if t in ("artifact", "act", "communication", "group",
                                                 "person", "location")}  # fmt: skip
        for t in wanted:
            positives[t].append(s.text)

    rng = random.Random(a.seed)
    judge_rows = []
    for name in names:
        pool = sorted(set(positives[name]))
        rng.shuffle(pool)
        chosen = sorted(pool[:MAX_POSITIVES])
        if len(chosen) < 60:
            raise SystemExit(f"topic {name}: only {len(chosen)} judge texts")
        (a.topics / name / "judge.txt").write_text("\n".join(chosen) + "\n", encoding="utf-8")
        judge_rows.append({"name": name, "positives": len(chosen), "available": len(pool),
                           "labels": list(LABELS.get(name, ())),
                           "lexfile": LEXFILE.get(name, "the demo's medical subset")})  # fmt: skip

    # Negatives: round-robin over the lexicographer file of each headword's first sense.
    by_lexfile: dict[str, list[Sense]] = defaultdict(list)
    positive_texts = {t for name in names for t in positives[name]}
    for s in senses:
        keys = noun_senses.get(s.headword.lower().replace(" ", "_"))
        lexname = synsets[keys[0]].lexname if keys else _other_pos_lexname(synsets, s.headword)
        if lexname is None or s.text in positive_texts:
            continue
        by_lexfile[lexname].append(s)
    negatives = []
    for lexname in sorted(by_lexfile):
        pool = sorted({s.text: s for s in by_lexfile[lexname]}.values(), key=lambda s: s.text)
        rng.shuffle(pool)
        for s in pool[:NEGATIVES_PER_LEXFILE]:
            touched = touches(s.headword) | ({label_topic[s.label]} if s.label in label_topic
                                             else set())  # fmt: skip
            negatives.append({"text": s.text, "lexfile": lexname, "topics": sorted(touched)})
    negatives.sort(key=lambda r: r["text"])
    with open(a.topics / "judge_negatives.jsonl", "w", encoding="utf-8") as fh:
        for row in negatives:
            fh.write(json.dumps(row) + "\n")
    for row in judge_rows:
        row["negatives"] = sum(row["name"] not in n["topics"] for n in negatives)
    record = {
        "command": "python scripts/build_judges.py" + (f" --seed {a.seed}" if a.seed else ""),
        "source": "GCIDE 0.48 (Debian dict-gcide: Webster's Revised Unabridged Dictionary, "
                  "1913, with additions), GPL; topic membership from WordNet 3.0",
        "format": "Headword: definition. One definition sense per line.",
        "heldout": "a line is held out of the judge's fit when judge_split(text) == 'heldout' "
                   "(hf_sae_steer.evaluation.judges: one in four, by a fixed hash)",
        "excluded_lemmas": len(excluded),
        "judges": judge_rows,
        "negatives": len(negatives),
    }  # fmt: skip
    (a.topics / "judges.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for row in judge_rows:
        print(f"{row['name']:14s} positives {row['positives']:4d} (of {row['available']:5d}) "
              f"negatives {row['negatives']:4d}")  # fmt: skip


def _noun_sense_order(root: Path) -> dict[str, list[tuple[str, str]]]:
    """Noun lemma -> its synsets, most frequent first (``index.noun``, wndb(5))."""
    out: dict[str, list[tuple[str, str]]] = {}
    with open(root / "index.noun", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("  "):
                continue
            f = line.split()
            n_synsets, n_pointers = int(f[2]), int(f[3])
            offsets = f[4 + n_pointers + 2 : 4 + n_pointers + 2 + n_synsets]
            out[f[0].lower()] = [("n", o) for o in offsets]
    return out


_OTHER_INDEX: dict[str, str] = {}


def _other_pos_lexname(synsets: dict, headword: str) -> str | None:
    """The lexicographer file of a non-noun headword's first synset (verbs, adjectives)."""
    if not _OTHER_INDEX:
        for pos, name in (("v", "index.verb"), ("a", "index.adj"), ("r", "index.adv")):
            with open(WORDNET_DIR / name, encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("  "):
                        continue
                    f = line.split()
                    n_pointers = int(f[3])
                    first = f[4 + n_pointers + 2]
                    key = (pos, first)
                    if key in synsets:
                        _OTHER_INDEX.setdefault(f[0].lower(), synsets[key].lexname)
    return _OTHER_INDEX.get(headword.lower().replace(" ", "_"))


if __name__ == "__main__":
    sys.exit(main())
