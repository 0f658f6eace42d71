"""Strength per topic (docs/method.md §6): the fluency curve and the calibrated strength."""

from __future__ import annotations

import math
import warnings

import pytest
from tiny_models import letters, tiny_gpt2, tiny_topk_sae, varied_prompts

from hf_sae_steer import FeatureScores, SteeredModel
from hf_sae_steer.scoring.calibration import fraction_at

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
    points = {p["norm_fraction"]: p["strength"] for p in fluency["curve"]}
    # strength is linear in the norm fraction
    assert rec["strength"] / rec["norm_fraction"] == pytest.approx(points[1.0], rel=1e-6)


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
