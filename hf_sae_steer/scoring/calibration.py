"""A strength per topic, set by its measured fluency cost (``docs/method.md`` §6).

One norm fraction does not suit every topic: the same ``ρ`` barely moves one topic's text and
wrecks another's. So a fit measures what its recommended steering costs: continuations of
neutral prompts, unsteered and steered at several norm fractions with the same random numbers,
scored by their perplexity under the unsteered model (:class:`~hf_sae_steer.scoring.fluency.
FluencyProbe`). The recommended strength is the largest whose paired (geometric-mean)
perplexity ratio stays at or under a target, read off the measured points on the log-ratio
scale (:func:`fraction_at`). Rather than the whole grid :data:`GRID`, :func:`calibrate`
measures the few grid points a secant search asks for (:mod:`~hf_sae_steer.scoring.
strength_search`): those around the crossing, which are all the grid's answer reads. The
measured points are the curve recorded in the artifact. Under ``torchrun`` the processes share
the work and agree on it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hf_sae_steer._moved import moved_names
from hf_sae_steer.distributed import World
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scores.recommendation import FluencyCalibration
from hf_sae_steer.scoring.fluency import MIN_NEW_TOKENS as MIN_NEW_TOKENS
from hf_sae_steer.scoring.fluency import FluencyPoint, FluencyProbe
from hf_sae_steer.scoring.strength_search import next_point
from hf_sae_steer.steering.live import live_steerings

# What the library calibrates against: generic sentence openings about nothing in particular
# (the demo's tuning prompts; the benchmark reports on other prompts).
CALIBRATION_PROMPTS = (
    "The garden", "A wooden chair is", "On Sunday we", "The old map", "A bright star",
    "The teacher asked", "Our neighbour", "A quiet village", "The bridge was", "He looked at the",
    "A glass of", "The letter said", "In the forest", "The train left", "A new book is",
    "The mountain", "She laughed and", "The market", "A cold wind", "The game began",
    "The hat", "Two brothers", "The lamp was", "A white horse",
)  # fmt: skip
# Chosen on the benchmark's tuning topics (scripts/run_topic_benchmark.py, docs/benchmark.md).
TARGET_RATIO = 1.5
GRID = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5)  # the full curve; the search stays inside its range


def fluency_curve(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE | None,
    scores: Any,
    *,
    method: str,
    preserve_error: bool,
    mean_norm: float,
    prompts: Sequence[str] = CALIBRATION_PROMPTS,
    norm_fractions: Sequence[float] = GRID,
    samples: int = 2,
    max_new_tokens: int = 24,
    seed: int = 0,
    batch_size: int = 96,
    world: World | None = None,
) -> list[dict[str, float]]:
    """``[{norm_fraction, strength, perplexity_ratio, continuations}]``: the paired
    geometric-mean perplexity ratio of ``method`` (an additive method of ``scores``) to the
    unsteered model at every one of ``norm_fractions`` (the full grid, all samples)."""
    with FluencyProbe(
        model, tokenizer, sae, scores, method=method, preserve_error=preserve_error,
        mean_norm=mean_norm, prompts=prompts, max_new_tokens=max_new_tokens, seed=seed,
        batch_size=batch_size, world=world,
    ) as probe:  # fmt: skip
        points = probe.measure([(rho, samples) for rho in norm_fractions])
    return [point.to_json() for point in points]


def fraction_at(curve: Sequence[dict[str, float]], target: float) -> float:
    """The largest norm fraction whose perplexity ratio stays at or under ``target``: linear in
    ``log`` ratio between the last grid point under it and the next, from (0, ratio 1); the
    largest grid point when the whole curve stays under."""
    if not target > 1:
        raise ValueError(f"The target perplexity ratio must be above 1, got {target}.")
    goal = math.log(target)
    prev_rho, prev_log = 0.0, 0.0
    for point in sorted(curve, key=lambda p: p["norm_fraction"]):
        rho, ratio = point["norm_fraction"], point["perplexity_ratio"]
        defined = ratio is not None and 0 < ratio < math.inf
        log = max(math.log(ratio), prev_log) if defined else math.inf
        if log > goal:
            if math.isinf(log):
                return prev_rho if prev_rho > 0 else rho / 2
            return prev_rho + (goal - prev_log) / (log - prev_log) * (rho - prev_rho)
        prev_rho, prev_log = rho, log
    return prev_rho


@dataclass
class CalibrationRun:
    """A calibration and what it cost this process: its wall-clock ``seconds`` and the LM
    ``tokens`` it passed (generated and scored)."""

    fluency: FluencyCalibration
    seconds: float
    tokens: int


def calibrate(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE | None,
    scores: Any,
    *,
    target_ratio: float = TARGET_RATIO,
    prompts: Sequence[str] = CALIBRATION_PROMPTS,
    seed: int = 0,
    **options: Any,
) -> FluencyCalibration:
    """Measure the fluency curve of ``scores``' recommended (additive) steering and return the
    ``fluency`` entry of its calibration: the measured points, the target and the chosen point.
    ``options`` go to :func:`run_calibration` (``search=False``: the full grid)."""
    return run_calibration(
        model, tokenizer, sae, scores, target_ratio=target_ratio, prompts=prompts, seed=seed,
        **options,
    ).fluency  # fmt: skip


def run_calibration(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE | None,
    scores: Any,
    *,
    target_ratio: float = TARGET_RATIO,
    prompts: Sequence[str] = CALIBRATION_PROMPTS,
    seed: int = 0,
    samples: int = 2,
    max_new_tokens: int = 24,
    batch_size: int = 96,
    search: bool = True,
    world: World | None = None,
) -> CalibrationRun:
    """:func:`calibrate`, with its cost. ``search=True`` measures the grid points a secant search
    asks for (:mod:`~hf_sae_steer.scoring.strength_search`), ``False`` the whole :data:`GRID`;
    either way with ``samples`` continuations per prompt of ``max_new_tokens`` tokens, seeded
    per prompt and sample by ``seed`` (top-k 50, temperature 1). ``world``: the processes that
    share the work (default: this one alone; the result is the same)."""
    started = time.perf_counter()
    if not target_ratio > 1:  # before any generation
        raise ValueError(f"The target perplexity ratio must be above 1, got {target_ratio}.")
    rec = scores.recommended
    if rec is None or rec.norm_fraction is None:
        raise ValueError("Only an artifact whose recommended steering is additive is calibrated.")
    if live_steerings(model):  # one steering at a time: measuring needs the model to ourselves
        raise ValueError("the model is steered now; remove its SteeredModel to calibrate")
    key = "mean_norm_raw" if rec.method == "vector" else "mean_norm"
    mean_norm = float(getattr(scores.calibration, key))
    with torch.inference_mode(), FluencyProbe(
        model, tokenizer, sae, scores, method=rec.method,
        preserve_error=bool(rec.preserve_error), mean_norm=mean_norm, prompts=prompts,
        max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, world=world,
    ) as probe:  # fmt: skip
        if search:
            points = _search(probe, target_ratio, abs(rec.norm_fraction), samples)
        else:
            points = probe.measure([(rho, samples) for rho in GRID])
        tokens = probe.tokens
    curve = [p.to_json() for p in sorted(points, key=lambda p: p.norm_fraction)]
    rho = fraction_at(curve, target_ratio)
    fluency = FluencyCalibration(
        method=rec.method,
        target_ratio=target_ratio,
        norm_fraction=rho,
        strength=rec.strength * rho / rec.norm_fraction,  # strength is linear in ρ
        prompts=len(prompts),
        curve=curve,
        search="secant" if search else "grid",
        samples=samples,
    )
    return CalibrationRun(fluency, time.perf_counter() - started, tokens)


def _search(probe: FluencyProbe, target: float, start: float, samples: int) -> list[FluencyPoint]:
    """Measure the grid points :func:`~hf_sae_steer.scoring.strength_search.next_point` asks
    for, one a round, from the one nearest ``start`` (the norm fraction recommended before
    calibration)."""
    points: dict[float, FluencyPoint] = {}
    while True:
        rho = next_point({r: p.ratio for r, p in points.items()}, GRID, target, start)
        if rho is None:
            return list(points.values())
        (points[rho],) = probe.measure([(rho, samples)])


# 0.3's hf_sae_steer.scoring.calibration held the strength arithmetic, kept for one release.
__getattr__ = moved_names(
    __name__,
    {
        name: "hf_sae_steer.steering.strength"
        for name in ("NORM_FRACTION", "REFERENCE_CLAMP_VALUE", "added_vector", "clamp_values",
                     "check_norm_fraction", "strength_for")
    }
    | {name: "hf_sae_steer.steering.names"
       for name in ("MAX_STRENGTH", "MAX_NORM_FRACTION", "ADDITIVE")},
)  # fmt: skip
