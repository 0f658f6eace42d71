"""Models sharded by accelerate (``device_map="auto"``): scoring and steering still work, the
SAE beside its block, and give what the plain model gives."""

from __future__ import annotations

import pytest
import torch
from score_checks import assert_same_scores, fit_tiny
from tiny_models import tiny_gpt2, tiny_topk_sae

from hf_sae_steer import SteeredModel
from hf_sae_steer.models import model_device, module_device


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def models(tmp_path_factory, request):
    from transformers import AutoModelForCausalLM

    tokenizer = request.getfixturevalue("tokenizer")
    plain = tiny_gpt2(len(tokenizer))
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    plain.save_pretrained(folder / "model")
    # About 220 kB of weights and 150 kB of "cpu": accelerate's dispatch keeps the embeddings
    # in memory and offloads the blocks to disk, loading each only while it runs.
    dispatched = AutoModelForCausalLM.from_pretrained(
        folder / "model", device_map="auto", max_memory={"cpu": 150_000},
        offload_folder=folder / "offload",
    ).eval()  # fmt: skip
    return plain, dispatched, tokenizer


def test_the_model_is_really_dispatched(models):
    _, dispatched, _ = models
    placement = dispatched.hf_device_map
    assert set(placement.values()) == {"cpu", "disk"} and placement["transformer.h"] == "disk"
    assert hasattr(dispatched.transformer.h[1], "_hf_hook")  # accelerate's offload hook
    assert module_device(dispatched.transformer.h[1]) is None  # nothing materialised
    assert model_device(dispatched) == torch.device("cpu")


def test_fit_on_a_dispatched_model_equals_the_plain_model(models):
    plain, dispatched, tokenizer = models
    sae = tiny_topk_sae(layer=1)
    for rule in ("seed", "mean_diff"):
        got = fit_tiny((dispatched, tokenizer, sae), rule=rule)
        assert_same_scores(got, fit_tiny((plain, tokenizer, sae), rule=rule))
    assert module_device(dispatched.transformer.h[1]) is None  # offloaded again afterwards


def test_steering_a_dispatched_model_equals_steering_the_plain_model(models):
    plain, dispatched, tokenizer = models
    sae = tiny_topk_sae(layer=1)
    scores = fit_tiny((plain, tokenizer, sae), rule="mean_diff")
    inputs = tokenizer(["The patient was", "A farmer planted the"], return_tensors="pt",
                       padding=True)  # fmt: skip
    options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    before = hook_count(dispatched)
    outputs = []
    for model in (plain, dispatched):
        with SteeredModel(model, sae, scores=scores, strength=4.0) as steered:  # recommended add
            steered_ids = steered.generate(**inputs, **options)
            with steered.disabled():
                base_ids = steered.generate(**inputs, **options)
        outputs.append((steered_ids, base_ids))
    (plain_steered, plain_base), (disp_steered, disp_base) = outputs
    assert torch.equal(disp_steered, plain_steered) and torch.equal(disp_base, plain_base)
    assert not torch.equal(plain_steered, plain_base)  # the steering does something
    assert hook_count(dispatched) == before
