"""Comparing steerings at matched fluency (``docs/method.md`` §8).

A stronger steering moves the text further towards a topic and makes it less fluent, so two
steerings compared at one strength compare two different trade-offs. Here every curve (a
condition's points, weakest first) is read at a *target perplexity ratio* ``T``: its gain is
interpolated linearly against ``log`` of the perplexity ratio, from the unsteered model (ratio
1, gain 0) through its points. A curve that never reaches ``T`` has no value there (NaN):
nothing is extrapolated.

Intervals are paired percentile bootstraps over prompts: one resample of the prompts is applied
to every curve at once, so a difference between two curves at ``T`` is computed within each
resample (the usual paired comparison, with the interpolation inside it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

GAINS = ("relevance_centroid", "p_topic")
TARGETS = (1.25, 1.5, 2.0)


@dataclass
class Curve:
    """One condition's points, per prompt: ``gains[name]`` and ``log_ratio`` are ``[points,
    prompts]`` means over samples of the paired differences with the unsteered model."""

    label: str
    points: list[float]
    gains: dict[str, np.ndarray]
    log_ratio: np.ndarray


def curves(
    records: Sequence[dict[str, Any]], labels: Sequence[str] | None = None
) -> dict[str, Curve]:
    """The paired per-prompt curves of every condition in ``records`` (an evaluation's samples),
    ordered by point (norm fraction, strength or epochs)."""
    base = {(r["prompt_index"], r["sample"]): r for r in records if r["label"] == "orig"}
    if not base:
        raise ValueError("Matched comparisons need the unsteered condition ('orig').")
    prompts = sorted({p for p, _ in base})
    column = {p: i for i, p in enumerate(prompts)}
    grouped: dict[str, dict[float, list[dict[str, Any]]]] = {}
    for r in records:
        if r["label"] == "orig" or (labels is not None and r["label"] not in labels):
            continue
        x = r["norm_fraction"] if r["norm_fraction"] is not None else r["strength"]
        by_point = grouped.setdefault(r["label"], {})
        by_point.setdefault(float(x if x is not None else 1.0), []).append(r)
    out = {}
    for label, by_point in grouped.items():
        xs = sorted(by_point)
        names = (*GAINS, "log_ratio")
        sums = {name: np.zeros((len(xs), len(prompts))) for name in names}
        counts = {name: np.zeros((len(xs), len(prompts))) for name in names}
        for j, x in enumerate(xs):
            for r in by_point[x]:
                b = base[(r["prompt_index"], r["sample"])]
                i = column[r["prompt_index"]]
                values = {name: r[name] - b[name] for name in GAINS}
                values["log_ratio"] = math.log(r["perplexity"] / b["perplexity"])
                for name, v in values.items():
                    if math.isfinite(v):  # an empty continuation has no perplexity
                        sums[name][j, i] += v
                        counts[name][j, i] += 1
        means = {name: _filled(sums[name], counts[name]) for name in names}
        out[label] = Curve(label, xs, {n: means[n] for n in GAINS}, means["log_ratio"])
    return out


def _filled(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Means over samples; a prompt with no defined value at a point (every continuation empty)
    takes the mean of the other prompts there, so one empty text cannot void a whole curve."""
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    missing = counts == 0
    if missing.any():
        fill = np.nanmean(np.where(missing, np.nan, means), axis=1, keepdims=True)
        means = np.where(missing, np.nan_to_num(fill, nan=0.0), means)
    return means


def at_ratio(gain: np.ndarray, log_ratio: np.ndarray, target: float | np.ndarray) -> np.ndarray:
    """Interpolate ``gain`` [..., points] at perplexity ratio ``target`` (a number, or one per
    row of ``gain``'s leading shape) along ``log_ratio``, starting from (0, 0); NaN where the
    curve stays below the target."""
    shape = gain.shape[:-1]
    g = np.concatenate([np.zeros((*shape, 1)), gain], axis=-1)
    lr = np.concatenate([np.zeros((*shape, 1)), log_ratio], axis=-1)
    lr = np.maximum.accumulate(lr, axis=-1)  # the first crossing of a noisy curve counts
    goal = np.broadcast_to(np.log(np.asarray(target, dtype=float)), shape)
    above = lr >= goal[..., None]
    first = np.where(above.any(axis=-1), above.argmax(axis=-1), -1)
    out = np.full(shape, np.nan)
    hit = first > 0
    idx = np.where(hit, first, 1)
    lo_l = np.take_along_axis(lr, (idx - 1)[..., None], -1)[..., 0]
    hi_l = np.take_along_axis(lr, idx[..., None], -1)[..., 0]
    lo_g = np.take_along_axis(g, (idx - 1)[..., None], -1)[..., 0]
    hi_g = np.take_along_axis(g, idx[..., None], -1)[..., 0]
    span = np.where(hi_l > lo_l, hi_l - lo_l, 1.0)
    value = lo_g + (goal - lo_l) / span * (hi_g - lo_g)
    out[hit] = value[hit]
    return out


def resample_weights(n_prompts: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot + 1, prompts]`` weights: row 0 is the full sample, the others resamples."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_prompts, size=(n_boot, n_prompts))
    counts = np.zeros((n_boot, n_prompts))
    np.add.at(counts, (np.arange(n_boot)[:, None], picks), 1.0)
    return np.vstack([np.ones(n_prompts), counts]) / n_prompts


def matched_gains(
    curve: Curve, target: float, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Each gain of ``curve`` at ``target``, for every row of ``weights`` ([boots + 1])."""
    log_ratio = weights @ curve.log_ratio.T
    return {name: at_ratio(weights @ g.T, log_ratio, target) for name, g in curve.gains.items()}


def summary(values: np.ndarray) -> tuple[float, float, float]:
    """(estimate, 2.5%, 97.5%) of row 0 and the resampled rows; NaN when undefined in more than
    one resample in forty (the curve barely reaches the target)."""
    boots = values[1:]
    if math.isnan(values[0]) or np.isnan(boots).mean() > 0.025:
        return (float(values[0]), math.nan, math.nan)
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return (float(values[0]), float(lo), float(hi))


def compare(
    all_curves: dict[str, Curve],
    targets: Sequence[float] = TARGETS,
    *,
    against: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (condition, target, gain): the matched gain with its interval and, when
    ``against`` names a condition, the paired difference to it with its interval."""
    n_prompts = next(iter(all_curves.values())).log_ratio.shape[1]
    weights = resample_weights(n_prompts, n_boot, seed)
    cache = {
        (label, t): matched_gains(c, t, weights) for label, c in all_curves.items() for t in targets
    }
    rows = []
    for (label, t), gains in cache.items():
        for name, values in gains.items():
            row: dict[str, Any] = {"label": label, "target": t, "measure": name}
            row["gain"], row["gain_lo"], row["gain_hi"] = summary(values)
            if against is not None and against in all_curves and against != label:
                diff = values - cache[(against, t)][name]
                row["diff"], row["diff_lo"], row["diff_hi"] = summary(diff)
            rows.append(row)
    return rows


def against_point(
    all_curves: dict[str, Curve], label: str, point: float, *, n_boot: int = 1000, seed: int = 0
) -> list[dict[str, Any]]:
    """Every other curve read at the perplexity ratio of one point (``label`` at ``point``, e.g.
    an earlier release's default), per gain: that point's gain, the curve's gain at its ratio,
    and their paired difference, each with its interval (the ratio is resampled with them)."""
    ref = all_curves[label]
    if point not in ref.points:
        raise ValueError(f"{label!r} has no point {point} (it has {ref.points}).")
    j = ref.points.index(point)
    weights = resample_weights(ref.log_ratio.shape[1], n_boot, seed)
    ratio = np.exp(weights @ ref.log_ratio[j])
    rows = []
    for other, c in all_curves.items():
        if other == label:
            continue
        log_ratio = weights @ c.log_ratio.T
        for name, g in c.gains.items():
            mine = at_ratio(weights @ g.T, log_ratio, ratio)
            theirs = weights @ ref.gains[name][j]
            row: dict[str, Any] = {"label": other, "measure": name, "reference": label,
                                   "point": point, "ratio": float(ratio[0])}  # fmt: skip
            row["gain"], row["gain_lo"], row["gain_hi"] = summary(mine)
            row["ref_gain"], row["ref_gain_lo"], row["ref_gain_hi"] = summary(theirs)
            row["diff"], row["diff_lo"], row["diff_hi"] = summary(mine - theirs)
            rows.append(row)
    return rows
