"""SteeredModel's defaults from a score artifact: the recommended steering, calibrated clamp and
vector strengths, and the reference's clamp when asked for explicitly (against method_reference)."""

from __future__ import annotations

import warnings

import pytest
import torch
from method_reference import ReferenceOpenAISAE, steer_sequence
from sae_factories import openai_state

from hf_sae_steer import FeatureScores, SteeredModel
from hf_sae_steer.sae import load_sae
from hf_sae_steer.steering.strength import NORM_FRACTION

LAYER = 1
TEXTS = ["The patient was treated for a fever.", "A doctor examined the heart."]
OTHERS = ["The river flows through the valley.", "Engineers built a bridge of steel.",
          "The orchestra played a symphony.", "A farmer planted wheat and barley."]  # fmt: skip


def fit_openai_sae(gpt2, tokenizer, tmp_path, **options):
    """An OpenAI-format SAE saved and loaded back, its plain reference twin, and scores fitted
    on TEXTS against OTHERS with ``options``."""
    state = openai_state(d=32, n=128, k=8, seed=5)
    path = tmp_path / f"resid_post_mlp_v5_32k/autoencoders/{LAYER}.pt"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    sae = load_sae(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = FeatureScores.fit(gpt2, tokenizer, sae, reference=OTHERS + TEXTS[:1],
                                   alignment=TEXTS, embedder=_letters, progress=False,
                                   **options)  # fmt: skip
    return sae, ReferenceOpenAISAE(state), scores


@pytest.fixture
def setup(gpt2, tokenizer, tmp_path):
    return fit_openai_sae(gpt2, tokenizer, tmp_path, calibrate_strength=False)


def _letters(texts):
    return torch.tensor([[t.count(c) / len(t) for c in "aeiourst "] for t in texts])


def reference_logits(model, ids, fn):
    handle = model.transformer.h[LAYER].register_forward_hook(lambda m, a, out: fn(out))
    try:
        return model(ids).logits
    finally:
        handle.remove()


IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])


def test_no_method_means_the_recommended_steering(gpt2, setup):
    sae, ref, scores = setup
    rec = scores.recommended
    assert rec["method"] == "add" and rec["preserve_error"] and rec["norm_fraction"] == 0.5
    latents, weights = scores.latent_weights()
    added = dict(zip(latents.tolist(), weights.tolist(), strict=True))
    want = reference_logits(gpt2, IDS, lambda h: steer_sequence(
        ref, h, "add", None, preserve_error=True, strength=rec["strength"], added=added))
    with SteeredModel(gpt2, sae, scores=scores) as steered:  # layer and site from the scores
        step = steered.interventions[0]
        assert (step.method, step.strength, step.preserve_error) == (
            "add", rec["strength"], True)  # fmt: skip
        torch.testing.assert_close(steered(IDS).logits, want, atol=1e-5, rtol=1e-5)
    with SteeredModel(gpt2, sae, scores=scores, method="swap") as steered:  # explicit wins
        assert steered.interventions[0].method == "swap"
        assert steered.interventions[0].strength == 1.0


def test_reference_clamp_when_asked_and_calibrated_clamp_otherwise(gpt2, setup):
    sae, ref, scores = setup
    want = reference_logits(gpt2, IDS, lambda h: steer_sequence(ref, h, "clamp", scores.scores))
    with SteeredModel(gpt2, sae, scores=scores, method="clamp", clamp_k=5,
                      clamp_value=10) as steered:  # fmt: skip
        torch.testing.assert_close(steered(IDS).logits, want, atol=1e-5, rtol=1e-5)
    typical = scores.stats["typical_activation"]
    want = reference_logits(gpt2, IDS, lambda h: steer_sequence(
        ref, h, "clamp", scores.scores, preserve_error=True, clamp=typical))
    with SteeredModel(gpt2, sae, scores=scores, method="clamp", preserve_error=True) as steered:
        torch.testing.assert_close(steered(IDS).logits, want, atol=1e-5, rtol=1e-5)


def test_vector_needs_no_sae_and_is_calibrated(gpt2, setup):
    _, _, scores = setup
    delta = scores.stats["delta_raw"].double()
    with SteeredModel(gpt2, None, scores=scores, method="vector") as steered:
        strength = steered.interventions[0].strength
        got = steered(IDS).logits
    mean_norm = scores.calibration["mean_norm_raw"]
    assert strength * float(delta.norm()) == pytest.approx(NORM_FRACTION * mean_norm)
    want = reference_logits(gpt2, IDS, lambda h: steer_sequence(
        None, h, "vector", None, strength=strength, vector=delta))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    own = torch.linspace(-1, 1, 32)
    with SteeredModel(gpt2, None, layer=LAYER, method="vector", vector=own) as steered:
        assert steered.interventions[0].strength == 1.0  # a user's vector is taken as given
    with pytest.raises(ValueError, match="needs an SAE"):
        SteeredModel(gpt2, None, layer=LAYER, method="swap", scores=scores.scores)


def test_scores_as_a_path_and_explicit_latents(gpt2, setup, tmp_path):
    sae, ref, scores = setup
    scores.save_pretrained(tmp_path / "scores")
    with SteeredModel(gpt2, sae, scores=str(tmp_path / "scores")) as steered:
        assert steered.interventions[0].method == "add"
    want = reference_logits(gpt2, IDS, lambda h: steer_sequence(
        ref, h, "add", None, preserve_error=True, strength=2.0, added={4: 1.0, 9: 0.5}))
    with SteeredModel(gpt2, sae, layer=LAYER, method="add", latents={4: 1.0, 9: 0.5},
                      strength=2.0) as steered:  # fmt: skip
        torch.testing.assert_close(steered(IDS).logits, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="out of range for d_sae"):
        SteeredModel(gpt2, sae, layer=LAYER, method="add", latents={999: 1.0})


def test_an_all_zero_seed_artifact_recommends_and_warns_no_change(gpt2, tokenizer, tmp_path):
    """An SAE that never fires on the reference set: every seed score is 0, so swap would keep no
    latent and wreck the output; the artifact recommends no change, as its warning says."""
    state = openai_state(d=32, n=128, k=None, seed=5)  # a ReLU SAE ...
    state["latent_bias"] = torch.full((128,), -1e4)  # ... that never fires
    torch.save(state, tmp_path / "dead.pt")
    sae = load_sae(tmp_path / "dead.pt")
    with pytest.warns(UserWarning) as caught:
        scores = FeatureScores.fit(gpt2, tokenizer, sae, layer=LAYER, reference=OTHERS,
                                   alignment=TEXTS, rule="seed", embedder=_letters,
                                   progress=False)  # fmt: skip
    assert torch.count_nonzero(scores.scores) == 0
    note = next(str(w.message) for w in caught if "every score is 0" in str(w.message))
    assert "no change" in note and "swap" in note
    assert scores.recommended["method"] == "orig"
    assert any("no change" in w for w in scores.report().warnings if "every score" in w)
    base = gpt2(IDS).logits
    with SteeredModel(gpt2, sae, scores=scores) as steered:
        torch.testing.assert_close(steered(IDS).logits, base)
    with SteeredModel(gpt2, sae, scores=scores, method="swap") as steered:  # what it warns of
        assert not torch.allclose(steered(IDS).logits, base, atol=1e-3)
