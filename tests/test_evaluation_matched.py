"""Matched-fluency comparisons against a plain, loop-by-loop reading of docs/method.md §8."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from hf_sae_steer.evaluation.matched import (
    against_point,
    at_ratio,
    compare,
    curves,
    resample_weights,
)


def plain_at_ratio(gains: list[float], ratios: list[float], target: float) -> float:
    """Walk the curve from (ratio 1, gain 0); interpolate linearly in log ratio at the first
    crossing of the target (a dip below an earlier maximum does not count as a crossing)."""
    xs, ys = [0.0], [0.0]
    best = 0.0
    for g, r in zip(gains, ratios, strict=True):
        best = max(best, math.log(r))
        xs.append(best)
        ys.append(g)
    goal = math.log(target)
    for i in range(1, len(xs)):
        if xs[i] >= goal:
            if xs[i] == xs[i - 1]:
                return ys[i - 1]
            return ys[i - 1] + (goal - xs[i - 1]) / (xs[i] - xs[i - 1]) * (ys[i] - ys[i - 1])
    return math.nan


@pytest.mark.parametrize("seed", range(20))
def test_interpolation_matches_a_plain_walk(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 6)
    gains = [rng.uniform(-0.2, 0.5) for _ in range(n)]
    ratios = sorted(math.exp(rng.uniform(-0.1, 1.2)) for _ in range(n))
    if seed % 3 == 0:  # a noisy, non-monotone curve
        rng.shuffle(ratios)
    for target in (1.1, 1.25, 1.5, 2.0, 3.0):
        want = plain_at_ratio(gains, ratios, target)
        got = at_ratio(np.array([gains]), np.log(np.array([ratios])), target)[0]
        if math.isnan(want):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(want, abs=1e-12)


def records(label: str, points: dict[float, tuple[float, float]], prompts: int = 6) -> list[dict]:
    """Continuations whose paired gains and perplexity ratios are exactly ``points``."""
    out = []
    for p in range(prompts):
        for s in range(2):
            jitter = 0.01 * (1 if (p + s) % 2 else -1)  # prompts differ, the mean is exact
            for rho, (gain, ratio) in points.items():
                out.append({
                    "label": label, "norm_fraction": rho, "strength": None, "prompt_index": p,
                    "sample": s, "relevance_centroid": 0.2 + gain + jitter,
                    "p_topic": 0.1 + gain + jitter, "perplexity": 40.0 * ratio,
                })  # fmt: skip
    return out


def orig_records(prompts: int) -> list[dict]:
    """The unsteered rows: 2 samples per prompt, all alike."""
    return [
        {"label": "orig", "norm_fraction": None, "strength": None, "prompt_index": p,
         "sample": s, "relevance_centroid": 0.2, "p_topic": 0.1, "perplexity": 40.0}
        for p in range(prompts) for s in range(2)
    ]  # fmt: skip


def test_curves_read_paired_differences_and_compare_subtracts_within_resamples():
    base = orig_records(6)
    a = records("a", {0.5: (0.10, 1.2), 1.0: (0.30, 2.0)})
    b = records("b", {0.5: (0.05, 1.2), 1.0: (0.10, 2.0)})
    found = curves(base + a + b)
    assert found["a"].points == [0.5, 1.0]
    assert found["a"].log_ratio == pytest.approx(np.log([[1.2] * 6, [2.0] * 6]))
    rows = compare(found, (1.5,), against="b", n_boot=200)
    row = next(r for r in rows if r["label"] == "a" and r["measure"] == "p_topic")
    frac = (math.log(1.5) - math.log(1.2)) / (math.log(2.0) - math.log(1.2))
    want_a = 0.10 + frac * 0.20
    want_b = 0.05 + frac * 0.05
    assert row["gain"] == pytest.approx(want_a, abs=1e-9)
    assert row["diff"] == pytest.approx(want_a - want_b, abs=1e-9)
    assert row["diff_lo"] > 0  # identical ratios, a larger gain on every prompt: paired, it shows


def test_a_curve_that_never_gets_that_disfluent_has_no_value_there():
    base = orig_records(4)
    weak = records("weak", {1.0: (0.2, 1.1)}, prompts=4)
    rows = compare(curves(base + weak), (1.5,), n_boot=50)
    assert all(math.isnan(r["gain"]) for r in rows)


def test_resample_weights_sum_to_one_and_row_zero_is_the_sample():
    w = resample_weights(5, 30, seed=1)
    assert w.shape == (31, 5)
    assert np.allclose(w.sum(axis=1), 1.0)
    assert np.allclose(w[0], 0.2)


def test_against_point_reads_each_curve_at_that_points_ratio():
    base = orig_records(6)
    old = records("old", {0.5: (0.08, 1.3), 1.0: (0.2, 2.5)})
    new = records("new", {0.5: (0.10, 1.2), 1.0: (0.30, 2.0)})
    rows = against_point(curves(base + old + new), "old", 0.5, n_boot=100)
    row = next(r for r in rows if r["label"] == "new" and r["measure"] == "p_topic")
    want = plain_at_ratio([0.10, 0.30], [1.2, 2.0], 1.3)
    assert row["ratio"] == pytest.approx(1.3)
    assert row["gain"] == pytest.approx(want, abs=1e-9)
    assert row["ref_gain"] == pytest.approx(0.08, abs=1e-9)
    assert row["diff"] == pytest.approx(want - 0.08, abs=1e-9)
    assert {r["label"] for r in rows} == {"new"}
    with pytest.raises(ValueError, match="no point 0.75"):
        against_point(curves(base + old), "old", 0.75)


def test_an_empty_continuation_does_not_void_the_curve():
    base = [{"label": "orig", "norm_fraction": None, "strength": None, "prompt_index": p,
             "sample": 0, "relevance_centroid": 0.2, "p_topic": 0.1, "perplexity": 40.0}
            for p in range(4)]  # fmt: skip
    a = [{"label": "a", "norm_fraction": 1.0, "strength": 2.0, "prompt_index": p, "sample": 0,
          "relevance_centroid": 0.3, "p_topic": 0.2, "perplexity": 80.0 if p else math.nan}
         for p in range(4)]  # fmt: skip
    found = curves(base + a)["a"]
    # prompt 0 has no perplexity: it takes the other prompts' log ratio, its gains stay its own
    assert found.log_ratio == pytest.approx(np.log([[2.0] * 4]))
    assert found.gains["p_topic"] == pytest.approx(np.full((1, 4), 0.1))
