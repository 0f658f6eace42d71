"""The evaluation harness: each measure against a hand-computed case, then a tiny sweep."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from tiny_models import tiny_gpt2

from hf_sae_steer.data.embedders import DEFAULT_EMBEDDER
from hf_sae_steer.evaluation.metrics import (
    bootstrap_ci,
    concept_relevance,
    perplexity,
    repeated_ngram_share,
)
from hf_sae_steer.evaluation.sweep import evaluate
from hf_sae_steer.sae import SAEConfig, build_sae

D, N_LATENTS, LAYER = 32, 64, 1


def all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def char_embedder(texts: list[str]) -> torch.Tensor:
    """Deterministic toy sentence embedding: letter counts (not normalised on purpose)."""
    out = torch.zeros(len(texts), 26)
    for i, text in enumerate(texts):
        for ch in text.lower():
            if "a" <= ch <= "z":
                out[i, ord(ch) - 97] += 1
    return out + 1e-3


# -- concept relevance -------------------------------------------------------------------
def test_relevance_is_one_for_the_alignment_text_itself_with_minilm():
    from hf_sae_steer.data.embedders import embed_prompts

    align = ["The patient was treated for a fever and a persistent cough."]
    (emb,), _ = embed_prompts(DEFAULT_EMBEDDER, [align], progress=False)
    texts = [align[0], "Engineers built a bridge of steel across the canyon."]
    centroid, nearest = concept_relevance(texts, emb, DEFAULT_EMBEDDER)
    assert centroid[0].item() == pytest.approx(1.0, abs=1e-5)
    assert nearest[0].item() == pytest.approx(1.0, abs=1e-5)
    assert centroid[1] < 0.5


def test_relevance_centroid_and_nearest_by_hand():
    def embedder(texts):
        table = {"x": [3.0, 0.0], "y": [0.0, 2.0], "xy": [1.0, 1.0]}
        return torch.tensor([table[t] for t in texts])

    align = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    centroid, nearest = concept_relevance(["x", "xy"], align, embedder)
    # centroid of the two unit vectors is (1, 1) / sqrt 2
    assert centroid.tolist() == pytest.approx([1 / math.sqrt(2), 1.0])
    # k=5 > 2 texts: the mean over all of them
    assert nearest.tolist() == pytest.approx([0.5, 1 / math.sqrt(2)])
    _, nearest1 = concept_relevance(["x", "xy"], align, embedder, k=1)
    assert nearest1.tolist() == pytest.approx([1.0, 1 / math.sqrt(2)])


# -- repetition --------------------------------------------------------------------------
def test_repeated_ngram_share_by_hand():
    assert repeated_ngram_share("the cat sat the cat sat the cat sat") == 1.0
    assert repeated_ngram_share([7] * 6) == 1.0
    assert repeated_ngram_share(list(range(12))) == 0.0
    # 3-grams 123 234 341 412 123: only 123 occurs twice, both occurrences count
    assert repeated_ngram_share([1, 2, 3, 4, 1, 2, 3]) == pytest.approx(2 / 5)
    assert repeated_ngram_share([1, 2]) == 0.0
    assert repeated_ngram_share([1, 2, 1, 2], n=2) == pytest.approx(2 / 3)


# -- perplexity --------------------------------------------------------------------------
def hand_perplexity(model, prompt_ids, cont_ids):
    nll = []
    for j, target in enumerate(cont_ids):
        context = torch.tensor([prompt_ids + cont_ids[:j]])
        logits = model(input_ids=context).logits[0, -1]
        nll.append(-torch.log_softmax(logits.double(), dim=-1)[target].item())
    return math.exp(sum(nll) / len(nll))


def test_perplexity_matches_a_plain_loop(tokenizer, gpt2):
    prompts = ["The patient was", "A doctor examined the heart and", "The river"]
    conts = [" treated for a fever", " lungs", " flows through the valley towards the sea"]
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    cont_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in conts]
    with torch.no_grad():
        expected = [hand_perplexity(gpt2, p, c) for p, c in zip(prompt_ids, cont_ids, strict=True)]
    got = perplexity(gpt2, tokenizer, prompts, conts, batch_size=2)  # padded batches
    assert got.tolist() == pytest.approx(expected, rel=1e-4)
    assert perplexity(gpt2, tokenizer, prompt_ids, cont_ids).tolist() == pytest.approx(got.tolist())
    assert math.isnan(perplexity(gpt2, tokenizer, ["The river"], [[]])[0])


# -- bootstrap ---------------------------------------------------------------------------
def test_bootstrap_ci_contains_the_mean_and_shrinks_with_n():
    gen = torch.Generator().manual_seed(0)
    small = torch.randn(10, generator=gen)
    large = torch.randn(1000, generator=gen)
    m_small, lo_small, hi_small = bootstrap_ci(small)
    m_large, lo_large, hi_large = bootstrap_ci(large)
    assert m_small == pytest.approx(small.double().mean().item())
    assert lo_small <= m_small <= hi_small and lo_large <= m_large <= hi_large
    assert hi_large - lo_large < (hi_small - lo_small) / 3
    assert bootstrap_ci([2.0]) == (2.0, 2.0, 2.0)
    assert bootstrap_ci([1.0, math.nan, 3.0])[0] == 2.0
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    # one group: resampling whole groups cannot vary the mean
    assert bootstrap_ci([1.0, 5.0], groups=["a", "a"]) == (3.0, 3.0, 3.0)


# -- the sweep ---------------------------------------------------------------------------
@pytest.fixture
def sae():
    g = torch.Generator().manual_seed(3)
    state = {
        "W_enc": torch.randn(D, N_LATENTS, generator=g) / D**0.5,
        "b_enc": torch.zeros(N_LATENTS),
        "W_dec": torch.randn(N_LATENTS, D, generator=g) / N_LATENTS**0.5,
        "b_dec": torch.zeros(D),
    }
    cfg = SAEConfig(D, N_LATENTS, activation="topk", k=4, layer=LAYER, site="resid_post")
    return build_sae(cfg, state)


@pytest.fixture
def scores():
    return torch.rand(N_LATENTS, generator=torch.Generator().manual_seed(4))


def run_small(model, tokenizer, sae, scores, **kw):
    return evaluate(
        model,
        tokenizer,
        sae,
        scores,
        ["The patient was", "A farmer planted"],
        ["Antibiotics are used to treat bacterial infections.", "Symptoms include fever."],
        strengths=(1.0, 2.0),
        samples=1,
        max_new_tokens=4,
        embedder=char_embedder,
        progress=False,
        n_boot=200,
        **kw,
    )


def test_evaluate_end_to_end(tokenizer, sae, scores, tmp_path):
    model = tiny_gpt2(len(tokenizer), d=D)
    result = run_small(model, tokenizer, sae, scores)
    assert all_hooks(model) == 0
    labels = [(r["label"], r["strength"]) for r in result.rows]
    expected = [("orig", None)] + [
        (f"{m}+err" if e else m, s)
        for m in ("sae", "clamp", "weight", "swap")
        for e in (False, True)
        for s in (1.0, 2.0)
    ]
    assert labels == expected
    assert all(r["n"] == 2 for r in result.rows) and len(result.samples) == 2 * 17
    for r in result.rows:
        assert r["relevance_centroid_lo"] <= r["relevance_centroid"] <= r["relevance_centroid_hi"]
        assert r["tokens_per_s"] > 0
    # Same seeds everywhere: sae+err, the identity, reproduces orig token for token.
    base = [s["continuation"] for s in result.samples if s["method"] == "orig"]
    same = [s["continuation"] for s in result.samples if s["label"] == "sae+err"]
    assert same == base * 2
    assert result.row("sae+err", 2.0)["relevance_centroid_delta"] == 0.0
    assert result.row("sae+err", 2.0)["perplexity_ratio"] == pytest.approx(1.0)

    paths = result.save(tmp_path / "eval")
    assert paths["plot.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with paths["table.csv"].open() as f:
        assert len(list(csv.DictReader(f))) == 17
    table = paths["table.md"].read_text()
    assert table.count("\n") == 2 + 17 and "| sae+err | ×2 |" in table
    lines = paths["samples.jsonl"].read_text().splitlines()
    assert len(lines) == 34 and "perplexity" in json.loads(lines[0])
    config = json.loads(paths["eval_config.json"].read_text())
    assert config["conditions"][:2] == ["orig", "sae"]
    assert config["kind"] == "hf_sae_steer/evaluation"


def test_evaluate_removes_hooks_on_error(tokenizer, sae, scores, monkeypatch):
    import hf_sae_steer.evaluation.runner as runner

    model = tiny_gpt2(len(tokenizer), d=D)
    calls = []

    def failing(tokens, n=3):
        calls.append(1)
        if len(calls) > 3:  # after orig's two samples, inside a steered run
            raise RuntimeError("boom")
        return 0.0

    monkeypatch.setattr(runner, "repeated_ngram_share", failing)
    with pytest.raises(RuntimeError, match="boom"):
        run_small(model, tokenizer, sae, scores, methods=("orig", "swap"))
    assert all_hooks(model) == 0


def test_controls_baselines_and_the_classifier(tokenizer, sae):
    """add and vector by norm fraction, their random controls at equal norm, the prefix and
    fine-tuning baselines and the topic classifier, all on a tiny model."""
    import warnings

    from hf_sae_steer import FeatureScores

    model = tiny_gpt2(len(tokenizer), d=D)
    reference = ["The river flows through the valley.", "Engineers built a bridge of steel.",
                 "The orchestra played a symphony.", "A farmer planted wheat."]  # fmt: skip
    alignment = ["Antibiotics are used to treat bacterial infections.", "Symptoms include fever.",
                 "The doctor examined the patient."]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = FeatureScores.fit(model, tokenizer, sae, reference=reference, alignment=alignment,
                                   embedder=char_embedder, progress=False)  # fmt: skip
    result = evaluate(
        model, tokenizer, sae, scores, ["The patient was", "A farmer planted"], alignment,
        reference=reference, methods=("add", "vector"), norm_fractions=(0.25, 1.0),
        controls=("random_latents", "random_vector"), baselines=("prefix", "finetune"),
        samples=1, max_new_tokens=4, embedder=char_embedder, progress=False, n_boot=100,
    )  # fmt: skip
    assert all_hooks(model) == 0
    labels = list(dict.fromkeys(r["label"] for r in result.rows))
    assert labels == ["orig", "add", "vector", "random latents", "random vector", "prefix",
                      "finetune"]  # fmt: skip
    for rho in (0.25, 1.0):
        vec = result.row("vector", norm_fraction=rho)
        rand = result.row("random vector", norm_fraction=rho)
        assert vec["strength"] == pytest.approx(rand["strength"])  # the same norm, at every ρ
        assert result.row("add", norm_fraction=rho)["kind"] == "steering"
    assert result.row("add", norm_fraction=1.0)["strength"] == pytest.approx(
        4 * result.row("add", norm_fraction=0.25)["strength"]
    )
    tuned = result.curve(labels[-1])
    assert [r["strength"] for r in tuned] == [2.0, 5.0, 10.0]
    seconds = [r["train_seconds"] for r in tuned]
    assert seconds == sorted(seconds) and seconds[0] > 0
    assert any(text.startswith(result.config["prefix"][:10]) for text in alignment)
    assert 0.0 <= result.config["classifier_cv_auc"] <= 1.0
    assert all(0.0 <= s["p_topic"] <= 1.0 for s in result.samples)
    assert all("p_topic_delta" in r for r in result.rows if r["label"] != "orig")
