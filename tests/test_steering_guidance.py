"""SteeringLogitsProcessor: guidance mixing inside a plain model.generate()."""

from __future__ import annotations

import pytest
import torch
from sae_factories import openai_state

from hf_sae_steer import SteeredModel, SteeringLogitsProcessor
from hf_sae_steer.sae import load_sae


@pytest.fixture
def steered(gpt2, tmp_path):
    path = tmp_path / "sae.pt"
    torch.save(openai_state(d=32, n=128, k=8, seed=5), path)
    scores = torch.rand(128, generator=torch.Generator().manual_seed(6))
    with SteeredModel(gpt2, load_sae(path), layer=1, method="clamp", scores=scores) as s:
        yield s


@pytest.fixture
def prompts(tokenizer):
    return tokenizer(["The patient was treated for", "A doctor"], return_tensors="pt", padding=True)


KW = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)


def logits_of(out):
    return torch.stack(out.logits, dim=1)


def test_scale_one_from_the_base_model_equals_steering(gpt2, steered, prompts):
    want = steered.generate(**prompts, **KW)
    with steered.disabled():
        got = gpt2.generate(
            **prompts,
            logits_processor=[SteeringLogitsProcessor(steered, 1.0)],
            max_new_tokens=6,
            do_sample=False,
        )
    assert torch.equal(got, want.sequences)


def test_scale_zero_from_the_steered_model_equals_base(gpt2, steered, prompts):
    with steered.disabled():
        want = gpt2.generate(**prompts, max_new_tokens=6, do_sample=False)
    got = gpt2.generate(
        **prompts,
        logits_processor=[SteeringLogitsProcessor(steered, 0.0)],
        max_new_tokens=6,
        do_sample=False,
    )
    assert torch.equal(got, want)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_mix_is_base_plus_scale_times_difference(gpt2, steered, prompts, scale):
    """Check each step's processed scores against two independent full-prefix passes."""
    seen = []

    class Record(SteeringLogitsProcessor):
        def __call__(self, input_ids, scores):
            mixed = super().__call__(input_ids, scores)
            seen.append((input_ids.clone(), mixed.clone()))
            return mixed

    with steered.disabled():
        gpt2.generate(
            **prompts, logits_processor=[Record(steered, scale)], max_new_tokens=4, do_sample=False
        )
    for ids, mixed in seen:
        mask = torch.cat(
            [
                prompts["attention_mask"],
                torch.ones(2, ids.shape[1] - prompts["input_ids"].shape[1], dtype=torch.long),
            ],
            dim=1,
        )
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        steer_logits = steered(ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        with steered.disabled():
            base_logits = steered(ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        base_lp, steer_lp = base_logits.log_softmax(-1), steer_logits.log_softmax(-1)
        want = (base_lp + scale * (steer_lp - base_lp)).log_softmax(-1)
        torch.testing.assert_close(mixed, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_beam_search_at_scale_one_equals_steered_beam_search(gpt2, tmp_path, prompts, positions):
    path = tmp_path / "sae.pt"
    torch.save(openai_state(d=32, n=128, k=8, seed=5), path)
    scores = torch.rand(128, generator=torch.Generator().manual_seed(6))
    kw = dict(max_new_tokens=5, num_beams=3, output_scores=True, return_dict_in_generate=True)
    with SteeredModel(
        gpt2, load_sae(path), layer=1, method="clamp", scores=scores, positions=positions
    ) as steered:
        want = steered.generate(**prompts, **kw)
        with steered.disabled():
            got = gpt2.generate(
                **prompts, logits_processor=[SteeringLogitsProcessor(steered)], **kw
            )
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(got.sequences_scores, want.sequences_scores, atol=1e-4, rtol=1e-4)


def test_sampling_runs_and_is_reproducible(gpt2, steered, prompts):
    proc = SteeringLogitsProcessor(steered, 1.5)
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        with steered.disabled():
            runs.append(
                gpt2.generate(**prompts, logits_processor=[proc], do_sample=True, max_new_tokens=4)
            )
    assert torch.equal(runs[0], runs[1])


def test_bad_arguments(steered, gpt2):
    with pytest.raises(TypeError, match="must be a SteeredModel"):
        SteeringLogitsProcessor(gpt2, 1.0)
    with pytest.raises(ValueError, match="guidance_scale must be finite"):
        SteeringLogitsProcessor(steered, float("inf"))
