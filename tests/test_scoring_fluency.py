"""The fluency probe: rows measured once and reused, any batch giving the same point, the model
left as it was."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from tiny_models import letters, tiny_gpt2, tiny_topk_sae, varied_prompts

from hf_sae_steer import FeatureScores
from hf_sae_steer.scoring.fluency import BASE, FluencyProbe
from hf_sae_steer.steering.live import live_steerings

ALIGNMENT = ["The patient had a fever.", "A doctor treated the infection."]
PROMPTS = ["The river", "A farmer", "The bridge"]


@pytest.fixture(scope="module")
def fitted(tokenizer):
    model = tiny_gpt2(len(tokenizer), seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # peaked distributions: steering moves the perplexity
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = FeatureScores.fit(
            model, tokenizer, tiny_topk_sae(), reference=varied_prompts(12), alignment=ALIGNMENT,
            embedder=letters, progress=False, calibrate_strength=False,
        )  # fmt: skip
    return model, tokenizer, scores


def probe(fitted, **options) -> FluencyProbe:
    model, tok, scores = fitted
    return FluencyProbe(
        model, tok, tiny_topk_sae(), scores, method="add", preserve_error=True,
        mean_norm=scores.calibration.mean_norm, prompts=PROMPTS, max_new_tokens=6, **options,
    )  # fmt: skip


def test_rows_are_measured_once_and_more_samples_extend_a_point(fitted):
    with torch.inference_mode(), probe(fitted) as p:
        (one,) = p.measure([(0.5, 1)])
        first = {row: p.ppl[row] for row in p.ppl}
        tokens = p.tokens
        (two,) = p.measure([(0.5, 2)])
        assert all(p.ppl[row] == value for row, value in first.items())  # kept, not redone
        assert len(p.ppl) == 2 * len(first) and p.tokens > tokens
        tokens = p.tokens
        (again,) = p.measure([(0.5, 2)])
        assert p.tokens == tokens and again == two  # nothing new to generate
    assert one.samples == 1 and two.samples == 2 and two.continuations <= 2 * len(PROMPTS)
    # the ratio is the paired geometric mean over the rows, written out
    logs = [math.log(p.ppl[(0.5, i, j)] / p.ppl[(BASE, i, j)]) for i in range(3) for j in range(2)]
    assert two.ratio == pytest.approx(math.exp(sum(logs) / len(logs)), rel=1e-12)


def test_a_point_is_the_same_in_any_batch(fitted):
    with torch.inference_mode(), probe(fitted, batch_size=64) as together:
        points = together.measure([(0.25, 2), (0.5, 2), (1.0, 2)])
    with torch.inference_mode(), probe(fitted, batch_size=1) as alone:
        (middle,) = alone.measure([(0.5, 2)])
    assert middle.ratio == pytest.approx(points[1].ratio, rel=1e-6)
    assert middle.strength == points[1].strength and middle.norm_fraction == 0.5


def test_the_model_is_left_as_it_was(fitted):
    model, tok, _ = fitted
    ids = tok(["The river"], return_tensors="pt")["input_ids"]
    before = model(ids).logits
    with pytest.raises(ValueError, match="strength must be a finite number"):
        with torch.inference_mode(), probe(fitted) as p:
            p.measure([(1e9, 1)])  # a strength beyond the limit, refused mid-measurement
    assert not live_steerings(model)
    assert torch.equal(model(ids).logits, before)


def test_what_it_refuses(fitted, tokenizer):
    model, tok, scores = fitted
    with pytest.raises(ValueError, match="Only additive methods"):
        FluencyProbe(model, tok, tiny_topk_sae(), scores, method="swap", preserve_error=False,
                     mean_norm=1.0, prompts=PROMPTS)  # fmt: skip
    short = tiny_gpt2(len(tokenizer))
    short.config.n_positions = 4
    with pytest.raises(ValueError, match="leaves no room"):
        FluencyProbe(short, tok, tiny_topk_sae(), scores, method="add", preserve_error=True,
                     mean_norm=1.0, prompts=PROMPTS)  # fmt: skip
