"""Which point of the fluency grid to measure next: a secant search over the grid's norm
fractions, stopped as soon as the target is bracketed (``docs/method.md`` §6).

The full grid's answer (:func:`~hf_sae_steer.scoring.calibration.fraction_at`) is read off two
neighbouring grid points: the last one under the target and the first one past it (from
``(0, ratio 1)`` when the first is already past, the largest when none is). Those two are all
the answer needs, so the search measures grid points only, and stops once it holds such a
neighbouring pair, or the smallest point past the target, or the largest under it. On a curve
that rises with the strength, it therefore gives the full grid's answer exactly; on a noisy
one it can differ only where an unmeasured point would have broken the rise.

The next point is where the curve should cross the target: the log ratio of an additive
steering grows about as a power of ``ρ`` (near ``ρ²`` at first), so the power law through the
two measured points around the crossing (from one point: the square law) is solved for the
target, and the unmeasured grid point nearest to that guess (on the log scale) inside the
bracket is taken. Starting from the strength recommended before calibration, which is usually
near the answer, two or three points settle most topics instead of six.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

FLAT = 0.1  # a log ratio under 10% of the goal is noise: no slope can be read from it
MAX_POWER = 4.0


def next_point(
    measured: Mapping[float, float | None],
    grid: Sequence[float],
    target: float,
    start: float,
) -> float | None:
    """The grid point to measure next given the ``{norm_fraction: perplexity_ratio}`` measured
    so far (ratio ``None``: undefined, counted as past any target), or ``None`` when the answer
    is settled. The first point is the grid point nearest ``start``."""
    points = sorted(grid)
    if not measured:
        return min(points, key=lambda rho: abs(math.log(rho / start)))
    goal = math.log(target)
    known: list[tuple[int, float]] = []  # (grid index, running-maximum log ratio), ascending
    top = 0.0
    for i, rho in enumerate(points):
        if rho in measured:
            ratio = measured[rho]
            log = math.log(ratio) if ratio is not None and 0 < ratio < math.inf else math.inf
            top = max(top, log)
            known.append((i, top))
    past = next((k for k, (_, log) in enumerate(known) if log > goal), None)
    if past is None:  # under the target everywhere measured: look above
        lo, lo_log = known[-1]
        hi = len(points)
        guess = _guess_above(points, known, goal)
    else:
        hi, hi_log = known[past]
        lo, lo_log = known[past - 1] if past > 0 else (-1, 0.0)
        guess = _guess_between(points, lo, lo_log, hi, hi_log, goal)
    candidates = range(lo + 1, hi)
    if not candidates:  # neighbours, or past at the smallest point, or under at the largest
        return None
    best = min(candidates, key=lambda i: abs(math.log(points[i] / guess)))
    return points[best]


def _guess_between(
    points: Sequence[float], lo: int, lo_log: float, hi: int, hi_log: float, goal: float
) -> float:
    """Where the curve between grid points ``lo`` (under; -1: the origin) and ``hi`` (past)
    should meet the goal."""
    rho_hi = points[hi]
    if not math.isfinite(hi_log):  # undefined above: the middle, on the log scale
        return math.sqrt(points[lo] * rho_hi) if lo >= 0 else rho_hi / 2
    if lo < 0 or lo_log <= FLAT * goal:  # no slope below: the square law from above
        return rho_hi * math.sqrt(goal / hi_log)
    power = math.log(hi_log / lo_log) / math.log(rho_hi / points[lo])
    return points[lo] * (goal / lo_log) ** (1 / min(max(power, 1.0), MAX_POWER))


def _guess_above(points: Sequence[float], known: list[tuple[int, float]], goal: float) -> float:
    """Where the curve above the largest measured point (under the goal) should meet it."""
    last, log = known[-1]
    rho = points[last]
    if log <= FLAT * goal:  # flat so far: any point above is as good a guess
        return rho * 2
    power = 2.0
    if len(known) > 1:
        prev, prev_log = known[-2]
        if prev_log > FLAT * goal and log > prev_log:
            power = math.log(log / prev_log) / math.log(rho / points[prev])
    return rho * (goal / log) ** (1 / min(max(power, 1.0), MAX_POWER))
