"""Strength per topic (docs/method.md §6): the fluency curve and the calibrated strength."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from calibration_reference import grid_answer, grid_curve
from tiny_models import letters, tiny_gpt2, tiny_topk_sae, varied_prompts

from hf_sae_steer import FeatureScores, SteeredModel
from hf_sae_steer.scoring.calibration import calibrate, fraction_at, run_calibration

ALIGNMENT = ["The patient had a fever.", "A doctor treated the infection.",
             "Symptoms of the infection include fever.", "The doctor examined the lungs."]


def curve(*points):
    return [{"norm_fraction": r, "strength": 2 * r, "perplexity_ratio": q} for r, q in points]


def test_fraction_at_reads_the_curve_in_log_ratio():
    c = curve((0.25, 1.1), (0.5, 1.3), (1.0, 2.0))
    # between 0.5 (log 1.3) and 1.0 (log 2.0)
    want = 0.5 + (math.log(1.5) - math.log(1.3)) / (math.log(2.0) - math.log(1.3)) * 0.5
    assert fraction_at(c, 1.5) == pytest.approx(want)
    assert fraction_at(c, 3.0) == 1.0  # never that disfluent: the largest point
    # already too costly at the first point: from (0, ratio 1)
    assert fraction_at(curve((0.5, 2.0)), 1.5) == pytest.approx(0.5 * math.log(1.5) / math.log(2))
    # a dip after a rise does not count as a way back
    assert fraction_at(curve((0.25, 1.6), (0.5, 1.2)), 1.5) < 0.25
    with pytest.raises(ValueError, match="above 1"):
        fraction_at(c, 1.0)


@pytest.fixture(scope="module")
def fitted(tokenizer):
    model = tiny_gpt2(len(tokenizer))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = FeatureScores.fit(
            model, tokenizer, tiny_topk_sae(), reference=varied_prompts(16), alignment=ALIGNMENT,
            embedder=letters, progress=False, target_ratio=1.3,
            calibration_prompts=["The river", "A farmer", "The bridge", "In the spring"],
        )  # fmt: skip
    return model, tokenizer, scores


def test_fit_records_the_curve_and_recommends_the_calibrated_strength(fitted):
    _, _, scores = fitted
    fluency = scores.calibration["fluency"]
    rec = scores.recommended
    assert rec["calibrated"] and rec["method"] == "add"
    assert rec["strength"] == pytest.approx(fluency["strength"])
    assert rec["norm_fraction"] == pytest.approx(fraction_at(fluency["curve"], 1.3))
    # strength is linear in the norm fraction
    for point in fluency["curve"]:
        assert point["strength"] / point["norm_fraction"] == pytest.approx(
            rec["strength"] / rec["norm_fraction"], rel=1e-6)  # fmt: skip
    assert fluency["search"] == "secant" and fluency["samples"] == 2
    assert scores.options["calibration_seconds"] > 0 and scores.options["calibration_tokens"] > 0


def test_the_calibration_survives_saving_and_steers_by_default(fitted, tmp_path):
    model, tok, scores = fitted
    scores.save_pretrained(tmp_path / "s")
    back = FeatureScores.from_pretrained(tmp_path / "s")
    assert back.calibration["fluency"]["curve"] == scores.calibration["fluency"]["curve"]
    with SteeredModel(model, tiny_topk_sae(), scores=back) as steered:
        assert steered.interventions[0].strength == pytest.approx(scores.recommended["strength"])
    with SteeredModel(model, tiny_topk_sae(), scores=back, method="add",
                      strength="calibrated") as steered:  # fmt: skip
        assert steered.interventions[0].strength == pytest.approx(scores.recommended["strength"])


def test_calibrated_strength_without_a_measured_curve(fitted):
    model, _, scores = fitted
    # vector was not measured: the strength of the default norm fraction, as in 0.2
    with SteeredModel(model, None, scores=scores, method="vector", strength="calibrated") as s:
        delta = scores.stats["delta_raw"].double()
        assert s.interventions[0].strength * float(delta.norm()) == pytest.approx(
            0.5 * scores.calibration["mean_norm_raw"])  # fmt: skip
    # a method that adds no vector has nothing to calibrate
    with pytest.raises(ValueError, match="calibrated"):
        SteeredModel(model, tiny_topk_sae(), scores=scores, method="swap", strength="calibrated")


# -- the search against the whole grid, computed plainly ------------------------------------
PROMPTS = ["The river", "A farmer", "The bridge", "In the spring"]
STEPS = 10
# Targets across each test model's plain curve (printed on failure): under its first point,
# between every pair of neighbours, and over its last. Both curves rise with the strength.
TARGETS = {
    "gpt2": (1.1, 1.5, 3.0, 8.0, 20.0),  # ~ 1.00 1.00 1.22 2.42 4.75 11.3
    "llama": (1.02, 1.05, 1.2, 1.4, 1.8, 2.2, 3.0),  # ~ 1.04 1.08 1.28 1.56 1.98 2.46
}


def sharp_model(kind: str, vocab: int):
    """A tiny model with peaked next-token distributions (random ones are nearly uniform, and
    steering then barely moves their perplexity)."""
    if kind == "gpt2":
        model, factor = tiny_gpt2(vocab, seed=3), 20.0
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=128, vocab_size=vocab,
            bos_token_id=0, eos_token_id=0, pad_token_id=0,
        )  # fmt: skip
        model, factor = LlamaForCausalLM(config).eval(), 10.0
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(factor)
    return model


@pytest.fixture(scope="module", params=sorted(TARGETS))
def uncalibrated(request, tokenizer):
    model = sharp_model(request.param, len(tokenizer))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = FeatureScores.fit(
            model, tokenizer, tiny_topk_sae(), reference=varied_prompts(16), alignment=ALIGNMENT,
            embedder=letters, progress=False, calibrate_strength=False,
        )  # fmt: skip
    rec = scores.recommended

    def steered_at(rho):
        return SteeredModel(model, tiny_topk_sae(), scores=scores,
                            strength=rec.strength * rho / rec.norm_fraction)  # fmt: skip

    plain = grid_curve(model, tokenizer, steered_at, PROMPTS, samples=2, steps=STEPS)
    return request.param, model, tokenizer, scores, plain


def test_the_full_grid_equals_the_plain_computation(uncalibrated):
    _, model, tok, scores, plain = uncalibrated
    fluency = calibrate(model, tok, tiny_topk_sae(), scores, prompts=PROMPTS,
                        max_new_tokens=STEPS, search=False, batch_size=5)  # fmt: skip
    got = {p["norm_fraction"]: p["perplexity_ratio"] for p in fluency["curve"]}
    assert got.keys() == plain.keys()
    for rho, ratio in plain.items():
        assert got[rho] == pytest.approx(ratio, rel=1e-5), rho
    assert all(0 < p["continuations"] <= 8 for p in fluency["curve"])
    assert fluency["search"] == "grid"
    ratios = [plain[rho] for rho in sorted(plain)]
    assert ratios == sorted(ratios), ratios  # what TARGETS assume


def test_the_search_chooses_the_full_grids_point_with_fewer_points(uncalibrated):
    kind, model, tok, scores, plain = uncalibrated
    measured = []
    for target in TARGETS[kind]:
        run = run_calibration(model, tok, tiny_topk_sae(), scores, prompts=PROMPTS,
                              max_new_tokens=STEPS, target_ratio=target)  # fmt: skip
        fluency = run.fluency
        want = grid_answer(plain, target)
        assert fluency.norm_fraction == pytest.approx(want, rel=1e-5), (target, plain)
        assert fluency.strength == pytest.approx(
            scores.recommended.strength * want / scores.recommended.norm_fraction, rel=1e-5)
        # the recorded curve is what was measured: grid points, as the plain computation has them
        for point in fluency.curve:
            assert point["perplexity_ratio"] == pytest.approx(plain[point["norm_fraction"]],
                                                              rel=1e-5)  # fmt: skip
        # the LM tokens of each generated row, counted twice (generated, then scored) at most
        assert 0 < run.tokens <= (len(fluency.curve) + 1) * 8 * 2 * (STEPS + 4)
        measured.append(len(fluency.curve))
    assert max(measured) < len(plain) and sum(measured) <= 3 * len(measured), measured


def test_a_negative_uncalibrated_norm_fraction_starts_the_search_at_its_size(tokenizer):
    model = sharp_model("gpt2", len(tokenizer))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = [
            FeatureScores.fit(
                model, tokenizer, tiny_topk_sae(), reference=varied_prompts(16),
                alignment=ALIGNMENT, embedder=letters, progress=False, calibrate_strength=False,
                norm_fraction=rho,
            )  # fmt: skip
            for rho in (0.5, -0.5)
        ]
    got = [
        calibrate(model, tokenizer, tiny_topk_sae(), scores, prompts=PROMPTS, max_new_tokens=STEPS)
        for scores in fits
    ]
    assert got[1].norm_fraction == got[0].norm_fraction
    assert [p["norm_fraction"] for p in got[1].curve] == [p["norm_fraction"] for p in got[0].curve]
