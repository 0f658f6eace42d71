"""SteeredModel on a real tiny GPT-2 with an OpenAI-format SAE loaded from disk."""

from __future__ import annotations

import pytest
import torch
from method_reference import ReferenceOpenAISAE, steer_sequence
from sae_factories import openai_state
from transformers import GenerationConfig, LogitsProcessor, pipeline
from transformers.generation.streamers import BaseStreamer

from hf_sae_steer import METHODS, SteeredModel, SteeringSpec, remove_steering
from hf_sae_steer.sae import load_sae
from hf_sae_steer.steering.names import AWAY_METHODS

LAYER = 1
N_LATENTS = 128


def all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def state():
    return openai_state(d=32, n=N_LATENTS, k=8, seed=5)


@pytest.fixture
def sae(state, tmp_path):
    path = tmp_path / "9.pt"
    torch.save(state, path)
    return load_sae(path)


@pytest.fixture
def scores():
    return torch.rand(N_LATENTS, generator=torch.Generator().manual_seed(6))


@pytest.fixture
def prompts(tokenizer):
    return tokenizer(["The patient was treated for", "A doctor"], return_tensors="pt", padding=True)


ADDED = {3: 1.0, 90: 2.5}
VECTOR = torch.linspace(-1.0, 1.0, 32)


def reference_logits(model, state, input_ids, method, scores, preserve_error):
    ref = ReferenceOpenAISAE(state)
    extra = {"added": ADDED} if method == "add" else {"vector": VECTOR}

    def hook(module, args, output):
        return steer_sequence(ref, output, method, scores, preserve_error=preserve_error, **extra)

    handle = model.transformer.h[LAYER].register_forward_hook(hook)
    try:
        return model(input_ids).logits
    finally:
        handle.remove()


@pytest.mark.parametrize("preserve_error", [False, True])
# the away methods need a topic: test_steering_away.py checks them end to end
@pytest.mark.parametrize("method", [m for m in METHODS if m not in AWAY_METHODS or m == "vector"])
def test_logits_match_independent_reference(gpt2, state, sae, scores, method, preserve_error):
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    want = reference_logits(gpt2, state, ids, method, scores, preserve_error)
    with SteeredModel(
        gpt2,
        sae,
        layer=LAYER,
        site="resid_post",
        method=method,
        scores=scores,
        preserve_error=preserve_error,
        strength=1.0,
        latents=ADDED if method == "add" else None,
        vector=VECTOR if method == "vector" else None,
    ) as steered:
        got = steered(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["sae", "clamp", "weight", "swap"])
def test_kv_cache_equals_full_prefix(gpt2, sae, scores, prompts, method):
    steered = SteeredModel(gpt2, sae, layer=LAYER, method=method, scores=scores)
    out = steered.generate(
        **prompts,
        max_new_tokens=6,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    kv = torch.stack(out.logits, dim=1)
    n = prompts["input_ids"].shape[1]
    mask = torch.cat([prompts["attention_mask"], torch.ones(2, 6, dtype=torch.long)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    full = steered(out.sequences, attention_mask=mask, position_ids=positions).logits
    # Padded rows: compare only the positions that produced new tokens.
    torch.testing.assert_close(kv, full[:, n - 1 : -1], atol=1e-4, rtol=1e-4)
    steered.remove()


def test_batched_left_padding_equals_alone(gpt2, tokenizer, sae, scores):
    texts = ["The patient was treated for a", "A doctor", "Symptoms"]
    steered = SteeredModel(gpt2, sae, layer=LAYER, method="swap", scores=scores)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    together = steered.generate(**batch, max_new_tokens=5, do_sample=False)
    for i, text in enumerate(texts):
        alone = steered.generate(
            **tokenizer([text], return_tensors="pt"), max_new_tokens=5, do_sample=False
        )
        assert together[i, -5:].tolist() == alone[0, -5:].tolist()


def test_steering_changes_generation_and_disabled_restores_base(gpt2, sae, scores, prompts):
    base = gpt2.generate(**prompts, max_new_tokens=8, do_sample=False)
    steered = SteeredModel(gpt2, sae, layer=LAYER, method="clamp", scores=scores)
    assert not torch.equal(steered.generate(**prompts, max_new_tokens=8, do_sample=False), base)
    with steered.disabled():
        assert torch.equal(steered.generate(**prompts, max_new_tokens=8, do_sample=False), base)
    with pytest.raises(KeyError), steered.disabled():
        raise KeyError("boom")
    assert steered.is_steering


def test_remove_restores_the_model_exactly(gpt2, sae, scores, prompts):
    before = gpt2(**prompts).logits
    hooks = all_hooks(gpt2)
    steered = SteeredModel(gpt2, sae, layer=LAYER, site="resid_mid", method="swap", scores=scores)
    assert all_hooks(gpt2) > hooks
    assert not torch.equal(gpt2(**prompts).logits, before)
    steered.remove()
    assert all_hooks(gpt2) == hooks
    assert torch.equal(gpt2(**prompts).logits, before)
    with pytest.raises(RuntimeError, match="was removed"):
        steered.generate(**prompts)


def test_generation_arguments_pass_through(gpt2, tokenizer, sae, scores, prompts):
    steered = SteeredModel(gpt2, sae, layer=LAYER, method="swap", scores=scores)

    class Collect(BaseStreamer):
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.clone())

        def end(self):
            self.chunks.append(None)

    one = tokenizer(["The patient"], return_tensors="pt")
    streamer = Collect()
    out = steered.generate(**one, max_new_tokens=4, do_sample=False, streamer=streamer)
    assert (
        streamer.chunks[-1] is None
        and torch.cat(streamer.chunks[1:-1]).tolist() == out[0, -4:].tolist()
    )

    torch.manual_seed(0)
    a = steered.generate(**prompts, max_new_tokens=5, do_sample=True, top_k=20, temperature=0.8)
    torch.manual_seed(0)
    b = steered.generate(**prompts, max_new_tokens=5, do_sample=True, top_k=20, temperature=0.8)
    assert torch.equal(a, b)

    beams = steered.generate(**prompts, max_new_tokens=4, num_beams=3, num_return_sequences=2)
    assert beams.shape[0] == 4

    config = GenerationConfig(max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert (
        steered.generate(**prompts, generation_config=config).shape[1]
        == prompts["input_ids"].shape[1] + 3
    )

    class Ban(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores[:, 7] = -float("inf")
            return scores

    banned = steered.generate(
        **prompts, max_new_tokens=6, do_sample=False, logits_processor=[Ban()]
    )
    assert 7 not in banned[:, -6:].flatten().tolist()


def test_generation_error_leaks_nothing(gpt2, sae, scores, prompts):
    steered = SteeredModel(
        gpt2, sae, layer=LAYER, method="swap", scores=scores, positions="generated"
    )
    expected = steered.generate(**prompts, max_new_tokens=4, do_sample=False)
    hooks = all_hooks(gpt2)

    class Explode(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] > prompts["input_ids"].shape[1] + 1:
                raise RuntimeError("processor failed")
            return scores

    with pytest.raises(RuntimeError, match="processor failed"):
        steered.generate(**prompts, max_new_tokens=4, logits_processor=[Explode()])
    assert all_hooks(gpt2) == hooks
    assert steered.tracker._state.pinned is None and steered.tracker.enabled
    assert torch.equal(steered.generate(**prompts, max_new_tokens=4, do_sample=False), expected)


def test_pipeline_is_steered(gpt2, tokenizer, sae, scores):
    steered = SteeredModel(gpt2, sae, layer=LAYER, method="clamp", scores=scores)
    pipe = pipeline("text-generation", model=steered, tokenizer=tokenizer)
    kwargs = dict(max_new_tokens=6, do_sample=False, return_full_text=False)
    text = pipe("The patient", **kwargs)[0]["generated_text"]
    ids = steered.generate(
        **tokenizer(["The patient"], return_tensors="pt"), max_new_tokens=6, do_sample=False
    )
    assert text == tokenizer.decode(ids[0, -6:], skip_special_tokens=True)
    with steered.disabled():
        assert pipe("The patient", **kwargs)[0]["generated_text"] != text


def test_positions_from_the_cache(gpt2, sae, scores, prompts):
    kwargs = dict(
        max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    base = torch.stack(gpt2.generate(**prompts, **kwargs).logits, 1)
    runs = {}
    for positions in ("all", "prompt", "generated"):
        with SteeredModel(
            gpt2, sae, layer=LAYER, method="clamp", scores=scores, positions=positions
        ) as steered:
            out = steered.generate(**prompts, **kwargs)
            runs[positions] = torch.stack(out.logits, 1)
            if positions == "generated":
                # The same split replayed without a cache: only positions >= prompt are steered.
                n = prompts["input_ids"].shape[1]
                mask = torch.cat([prompts["attention_mask"], torch.ones(2, 5, dtype=torch.long)], 1)
                with steered.tracker.prompt(n):
                    full = steered(
                        out.sequences,
                        attention_mask=mask,
                        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    ).logits
                torch.testing.assert_close(
                    runs[positions], full[:, n - 1 : -1], atol=1e-4, rtol=1e-4
                )
    # The first new token is predicted from the prompt pass alone.
    torch.testing.assert_close(runs["generated"][:, 0], base[:, 0])
    torch.testing.assert_close(runs["prompt"][:, 0], runs["all"][:, 0])
    assert not torch.allclose(runs["generated"][:, 1:], base[:, 1:])
    assert not torch.allclose(runs["prompt"][:, 1:], runs["all"][:, 1:])


def test_several_sites_match_the_reference(gpt2, state, sae, scores):
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    ref = ReferenceOpenAISAE(state)
    handles = [
        gpt2.transformer.h[layer].register_forward_hook(
            lambda m, a, out, method=method: steer_sequence(ref, out, method, scores)
        )
        for layer, method in ((0, "swap"), (2, "clamp"))
    ]
    want = gpt2(ids).logits
    for h in handles:
        h.remove()
    specs = [
        SteeringSpec(sae, layer=0, site="resid_post", method="swap", scores=scores),
        (sae, 2, "resid_post", "clamp", {"scores": scores}),
    ]
    with SteeredModel(gpt2, specs) as steered:
        torch.testing.assert_close(steered(ids).logits, want, atol=1e-5, rtol=1e-5)


def test_set_strength_and_repr(gpt2, sae, scores, prompts):
    base = gpt2(**prompts).logits
    steered = SteeredModel(gpt2, sae, layer=LAYER, method="swap", scores=scores)
    assert not torch.allclose(steered(**prompts).logits, base)
    steered.set_strength(0.0)
    assert torch.equal(steered(**prompts).logits, base)
    assert "blocks.1.hook_resid_post: swap (strength=0.0" in repr(steered)
    assert steered.config is gpt2.config and steered.device == gpt2.device


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(layer=7), ValueError, "Layer 7 is out of range: this model has 3 blocks"),
        (dict(site="resid_final"), ValueError, "Unknown site 'resid_final'"),
        (dict(method="amplify"), ValueError, "Unknown method 'amplify'"),
        (dict(scores=torch.rand(5)), ValueError, "length d_sae=128"),
        (dict(scores=torch.full((N_LATENTS,), float("nan"))), ValueError, "NaN/inf"),
        (dict(method="clamp", clamp_k=1000), ValueError, "clamp_k=1000"),
        (dict(positions="late"), ValueError, "Unknown positions 'late'"),
        (dict(layer=None), ValueError, "No layer given"),
    ],
)
def test_bad_input_leaves_model_untouched(gpt2, sae, scores, kwargs, error, message):
    hooks = all_hooks(gpt2)
    options = dict(layer=LAYER, method="swap", scores=scores) | kwargs
    with pytest.raises(error, match=message):
        SteeredModel(gpt2, sae, **options)
    assert all_hooks(gpt2) == hooks


def test_width_mismatch_and_partial_specs_leave_no_hooks(gpt2, sae, scores, tmp_path):
    wide = tmp_path / "wide.pt"
    torch.save(openai_state(d=48, n=64, k=4), wide)
    hooks = all_hooks(gpt2)
    with pytest.raises(ValueError, match="d_in=48 does not match the model's hidden size 32"):
        SteeredModel(gpt2, load_sae(wide), layer=0, method="sae")
    specs = [(sae, 0, "resid_post", "swap", {"scores": scores}), (sae, 9, "resid_post", "sae")]
    with pytest.raises(ValueError, match="out of range"):
        SteeredModel(gpt2, specs)
    assert all_hooks(gpt2) == hooks


def test_one_steered_model_per_model(gpt2, sae, scores):
    first = SteeredModel(gpt2, sae, layer=LAYER, method="swap", scores=scores)
    with pytest.raises(RuntimeError, match="already steered"):
        SteeredModel(gpt2, sae, layer=0, method="sae")
    assert remove_steering(gpt2) == 1
    assert not first.is_steering
    SteeredModel(gpt2, sae, layer=0, method="sae").remove()


def test_scoring_under_live_steering_reads_the_base_model(gpt2, tokenizer, sae, scores):
    from hf_sae_steer import FeatureScores

    def embed(texts):
        return torch.tensor([[len(t), t.count("e"), t.count(" ")] for t in texts], dtype=float)

    reference = ["The patient was treated", "A river flows", "Engineers built a bridge"]
    kwargs = dict(
        layer=2, site="resid_post", reference=reference, alignment=["A doctor"],
        embedder=embed, progress=False,
    )  # fmt: skip
    base = FeatureScores.fit(gpt2, tokenizer, sae, **kwargs)
    with SteeredModel(gpt2, sae, layer=0, method="clamp", scores=scores) as steered:
        ids = torch.tensor([[5, 6, 7]])
        with steered.disabled():
            unsteered = steered(ids).logits
        assert not torch.allclose(steered(ids).logits, unsteered)  # steering really is live
        during = FeatureScores.fit(gpt2, tokenizer, sae, **kwargs)
        assert steered.is_steering
    torch.testing.assert_close(during.scores, base.scores, rtol=0, atol=0)
