"""Continuing a generation from its KV cache steers the same positions as one uninterrupted call:
3 + 1 new tokens equal 4 (greedy, left-padded batches, ``inputs_embeds``, static caches), under
every ``positions`` mode, on tiny GPT-2 and Llama; a new turn appended after the cache is prompt
(checked against an independent per-token reference); a cropped cache forgets what it dropped."""

from __future__ import annotations

import pytest
import torch
from arch_models import hf
from method_reference import ReferenceOpenAISAE, steer_sequence
from sae_factories import openai_state
from tiny_models import tiny_gpt2
from transformers import DynamicCache, StaticCache

from hf_sae_steer import SteeredModel, load_sae

LAYER = 1
POSITIONS = ("all", "prompt", "generated")
IDS = torch.tensor([[0, 0, 5, 17, 42, 99], [9, 8, 7, 6, 5, 4]])  # row 0 left-padded
MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
GREEDY = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None,
          "return_dict_in_generate": True, "output_logits": True}  # fmt: skip


def build(name: str):
    torch.manual_seed(0)
    return tiny_gpt2(128) if name == "gpt2" else hf("LlamaConfig", "LlamaForCausalLM", 3)().eval()


@pytest.fixture
def state():
    return openai_state(d=32, n=128, k=8, seed=5)


@pytest.fixture
def sae(state, tmp_path):
    torch.save(state, tmp_path / "topk.pt")
    return load_sae(tmp_path / "topk.pt")


@pytest.fixture
def scores():
    return torch.rand(128, generator=torch.Generator().manual_seed(6))


def steer(model, sae, scores, positions):
    return SteeredModel(model, sae, layer=LAYER, method="swap", scores=scores, positions=positions)


def cache_of(out):
    return getattr(out, "cache", None) or out.past_key_values


def assert_same_cache(a, b):
    for la, lb in zip(a.layers, b.layers, strict=True):
        torch.testing.assert_close(la.keys, lb.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(la.values, lb.values, atol=1e-5, rtol=1e-5)


def logits(out):
    return torch.stack(out.logits, 1)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_continuing_from_the_cache_equals_one_call(name, sae, scores, positions):
    model = build(name)
    with steer(model, sae, scores, positions) as steered:
        whole = steered.generate(IDS, attention_mask=MASK, max_new_tokens=4, **GREEDY)
        first = steered.generate(IDS, attention_mask=MASK, max_new_tokens=3, **GREEDY)
        grown = torch.cat([MASK, torch.ones(2, 3, dtype=MASK.dtype)], 1)
        cache = cache_of(first)
        rest = model.generate(
            first.sequences, attention_mask=grown, past_key_values=cache, max_new_tokens=1, **GREEDY
        )
        with steered.disabled():
            base = steered.generate(IDS, attention_mask=MASK, max_new_tokens=4, **GREEDY)
    assert torch.equal(rest.sequences, whole.sequences)
    torch.testing.assert_close(logits(rest)[:, 0], logits(whole)[:, 3], atol=1e-5, rtol=1e-5)
    assert_same_cache(cache_of(rest), cache_of(whole))
    assert not torch.allclose(logits(whole)[:, 1:], logits(base)[:, 1:]), "steering must matter"


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_continuing_from_inputs_embeds_equals_one_call(name, sae, scores, positions):
    model = build(name)
    embed = model.get_input_embeddings()
    prompt = embed(IDS[1:])
    with steer(model, sae, scores, positions), torch.no_grad():
        whole = model.generate(inputs_embeds=prompt, max_new_tokens=4, **GREEDY)
        first = model.generate(inputs_embeds=prompt, max_new_tokens=3, **GREEDY)
        grown = torch.cat([prompt, embed(first.sequences)], 1)
        rest = model.generate(inputs_embeds=grown, past_key_values=cache_of(first),
                              max_new_tokens=1, **GREEDY)  # fmt: skip
    assert torch.cat([first.sequences, rest.sequences], 1).tolist() == whole.sequences.tolist()
    torch.testing.assert_close(logits(rest)[:, 0], logits(whole)[:, 3], atol=1e-5, rtol=1e-5)
    assert_same_cache(cache_of(rest), cache_of(whole))


@pytest.mark.parametrize("positions", ["prompt", "generated"])
def test_a_cache_the_user_owns_continues_without_return_dict(sae, scores, positions):
    """The chat pattern: one DynamicCache made by the caller, plain tensor outputs."""
    model = build("gpt2")
    plain = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    with steer(model, sae, scores, positions) as steered:
        whole = steered.generate(IDS, attention_mask=MASK, max_new_tokens=5, **plain)
        cache = DynamicCache()
        first = steered.generate(IDS, attention_mask=MASK, past_key_values=cache,
                                 max_new_tokens=2, **plain)  # fmt: skip
        grown = torch.cat([MASK, torch.ones(2, 2, dtype=MASK.dtype)], 1)
        rest = steered.generate(first, attention_mask=grown, past_key_values=cache,
                                max_new_tokens=3, **plain)  # fmt: skip
    assert torch.equal(rest, whole)


@pytest.mark.parametrize("positions", ["prompt", "generated"])
def test_a_static_cache_continues_and_a_reset_one_starts_afresh(sae, scores, positions):
    model = build("llama")
    ids = IDS[1:]
    with steer(model, sae, scores, positions) as steered:
        whole = steered.generate(ids, max_new_tokens=4, **GREEDY)
        cache = StaticCache(config=model.config, max_cache_len=16)
        first = steered.generate(ids, past_key_values=cache, max_new_tokens=3, **GREEDY)
        rest = steered.generate(first.sequences, past_key_values=cache, max_new_tokens=1, **GREEDY)
        cache.reset()  # the same object, a new conversation: its old spans must not apply
        again = steered.generate(ids, past_key_values=cache, max_new_tokens=4, **GREEDY)
    assert torch.equal(rest.sequences, whole.sequences)
    torch.testing.assert_close(logits(rest)[:, 0], logits(whole)[:, 3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(again), logits(whole), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["prompt", "generated"])
def test_a_cropped_cache_forgets_the_positions_it_dropped(sae, scores, positions):
    """Rewinding a chat (crop the cache into the prompt, send a longer prompt) equals a fresh
    call: the dropped generated positions now hold prompt tokens."""
    model = build("gpt2")
    ids = IDS[1:]
    longer = torch.cat([ids, torch.tensor([[11, 12, 13]])], 1)
    with steer(model, sae, scores, positions) as steered:
        fresh = steered.generate(longer, max_new_tokens=3, **GREEDY)
        cache = cache_of(steered.generate(ids, max_new_tokens=4, **GREEDY))
        cache.crop(ids.shape[1] - 1 - cache.get_seq_length())  # negative: tokens to drop
        again = steered.generate(longer, past_key_values=cache, max_new_tokens=3, **GREEDY)
    assert torch.equal(again.sequences, fresh.sequences)
    torch.testing.assert_close(logits(again), logits(fresh), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["prompt", "generated"])
def test_a_new_turn_after_the_cache_is_prompt(state, sae, scores, positions):
    """Turn 1 generates 3 tokens, the user adds 2, turn 2 generates 2 from the kept cache: the
    model's tokens are "generated", the user's "prompt", as a per-token reference says."""
    model = build("gpt2")
    ids, turn = IDS[1:], torch.tensor([[11, 12]])
    p = ids.shape[1]
    with steer(model, sae, scores, positions) as steered:
        first = steered.generate(ids, max_new_tokens=3, **GREEDY)
        chat = torch.cat([first.sequences, turn], 1)
        second = steered.generate(chat, past_key_values=cache_of(first), max_new_tokens=2, **GREEDY)
    sequence = second.sequences
    generated = torch.zeros(sequence.shape[1], dtype=torch.bool)
    generated[p : p + 3] = True  # turn 1's tokens
    generated[chat.shape[1] :] = True  # turn 2's tokens
    steered_here = generated if positions == "generated" else ~generated
    ref = ReferenceOpenAISAE(state)

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        edited = steer_sequence(ref, hidden, "swap", scores)
        edited = torch.where(steered_here[: hidden.shape[1], None], edited, hidden)
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    handle = model.transformer.h[LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            want = model(sequence).logits[:, chat.shape[1] - 1 : -1]
    finally:
        handle.remove()
    torch.testing.assert_close(logits(second), want, atol=1e-4, rtol=1e-4)


def test_caches_from_plain_forward_passes_are_all_prompt(sae, scores):
    """A cache the user prefilled with a forward pass carries no history: the input is prompt."""
    model = build("gpt2")
    ids = IDS[1:]
    with steer(model, sae, scores, "generated") as steered:
        fresh = steered.generate(ids, max_new_tokens=3, **GREEDY)
        cache = DynamicCache()
        with torch.no_grad():
            steered(ids[:, :-1], past_key_values=cache, use_cache=True)
        prefilled = steered.generate(ids, past_key_values=cache, max_new_tokens=3, **GREEDY)
    torch.testing.assert_close(logits(prefilled), logits(fresh), atol=1e-5, rtol=1e-5)
