"""WordNet 3.0 as a small English corpus, with a medical subset (helpers for build_demo_assets).

The data files of Debian's ``wordnet-base`` (``/usr/share/wordnet/data.{noun,verb,adj,adv}``)
are parsed directly, following wndb(5)::

    synset_offset lex_filenum ss_type w_cnt word lex_id [...] p_cnt [ptr...] [frames] | gloss

Every synset becomes one short document: a definition sentence built from its first lemma and
gloss ("A stethoscope is a medical instrument for ..."), followed by the gloss's usage examples.
"""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
# lexnames(5): lex_filenum -> lexicographer file name.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
HYPONYM = ("~", "~i")
DOMAIN_TOPIC = ";c"
# Roots of the medical topic domain (noun offsets): medical_science.n.01 (whose hyponyms include
# medicine.n.01, pathology, ...), practice_of_medicine (medicine.n.02), and a few clearly medical
# noun trees that WordNet does not tag with a topic domain: disease, illness, medical_care,
# medical_procedure.
MEDICAL_DOMAIN_ROOTS = ("06045562", "00612160")
MEDICAL_TREE_ROOTS = ("14070360", "14061805", "00657604", "01024392")

NEUTRAL_PROMPTS = [
    "The old house", "A river is", "The children went", "In the morning, the", "A good friend",
    "The king", "To travel is to", "She opened the", "The city was", "A small boat",
    "The farmer said", "My grandmother", "A painting is", "The students", "He decided to",
    "A long road", "The weather", "The music", "A kitchen knife is", "They walked along the",
]  # fmt: skip
# Disjoint neutral openings: TUNING_PROMPTS are the only prompts any setting is chosen on (the
# recommended norm fraction); HELDOUT_PROMPTS are for the evaluation alone.
TUNING_PROMPTS = [
    "The garden", "A wooden chair is", "On Sunday we", "The old map", "A bright star",
    "The teacher asked", "Our neighbour", "A quiet village", "The bridge was", "He looked at the",
    "A glass of", "The letter said", "In the forest", "The train left", "A new book is",
    "The mountain", "She laughed and", "The market", "A cold wind", "The game began",
    "The hat", "Two brothers", "The lamp was", "A white horse",
]  # fmt: skip
HELDOUT_PROMPTS = [
    "The window", "A red apple is", "The sailor", "In the evening, the", "A tall tree",
    "The baker", "To write is to", "He opened the", "The village was", "A heavy stone",
    "The soldier said", "My uncle", "A song is", "The workers", "She decided to",
    "A narrow path", "The summer", "The dance", "A silver coin is", "They sat by the",
    "The ship", "A young woman", "The castle", "At night, the", "A blue bird",
    "The carpenter", "To build is to", "She closed the", "The island was", "A small dog",
    "The merchant said", "My sister", "A poem is", "The travellers", "He wanted to",
    "A wide river", "The winter", "The story", "A copper pot is", "We walked into the",
    "The door", "A large room", "The fisherman", "Early in the day, the", "A green field",
    "The painter", "To sing is to", "They opened the", "The harbour was", "An old clock",
    "The judge said", "My cousin", "A game is", "The musicians", "She tried to",
    "A steep hill", "The autumn", "The film", "A leather bag is", "He stood near the",
    "The roof", "A strong rope", "The hunter", "By noon, the", "A black cat",
    "The tailor", "To learn is to", "He carried the", "The valley was", "A broken cup",
    "The captain said", "My father", "A house is", "The dancers", "They hoped to",
    "A sandy beach", "The spring", "The picture", "A stone wall is", "She ran towards the",
]  # fmt: skip

Key = tuple[str, str]  # (pos, offset); adjective satellites ("s") are filed under "a".


@dataclass
class Synset:
    key: Key
    lexname: str
    words: list[str]
    pointers: list[tuple[str, Key]]
    definition: str
    examples: list[str] = field(default_factory=list)

    @property
    def pos(self) -> str:
        return self.key[0]


def _clean_word(word: str) -> str:
    return re.sub(r"\((a|p|ip)\)$", "", word).replace("_", " ")


def parse_line(line: str, pos: str) -> Synset:
    head, _, gloss = line.partition(" | ")
    f = head.split()
    w_cnt = int(f[3], 16)
    words = [_clean_word(f[4 + 2 * i]) for i in range(w_cnt)]
    i = 4 + 2 * w_cnt
    p_cnt = int(f[i])
    pointers = []
    for j in range(p_cnt):
        sym, off, ppos = f[i + 1 + 4 * j : i + 4 + 4 * j]
        pointers.append((sym, ("a" if ppos == "s" else ppos, off)))
    examples = [e.strip() for e in re.findall(r'"([^"]+)"', gloss) if len(e.split()) >= 3]
    definition = gloss.split('"', 1)[0].strip().rstrip(";:, ").strip()
    definition = re.sub(r"^\([^)]*\)\s*", "", definition)  # drop a leading "(botany)" label
    return Synset((pos, f[0]), LEXNAMES[int(f[1])], words, pointers, definition, examples)


def load_wordnet(root: Path = WORDNET_DIR) -> dict[Key, Synset]:
    """All synsets of the four data files, keyed by ``(pos, offset)``."""
    if not (root / "data.noun").exists():
        raise SystemExit(
            f"WordNet data not found under {root}; install it with "
            "`apt-get install wordnet-base` (Debian/Ubuntu)."
        )
    synsets: dict[Key, Synset] = {}
    for pos, name in POS_FILES.items():
        with open(root / name, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("  "):  # licence header
                    continue
                s = parse_line(line.rstrip("\n"), pos)
                synsets[s.key] = s
    return synsets


def hyponym_closure(synsets: dict[Key, Synset], roots: list[Key]) -> set[Key]:
    seen, todo = set(roots), deque(roots)
    while todo:
        for sym, child in synsets[todo.popleft()].pointers:
            if sym in HYPONYM and child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def medical_subset(synsets: dict[Key, Synset]) -> set[Key]:
    """Synsets in WordNet's medical topic domain, and the noun trees below them.

    Domain synsets are medical_science.n.01, practice_of_medicine and their hyponyms; members
    are the synsets whose ``;c`` (topic domain) pointer names one of them; nouns among those,
    plus the disease/illness/medical-care/medical-procedure trees, bring their hyponyms along.
    """
    domains = hyponym_closure(synsets, [("n", o) for o in MEDICAL_DOMAIN_ROOTS])
    members = {
        s.key
        for s in synsets.values()
        if any(sym == DOMAIN_TOPIC and t in domains for sym, t in s.pointers)
    }
    nouns = [k for k in members if k[0] == "n"] + [("n", o) for o in MEDICAL_TREE_ROOTS]
    return domains | members | hyponym_closure(synsets, nouns)


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text[-1:] in ".!?" else text + "."


def definition_sentence(s: Synset) -> str:
    lemma = s.words[0]
    if s.pos == "n":
        also = f", also called {s.words[1]}," if len(s.words) > 1 else ""
        return _sentence(f"{lemma}{also} is {s.definition}")
    if s.pos == "v":
        return _sentence(f"to {lemma} is to {s.definition}")
    return _sentence(f"{lemma} means {s.definition}")


def document(s: Synset) -> str:
    """One synset as text: its definition sentence, then its usage examples."""
    return " ".join([definition_sentence(s)] + [_sentence(e) for e in s.examples])


@dataclass
class Corpus:
    train: list[str]
    heldout: list[str]
    heldout_keys: list[Key]
    synsets: dict[Key, Synset]
    medical: set[Key]


def build_corpus(seed: int, heldout_frac: float = 0.05, root: Path = WORDNET_DIR) -> Corpus:
    """One document per synset with a gloss, shuffled with ``seed`` and split train/held-out."""
    synsets = load_wordnet(root)
    keys = sorted(k for k, s in synsets.items() if s.definition)
    random.Random(seed).shuffle(keys)
    n_held = int(len(keys) * heldout_frac)
    held, train = keys[:n_held], keys[n_held:]
    return Corpus(
        train=[document(synsets[k]) for k in train],
        heldout=[document(synsets[k]) for k in held],
        heldout_keys=held,
        synsets=synsets,
        medical=medical_subset(synsets),
    )


def prompt_sets(corpus: Corpus, seed: int) -> dict[str, list[str]]:
    """Alignment: medical held-out documents. Reference: other held-out documents, round-robin
    over WordNet's lexicographer files, medical ones included at their natural share (a broad
    set, as docs/method.md asks; without any, no latent near the topic can score). Prompts: fixed
    neutral openings."""
    rng = random.Random(seed)
    held = [corpus.synsets[k] for k in corpus.heldout_keys]
    short = [s for s in held if 6 <= len(document(s).split()) <= 40]
    medical = [document(s) for s in short if s.key in corpus.medical]
    alignment = sorted(rng.sample(medical, min(32, len(medical))))
    pools: dict[str, list[str]] = {}
    chosen = set(alignment)
    for s in short:
        if document(s) not in chosen:
            pools.setdefault(s.lexname, []).append(document(s))
    reference: list[str] = []
    for pool in pools.values():
        rng.shuffle(pool)
    while len(reference) < 150 and any(pools.values()):
        reference += [pool.pop() for _, pool in sorted(pools.items()) if pool]
    taken = set(alignment) | set(reference)
    assert not taken & set(NEUTRAL_PROMPTS + TUNING_PROMPTS + HELDOUT_PROMPTS)
    return {
        "alignment": alignment,
        "reference": sorted(reference[:150]),
        **neutral_prompt_sets(),
    }


def neutral_prompt_sets() -> dict[str, list[str]]:
    """The demo's, the tuning and the held-out evaluation prompts (pairwise disjoint)."""
    sets = {
        "prompts": NEUTRAL_PROMPTS,
        "tune_prompts": TUNING_PROMPTS,
        "eval_prompts": HELDOUT_PROMPTS,
    }
    seen: set[str] = set()
    for lines in sets.values():
        assert len(set(lines)) == len(lines) and not seen & set(lines), "prompt sets overlap"
        seen |= set(lines)
    return sets
