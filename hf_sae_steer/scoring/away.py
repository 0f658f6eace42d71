"""Steering away, fitted (``docs/method.md`` §9): which latents carry the topic where it is
written, and how hard to suppress them.

The topic's latents are the ``k`` whose mean activation per token is highest on the alignment
set's tokens compared with the reference set's (from the fit's sums). Latents that are merely
*specific* to the topic (a high ratio or log odds of firing: they fire rarely, on a few topic
words) turned out not to lower the topic's share of generated text on the demo's tuning topics;
latents that carry much of the topic's activation mass did (``scripts/explore_away.py``).

The recommended suppression is ``suppress`` on those latents (``z_i -> (1 - s) z_i`` where they
fire, the SAE's error kept). Its strength is calibrated like the toward steering's: continuations
of neutral prompts, unsteered and suppressed at a few strengths with the same seeds, scored by
their perplexity under the unsteered model; the strength is the largest whose paired perplexity
ratio stays under :data:`AWAY_TARGET_RATIO` (a suppression should leave unrelated text alone). The
curve also records how far the continuations of prompts that invite the topic (openings of the
alignment texts) move away from it: the drop of their cosine similarity to the alignment set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hf_sae_steer.generation import Generator, perplexity, sampling_options
from hf_sae_steer.scores.recommendation import AwayCalibration, Recommendation
from hf_sae_steer.scoring.walk.passes import ScoringSums
from hf_sae_steer.steering.steered import SteeredModel

AWAY_K = 10
# Alignment tokens a latent must fire on before it can be a topic latent.
MIN_ALIGNMENT_TOKENS = 3
AWAY_TARGET_RATIO = 1.1
AWAY_GRID = (0.5, 1.0, 2.0, 3.0)
INVITING_WORDS = 4


def topic_latents(sums: ScoringSums, k: int = AWAY_K) -> Tensor:
    """The ``k`` latents with the largest mean activation per alignment token over per reference
    token (at least :data:`MIN_ALIGNMENT_TOKENS` alignment tokens, a positive difference)."""
    align = sums.align_act_sum / max(int(sums.align_tokens), 1)
    ref = sums.act_sum / max(int(sums.ref_tokens), 1)
    key = align - ref
    key[(sums.align_act_tokens < MIN_ALIGNMENT_TOKENS) | (key <= 0)] = -math.inf
    order = torch.argsort(key, descending=True)[:k]
    return order[torch.isfinite(key[order])]


def recommend_away(latents: Tensor) -> Recommendation | None:
    """``suppress`` the topic's latents at strength 1 (zeroed where they fire), until calibrated."""
    if len(latents) == 0:
        return None
    return Recommendation(
        "suppress", 1.0, True, None,
        f"zeroes the topic's {len(latents)} latents where they fire (the SAE's error kept)",
    )  # fmt: skip


def inviting_prompts(alignment: Sequence[str], n: int = 24) -> list[str]:
    """Openings of alignment texts: prompts that invite the topic."""
    seen: dict[str, None] = {}
    for text in alignment:
        words = text.split()
        if len(words) > INVITING_WORDS:
            seen.setdefault(" ".join(words[:INVITING_WORDS]), None)
        if len(seen) == n:
            break
    return list(seen)


def calibrate_away(
    model: nn.Module,
    tokenizer: Any,
    sae: Any,
    scores: Any,
    *,
    neutral: Sequence[str],
    inviting: Sequence[str],
    embed: Any,
    centroid: Tensor,
    target_ratio: float = AWAY_TARGET_RATIO,
    strengths: Sequence[float] = AWAY_GRID,
    max_new_tokens: int = 20,
    seed: int = 0,
) -> AwayCalibration:
    """Measure the recommended suppression at ``strengths`` and choose the largest whose neutral
    perplexity ratio stays under ``target_ratio`` (read between grid points in log ratio)."""
    rec = scores.recommended_away
    options = sampling_options(max_new_tokens=max_new_tokens, do_sample=True)
    neutral_gen = Generator(tokenizer, list(neutral), seed=seed, batch_size=48, options=options)
    inviting_gen = Generator(tokenizer, list(inviting), seed=seed, batch_size=48, options=options)
    base_neutral, _ = neutral_gen.run(model)
    base_inviting, _ = inviting_gen.run(model)
    runs = []
    with SteeredModel(model, sae, scores=scores, direction="away", method=rec.method,
                      strength=1.0) as steered:  # fmt: skip
        for strength in strengths:
            steered.set_strength(strength)
            runs.append((neutral_gen.run(steered)[0], inviting_gen.run(steered)[0]))
    everything = [base_neutral] + [r[0] for r in runs]
    ids = [c.token_ids for part in everything for c in part]
    prompt_ids = [neutral_gen.prompt_ids[c.prompt_index] for part in everything for c in part]
    ppl = perplexity(model, tokenizer, prompt_ids, ids).view(len(everything), -1)

    def similarity(part: list[Any]) -> float:
        texts = [c.text if c.text.strip() else "." for c in part]
        return float((embed(texts) @ centroid).mean())

    base_similarity = similarity(base_inviting)
    curve = []
    for j, (strength, (_, inviting_part)) in enumerate(zip(strengths, runs, strict=True), 1):
        logs = (ppl[j] / ppl[0]).log()
        logs = logs[logs.isfinite()]
        ratio = math.exp(float(logs.mean())) if len(logs) else None
        drop = base_similarity - similarity(inviting_part)
        curve.append({"strength": strength, "neutral_ratio": ratio, "topic_drop": drop})
    return AwayCalibration(
        method=rec.method,
        target_ratio=target_ratio,
        strength=strength_at(curve, target_ratio),
        neutral_prompts=len(neutral),
        inviting_prompts=len(inviting),
        curve=curve,
    )


def strength_at(curve: Sequence[dict[str, Any]], target: float) -> float:
    """The largest strength whose neutral ratio stays at or under ``target``, linear in log
    ratio between the last point under it and the next, from (0, ratio 1)."""
    goal = math.log(target)
    prev_s, prev_log = 0.0, 0.0
    for point in sorted(curve, key=lambda p: p["strength"]):
        ratio = point["neutral_ratio"]
        log = max(math.log(ratio), prev_log) if ratio and 0 < ratio < math.inf else math.inf
        if log > goal:
            if math.isinf(log):
                return prev_s if prev_s > 0 else point["strength"] / 2
            return prev_s + (goal - prev_log) / (log - prev_log) * (point["strength"] - prev_s)
        prev_s, prev_log = point["strength"], log
    return prev_s
