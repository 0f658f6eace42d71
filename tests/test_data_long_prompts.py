"""Long prompts, a piece at a time: the same windows (and truncation) as tokenizing the whole
prompt at once, for byte-level BPE and both SentencePiece styles; the same scores as passing
them whole; and memory that does not grow with the prompt (issue 16)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import pytest
from conftest import CORPUS
from score_checks import ALIGNMENT, REFERENCE, assert_same_scores, fit_tiny
from tiny_models import tiny_gpt2, tiny_topk_sae

from hf_sae_steer.data.long_prompts import prompt_windows, special_ids, text_pieces
from hf_sae_steer.data.prompts import PromptHash, hash_prompts
from hf_sae_steer.scoring import long_prompts


def sentencepiece_like(style: str):
    """A Llama-2-like tokenizer: BPE over "▁"-marked words (merges never cross a word), a BOS
    added by a template; ``legacy`` prepends "▁" to the whole text (a normalizer), ``metaspace``
    splits and prepends in the pre-tokenizer (prepend_scheme="first")."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=list("▁\t.,!?0123456789"))  # fmt: skip
    tok.train_from_iterator(CORPUS * 4, trainer)
    if style == "legacy":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])  # fmt: skip
        tok.pre_tokenizer = None
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")  # fmt: skip


@pytest.fixture(params=["byte_level", "legacy", "metaspace"])
def any_tokenizer(request, tokenizer):
    return tokenizer if request.param == "byte_level" else sentencepiece_like(request.param)


def random_text(rng: random.Random, words: int) -> str:
    vocab = " ".join(CORPUS).replace(".", "").replace(",", "").split()
    vocab += ["42", "3.14", "naïve", "☕"]
    out = [rng.choice(vocab)]
    for _ in range(words - 1):
        out.append(rng.choice([" ", " ", " ", "  ", " \t", "   ", ", ", ". "]))
        out.append(rng.choice(vocab))
    return "".join(out)


def whole_windows(tok, text, size, limit=None):
    cut = {"truncation": True, "max_length": limit} if limit else {}
    ids = tok(text, **cut)["input_ids"]
    return [ids[s : s + size] for s in range(0, len(ids), size)]


@pytest.mark.parametrize("piece", [20, 37, 200])
def test_pieces_give_the_whole_prompts_windows(any_tokenizer, monkeypatch, piece):
    monkeypatch.setattr(long_prompts, "PIECE_CHARS", piece)
    specials = special_ids(any_tokenizer)
    assert specials is not None
    rng = random.Random(piece)
    for _ in range(20):
        text = random_text(rng, rng.randint(1, 120))
        assert max(stop - start for start, stop in text_pieces(text)) <= piece
        for size, limit in ((16, None), (7, None), (16, 40), (5, 3)):
            got = list(prompt_windows(any_tokenizer, text, size, specials, limit))
            assert got == whole_windows(any_tokenizer, text, size, limit), (text, size, limit)


def test_special_tokens_are_found_around_the_text(tokenizer):
    assert special_ids(tokenizer) == ([], [])  # GPT-2 style: none
    bos = sentencepiece_like("legacy")
    assert special_ids(bos) == ([bos.bos_token_id], [])


def test_long_prompts_score_as_when_passed_whole(request, monkeypatch):
    tok = request.getfixturevalue("tokenizer")
    setup = (tiny_gpt2(len(tok)), tok, tiny_topk_sae())
    rng = random.Random(0)
    reference = REFERENCE[:12] + [random_text(rng, 300) for _ in range(3)]  # >128 tokens each
    alignment = [*ALIGNMENT, random_text(rng, 400)]  # longer than report_max_tokens too
    for summary in ("avg", "max"):
        kw = {"alignment": alignment, "summary": summary, "report_max_tokens": 100}
        whole = fit_tiny(setup, reference, **kw)
        monkeypatch.setattr(long_prompts, "PIECE_CHARS", 50)  # every long one in pieces
        pieces = fit_tiny(setup, reference, **kw)
        monkeypatch.undo()
        assert_same_scores(pieces, whole)


def test_a_long_prompt_hashes_as_a_short_one(monkeypatch):
    import hf_sae_steer.data.prompts as prompts

    texts = ['a "quoted" \\ back\nslash\ttab é ☕ ' * 5, "short"]
    monkeypatch.setattr(prompts, "HASH_PIECE", 7)
    hasher = PromptHash()
    for text in texts:
        hasher.update(text)
    assert hasher.hexdigest() == hash_prompts(texts)


MEASURE = """
import json, resource, sys, warnings
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from hf_sae_steer import FeatureScores, load_sae

torch.set_num_threads(1)
folder, files = sys.argv[1], sys.argv[2:]
tok = AutoTokenizer.from_pretrained(folder + "/model")
model = AutoModelForCausalLM.from_pretrained(folder + "/model").eval()
sae = load_sae(folder + "/sae")

def letters(texts):
    return torch.tensor([[t.count(c) / max(len(t), 1) for c in "aeiou "] for t in texts])

peaks = []
for path in files:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FeatureScores.fit(model, tok, sae, reference=path, alignment=["A doctor treated it."],
                          embedder=letters, progress=False, batch_size=32, rule="seed")
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print(json.dumps(peaks))
"""


def test_memory_does_not_grow_with_a_long_line(tmp_path, tokenizer):
    """One 2 MB line: the peak memory grows by a small multiple of the line (it grew by 200x:
    the line was tokenized whole; now by about 2.5x: the line itself, read and kept)."""
    model, sae = tiny_gpt2(len(tokenizer)), tiny_topk_sae()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    sae.save_pretrained(tmp_path / "sae")
    rng = random.Random(0)
    warm = tmp_path / "warm.txt"  # full batches of full windows: the passes' own peak
    warm.write_text("\n".join(random_text(rng, 200) for _ in range(40)) + "\n")
    line = random_text(rng, 1)
    while len(line) < 2_000_000:
        line += " " + random_text(rng, 2000)
    long = tmp_path / "long.txt"
    long.write_text(f"A short prompt.\n{line}\nAnother short one.\n")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MEASURE), str(tmp_path), str(warm), str(long)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    warmed, after = json.loads(out.stdout.strip().splitlines()[-1])
    grown = after - warmed
    assert grown < 6 * len(line), f"+{grown / 1e6:.0f} MB for a {len(line) / 1e6:.0f} MB line"
