"""What a steering does in words (steering/effect.py), against plain computations written here:
two explicit forward passes per prompt (one with a hand-written hook running method_reference)
for the next-token effect, and an explicit matmul through the final norm for the logit lens."""

from __future__ import annotations

import re

import pytest
import torch
from arch_models import ARCHS
from method_reference import ReferenceOpenAISAE, steer_sequence
from sae_factories import openai_state

from hf_sae_steer import METHODS, SteeredModel
from hf_sae_steer.sae import load_sae
from hf_sae_steer.steering.effect import (
    SteeringEffect,
    TokenEffect,
    effect_of,
    is_word,
    logit_lens,
    steering_effect,
)

LAYER, N = 1, 64
ADDED = {3: 1.0, 40: 2.5}
VECTOR = torch.linspace(-1.0, 1.0, 32)
PROMPTS = ["The patient was", "A river", "Engineers built a bridge of", "The"]
TOP = 12


@pytest.fixture
def state():
    return openai_state(d=32, n=N, k=8, seed=5)


@pytest.fixture
def sae(state, tmp_path):
    path = tmp_path / "sae.pt"
    torch.save(state, path)
    return load_sae(path)


@pytest.fixture
def scores():
    return torch.rand(N, generator=torch.Generator().manual_seed(6))


def plain_mean_change(model, tokenizer, state, method, scores, strength, preserve_error):
    """Each prompt alone, with and without a plain hook on block LAYER: the mean over every
    position of (steered - base) log-softmax."""
    ref = ReferenceOpenAISAE(state)
    extra = {"added": ADDED} if method == "add" else {"vector": VECTOR}

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = steer_sequence(ref, hidden, method, scores, preserve_error=preserve_error,
                             strength=strength, **extra)  # fmt: skip
        return (new, *output[1:]) if isinstance(output, tuple) else new

    total, count = torch.zeros(model.config.vocab_size, dtype=torch.float64), 0
    for text in PROMPTS:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            base = model(ids).logits[0].double().log_softmax(-1)
            handle = model.transformer.h[LAYER].register_forward_hook(hook)
            try:
                steered = model(ids).logits[0].double().log_softmax(-1)
            finally:
                handle.remove()
        total += (steered - base).sum(dim=0)
        count += ids.shape[1]
    return total / count


def assert_ranked_like(effect: TokenEffect, values: torch.Tensor, tokenizer) -> None:
    values = values[: len(tokenizer)]
    up, down = torch.topk(values, TOP), torch.topk(-values, TOP)
    assert effect.raised_ids == up.indices.tolist()
    assert effect.lowered_ids == down.indices.tolist()
    torch.testing.assert_close(torch.tensor([v for _, v in effect.raised]).double(), up.values,
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    torch.testing.assert_close(torch.tensor([v for _, v in effect.lowered]).double(),
                               -down.values, atol=1e-4, rtol=1e-4)  # fmt: skip
    assert [t for t, _ in effect.raised] == [tokenizer.decode([i]) for i in effect.raised_ids]
    # Whole words: a space, then three letters or more (this tokenizer is byte-level BPE).
    order = torch.argsort(values, descending=True).tolist()
    words = [i for i in order if re.fullmatch(r" [A-Za-z]{3,}", tokenizer.decode([i]))][:TOP]
    assert effect.word_ids == words
    assert [v for _, v in effect.words] == pytest.approx(values[words].tolist(), abs=1e-4)


# the away methods (suppress, ablate, attenuate) have their own tests (test_steering_away.py)
@pytest.mark.parametrize(
    "method", [m for m in METHODS if m not in ("orig", "sae", "suppress", "ablate", "attenuate")]
)
def test_next_token_effect_matches_two_plain_forward_passes(
    gpt2, tokenizer, state, sae, scores, method
):
    preserve_error, strength = method != "weight", 1.5
    want = plain_mean_change(gpt2, tokenizer, state, method, scores, strength, preserve_error)
    before = gpt2(torch.tensor([[5, 6, 7]])).logits
    with SteeredModel(
        gpt2, sae, layer=LAYER, site="resid_post", method=method, scores=scores,
        strength=strength, preserve_error=preserve_error,
        latents=ADDED if method == "add" else None,
        vector=VECTOR if method == "vector" else None,
    ) as steered:  # fmt: skip
        effect = steering_effect(steered, tokenizer, PROMPTS, top=TOP, batch_size=3)
        assert steered.is_steering  # measuring leaves the steering on
    assert_ranked_like(effect.next_token, want, tokenizer)
    n_tokens = sum(len(tokenizer(t)["input_ids"]) for t in PROMPTS)
    assert f"({len(PROMPTS)} prompts, {n_tokens} positions" in effect.next_token.label
    assert torch.equal(gpt2(torch.tensor([[5, 6, 7]])).logits, before)  # no hook left behind


def test_generated_positions_are_measured_as_steered(gpt2, tokenizer, sae, scores):
    """A plain forward pass is all prompt; positions='generated' is measured as if generated,
    so it equals 'all', and 'prompt' too."""
    effects = [
        effect_of(gpt2, tokenizer, sae, PROMPTS, layer=LAYER, method="add", latents=ADDED,
                  strength=2.0, positions=positions).next_token  # fmt: skip
        for positions in ("all", "generated", "prompt")
    ]
    assert effects[0] == effects[1] == effects[2]
    assert effects[0].raised[0][1] > 0


def layer_norm_lens(model, vectors):
    """GPT-2: unit-RMS direction, centred, divided by its std (with eps), times ln_f's weight
    (its bias is no direction's), times the tied embedding."""
    ln = model.transformer.ln_f
    x = vectors.double() / vectors.double().pow(2).mean(-1, keepdim=True).sqrt()
    c = x - x.mean(-1, keepdim=True)
    y = c / (c.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt() * ln.weight.double()
    return y @ model.lm_head.weight.double().T


def test_logit_lens_of_add_is_the_layer_norm_matmul(gpt2, tokenizer, state, sae):
    with torch.no_grad():  # a final norm whose weight and bias matter
        gpt2.transformer.ln_f.weight.copy_(torch.rand(32) + 0.5)
        gpt2.transformer.ln_f.bias.copy_(torch.randn(32))
    w_dec = state["decoder.weight"].double().T  # [n, d]: the plain decoder rows
    with SteeredModel(gpt2, sae, layer=LAYER, method="add", latents=ADDED,
                      strength=-2.0, preserve_error=True) as steered:  # fmt: skip
        effect = steering_effect(steered, tokenizer, None, top=TOP, rows=2)
    assert effect.next_token is None
    added = -(1.0 * w_dec[3] + 2.5 * w_dec[40])  # a negative strength adds the opposite
    want = layer_norm_lens(gpt2, torch.stack([added, w_dec[40], w_dec[3]]))
    labels = [e.label for e in effect.lens]
    assert labels == ["logit lens of the added vector (2 latents)",
                      "logit lens of latent 40 (weight 2.5)",
                      "logit lens of latent 3 (weight 1)"]  # fmt: skip
    for got, values in zip(effect.lens, want, strict=True):
        assert_ranked_like(got, values, tokenizer)


@pytest.mark.parametrize("arch", ["llama", "gemma", "opt", "gpt_neox-sequential"])
def test_logit_lens_through_each_final_norm(arch, tokenizer):
    torch.manual_seed(0)
    model = ARCHS[arch].build().eval()
    norm = {"llama": lambda m: m.model.norm, "gemma": lambda m: m.model.norm,
            "opt": lambda m: m.model.decoder.final_layer_norm,
            "gpt_neox-sequential": lambda m: m.gpt_neox.final_layer_norm}[arch](model)  # fmt: skip
    with torch.no_grad():
        norm.weight.copy_(torch.rand(32) + 0.5)
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(32))
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(4))
    x = vectors.double() / vectors.double().pow(2).mean(-1, keepdim=True).sqrt()
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None)
    if arch in ("llama", "gemma"):  # RMSNorm; Gemma scales by 1 + weight
        gain = norm.weight.double() + (1.0 if arch == "gemma" else 0.0)
        y = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * gain
    else:  # LayerNorm
        c = x - x.mean(-1, keepdim=True)
        y = c / (c.pow(2).mean(-1, keepdim=True) + eps).sqrt() * norm.weight.double()
    want = y @ model.get_output_embeddings().weight.double().T
    got = logit_lens(model, tokenizer, vectors, ["a", "b", "c"], top=TOP)
    for effect, values in zip(got, want, strict=True):
        assert_ranked_like(effect, values, tokenizer)


def test_swap_lens_uses_the_top_scores_and_vector_its_vector(gpt2, tokenizer, state, sae, scores):
    with SteeredModel(gpt2, sae, layer=LAYER, method="swap", scores=scores) as steered:
        swap = steering_effect(steered, tokenizer, None, top=TOP, rows=1)
    best = torch.topk(scores, 10)
    w_dec = state["decoder.weight"].double().T
    want = layer_norm_lens(gpt2, torch.stack([best.values.double() @ w_dec[best.indices],
                                              w_dec[best.indices[0]]]))  # fmt: skip
    assert swap.lens[0].label == "logit lens of the top latents' score-weighted rows (10 latents)"
    for got, values in zip(swap.lens, want, strict=True):
        assert_ranked_like(got, values, tokenizer)
    with SteeredModel(gpt2, None, layer=LAYER, method="vector", vector=VECTOR) as steered:
        vec = steering_effect(steered, tokenizer, None, top=TOP)
    assert [e.label for e in vec.lens] == ["logit lens of the steering vector"]
    assert_ranked_like(vec.lens[0], layer_norm_lens(gpt2, VECTOR[None])[0], tokenizer)


def test_effect_round_trips_and_prints(gpt2, tokenizer, sae):
    effect = effect_of(gpt2, tokenizer, sae, PROMPTS, layer=LAYER, method="add", latents=ADDED,
                       strength=3.0)  # fmt: skip
    again = SteeringEffect.from_dict(effect.to_dict())
    assert again.format() == effect.format()
    text = str(effect)
    assert text.startswith("next token (4 prompts") and "  raises  " in text
    assert text.count("logit lens of latent") == 2
    assert effect.format(latents=1).count("logit lens of latent") == 1
    chosen = effect.next_token.word_ids
    assert chosen and effect.topic_token_ids(3) == set(chosen[:3])
    assert effect.words(3) == [tokenizer.decode([i]).strip() for i in chosen[:3]]
    assert "  words   " in text


def test_is_word():
    assert is_word(" patient") and is_word("osis") and not is_word(" of") and not is_word("42")


def test_a_bare_decoder_is_refused(tokenizer, sae):
    from transformers import GPT2Config, GPT2Model

    bare = GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=len(tokenizer)))
    with SteeredModel(bare, sae, layer=LAYER, method="add", latents=ADDED) as steered:
        with pytest.raises(ValueError, match="no output embeddings"):
            steering_effect(steered, tokenizer, None)


def test_concept_effect_is_the_stored_one_else_measured(gpt2, tokenizer, sae, scores):
    from hf_sae_steer import FeatureScores
    from hf_sae_steer.steering.effect import concept_effect

    artifact = FeatureScores(scores=scores, coverage=1.0, layer=LAYER, site="resid_post")
    assert concept_effect(artifact) is None  # nothing stored, no model to measure with
    measured = concept_effect(artifact, gpt2, tokenizer, sae, n=5)
    want = effect_of(gpt2, tokenizer, sae, scores=artifact).summary(5)  # swap, as recommended
    assert measured == want and len(measured["raises"]) == 5
    assert measured["measure"].startswith("next token") and measured["words"]
    artifact.effect = SteeringEffect.from_dict(effect_of(
        gpt2, tokenizer, sae, scores=artifact, method="add", latents=ADDED).to_dict())
    stored = concept_effect(artifact, gpt2, tokenizer, sae, n=5)
    assert stored == artifact.effect.summary(5) and stored != measured


def test_a_steering_that_changes_nothing_says_so(gpt2, tokenizer, sae, scores):
    for options in ({"method": "orig"}, {"method": "swap", "strength": 0.0}):
        effect = effect_of(gpt2, tokenizer, sae, PROMPTS, layer=LAYER, scores=scores, **options)
        assert effect == SteeringEffect(None, []) and effect.words() == []
        assert str(effect) == "no change: the steering leaves the model as it is"
    with SteeredModel(gpt2, sae, layer=LAYER, method="sae", scores=scores) as steered:
        sae_only = steering_effect(steered, tokenizer, PROMPTS)  # no latent chosen: no lens
    assert sae_only.next_token is not None and sae_only.lens == []
