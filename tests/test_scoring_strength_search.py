"""The secant search over the fluency grid: the full grid's answer from fewer points."""

from __future__ import annotations

import math
import random

import pytest
from calibration_reference import GRID, grid_answer

from hf_sae_steer.scoring.calibration import GRID as LIBRARY_GRID
from hf_sae_steer.scoring.calibration import fraction_at
from hf_sae_steer.scoring.strength_search import next_point


def search(curve: dict[float, float | None], target: float, start: float = 0.5):
    """Run the search against a known curve: (the measured points, the answer read off them)."""
    measured: dict[float, float | None] = {}
    while (rho := next_point(measured, GRID, target, start)) is not None:
        assert rho in GRID and rho not in measured
        measured[rho] = curve[rho]
    return measured, fraction_at(as_curve(measured), target)


def as_curve(points: dict[float, float | None]) -> list[dict]:
    return [{"norm_fraction": r, "strength": r, "perplexity_ratio": q} for r, q in points.items()]


def rising_curve(rng: random.Random) -> dict[float, float]:
    """log ratio = c ρ^k with bumps that keep it rising (noise never breaks the order)."""
    c, k = math.exp(rng.uniform(-3, 3)), rng.uniform(0.8, 3.5)
    logs = sorted(max(c * rho**k * math.exp(rng.gauss(0, 0.3)), 0.0) for rho in GRID)
    return {rho: math.exp(log) for rho, log in zip(GRID, logs, strict=True)}


def test_the_grid_is_the_librarys():
    assert tuple(LIBRARY_GRID) == GRID


@pytest.mark.parametrize("start", [0.125, 0.3, 0.5, 1.0, 2.0])
def test_on_rising_curves_the_search_gives_the_full_grids_answer(start):
    rng = random.Random(7)
    counts = []
    for _ in range(400):
        curve, target = rising_curve(rng), math.exp(rng.uniform(0.01, 3))
        measured, got = search(curve, target, start)
        assert got == pytest.approx(grid_answer(curve, target), rel=1e-12, abs=1e-12)
        counts.append(len(measured))
    assert max(counts) <= len(GRID)
    if start == 0.5:  # from the usual start, about half the grid on average over these curves
        assert sum(counts) / len(counts) < 3.2, sum(counts) / len(counts)


def test_it_stops_at_neighbours_around_the_target():
    curve = dict(zip(GRID, (1.02, 1.1, 1.33, 1.88, 2.55, 4.8), strict=True))  # the demo's
    measured, got = search(curve, 1.5)
    assert sorted(measured) == [0.5, 0.75]
    assert got == pytest.approx(grid_answer(curve, 1.5))


def test_the_ends_of_the_grid():
    curve = dict(zip(GRID, (1.5, 2, 3, 4, 5, 6), strict=True))
    measured, got = search(curve, 1.2)  # past the target at the smallest point: from (0, 1)
    assert 0.125 in measured and got == pytest.approx(0.125 * math.log(1.2) / math.log(1.5))
    flat = dict.fromkeys(GRID, 1.01)
    measured, got = search(flat, 1.5)  # never past: the largest point
    assert got == 1.5 and 1.5 in measured


def test_undefined_points_count_as_past_the_target():
    curve = {0.125: 1.1, 0.25: 1.2, 0.5: None, 0.75: None, 1.0: None, 1.5: None}
    measured, got = search(curve, 1.5)
    assert got == grid_answer({0.125: 1.1, 0.25: 1.2, 0.5: math.inf}, 1.5) == 0.25
    assert measured[0.5] is None


def test_a_dip_it_did_not_measure_is_the_only_way_to_differ():
    # 0.25 is a noisy bump over the target; the search, starting at 0.5, never sees it
    curve = dict(zip(GRID, (1.0, 1.6, 1.3, 1.9, 2.5, 4.0), strict=True))
    measured, got = search(curve, 1.5)
    assert 0.25 not in measured and got > 0.5
    assert grid_answer(curve, 1.5) < 0.25
    # measured, the bump counts as the full grid counts it
    seen = {**measured, 0.25: 1.6, 0.125: 1.0}
    assert fraction_at(as_curve(seen), 1.5) == pytest.approx(grid_answer(curve, 1.5))
