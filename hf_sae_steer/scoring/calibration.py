"""A strength per topic, set by its measured fluency cost (``docs/method.md`` §6).

One norm fraction does not suit every topic: the same ``ρ`` barely moves one topic's text and
wrecks another's. So a fit measures what its recommended steering costs: continuations of
neutral prompts, unsteered and steered at a grid of norm fractions with the same sampling
seeds, scored by their perplexity under the unsteered model. The recommended strength is the
largest whose paired (geometric-mean) perplexity ratio stays at or under a target, read off
that curve between grid points on the log-ratio scale. The curve is recorded in the artifact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hf_sae_steer._moved import moved_names
from hf_sae_steer.generation import Generator, perplexity, sampling_options
from hf_sae_steer.models import context_length
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scores.recommendation import FluencyCalibration
from hf_sae_steer.steering.live import live_steerings
from hf_sae_steer.steering.steered import SteeredModel
from hf_sae_steer.steering.strength import strength_for

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
GRID = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5)
MIN_NEW_TOKENS = 4


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
    batch_size: int = 48,
) -> list[dict[str, float]]:
    """``[{norm_fraction, strength, perplexity_ratio}]``: the paired geometric-mean perplexity
    ratio of ``method`` (an additive method of ``scores``) to the unsteered model, per point."""

    gen = Generator(tokenizer, list(prompts), samples=samples, seed=seed, batch_size=batch_size)
    context = context_length(model, tokenizer)
    if context is not None:  # a short context: fewer new tokens, never a truncated prompt
        max_new_tokens = min(max_new_tokens, context - max(map(len, gen.prompt_ids)))
    if max_new_tokens < MIN_NEW_TOKENS:
        raise ValueError(
            f"the model's context ({context} tokens) leaves no room to continue the calibration "
            "prompts"
        )
    gen.options = sampling_options(max_new_tokens=max_new_tokens, do_sample=True)
    base, _ = gen.run(model)
    runs = []
    with SteeredModel(model, sae, method=method, scores=scores, strength=1.0,
                      preserve_error=preserve_error) as steered:  # fmt: skip
        added = steered.interventions[0].added
        if added is None:
            raise ValueError(f"Only additive methods have a fluency curve, not {method!r}.")
        for rho in norm_fractions:
            strength = strength_for(rho, added.double().cpu(), mean_norm)
            steered.set_strength(strength)
            runs.append((rho, strength, gen.run(steered)[0]))
    everything = [base] + [r[2] for r in runs]
    prompt_ids = [gen.prompt_ids[c.prompt_index] for part in everything for c in part]
    ids = [c.token_ids for part in everything for c in part]
    ppl = perplexity(model, tokenizer, prompt_ids, ids, batch_size=batch_size).view(
        len(everything), -1
    )
    curve = []
    for j, (rho, strength, _) in enumerate(runs, start=1):
        logs = (ppl[j] / ppl[0]).log()
        logs = logs[logs.isfinite()]  # an empty continuation has no perplexity
        ratio = math.exp(float(logs.mean())) if len(logs) else None  # no continuation at all
        curve.append({"norm_fraction": rho, "strength": strength, "perplexity_ratio": ratio})
    return curve


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


def calibrate(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE | None,
    scores: Any,
    *,
    target_ratio: float = TARGET_RATIO,
    prompts: Sequence[str] = CALIBRATION_PROMPTS,
    seed: int = 0,
    **curve_options: Any,
) -> FluencyCalibration:
    """Measure the fluency curve of ``scores``' recommended (additive) steering and return the
    ``fluency`` entry of its calibration: the curve, the target and the chosen point."""
    rec = scores.recommended
    if rec is None or rec.norm_fraction is None:
        raise ValueError("Only an artifact whose recommended steering is additive is calibrated.")
    if live_steerings(model):  # one steering at a time: measuring needs the model to ourselves
        raise ValueError("the model is steered now; remove its SteeredModel to calibrate")
    key = "mean_norm_raw" if rec.method == "vector" else "mean_norm"
    mean_norm = float(getattr(scores.calibration, key))
    with torch.inference_mode():
        curve = fluency_curve(
            model, tokenizer, sae, scores, method=rec.method,
            preserve_error=bool(rec.preserve_error), mean_norm=mean_norm,
            prompts=prompts, seed=seed, **curve_options,
        )  # fmt: skip
    rho = fraction_at(curve, target_ratio)
    strength = rec.strength * rho / rec.norm_fraction  # strength is linear in ρ
    return FluencyCalibration(
        method=rec.method,
        target_ratio=target_ratio,
        norm_fraction=rho,
        strength=strength,
        prompts=len(prompts),
        curve=curve,
    )


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
