"""Steering away, fitted (``docs/method.md`` §9): which latents carry the topic where it is
written, and how hard to suppress them.

The topic's latents are the ``k`` whose mean activation per token is highest on the alignment
set's tokens compared with the reference set's (from the fit's sums). Latents that are merely
*specific* to the topic (a high ratio or log odds of firing: they fire rarely, on a few topic
words) turned out not to lower the topic's share of generated text on the demo's tuning topics;
latents that carry much of the topic's activation mass did (``scripts/explore_away.py``).

``SteeredModel(direction="away", method="suppress")`` attenuates those latents where they fire
(``z_i -> (1 - s) z_i``, the SAE's error kept). The *recommended* suppression is CAA
subtraction, the benchmark's winner on its tuning topics (``docs/benchmark.md``); its strength
is calibrated like the toward steering's: continuations
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

from hf_sae_steer.distributed import World, all_gather_json
from hf_sae_steer.generation import Generator, perplexity, sampling_options
from hf_sae_steer.models import context_length
from hf_sae_steer.scores.recommendation import AwayCalibration, Recommendation
from hf_sae_steer.scoring.walk.passes import ScoringSums
from hf_sae_steer.steering.steered import SteeredModel

AWAY_K = 10
# Alignment tokens a latent must fire on before it can be a topic latent.
MIN_ALIGNMENT_TOKENS = 3
AWAY_TARGET_RATIO = 1.1
AWAY_GRID = (0.25, 0.5, 1.0)
# Prompts of each kind the suppression is measured on (one sample each): a cheap calibration.
AWAY_PROMPTS = 12
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


def recommend_away(latents: Tensor, has_direction: bool = True) -> Recommendation | None:
    """The default suppression: CAA subtraction (``vector`` away, ``x - s v``), which lowered
    the topic's share of text most within a neutral-perplexity budget on the benchmark's tuning
    topics (``docs/benchmark.md``: ahead of directional ablation and of clamping the topic's
    latents); strength 1 (the whole mean difference) until calibrated. Without a mean
    difference, ``suppress`` on the topic's latents."""
    if has_direction:
        return Recommendation(
            "vector", 1.0, True, None, "subtracts the topic's mean difference (CAA subtraction)"
        )
    if len(latents) == 0:
        return None
    return Recommendation(
        "suppress", 1.0, True, None,
        f"zeroes the topic's {len(latents)} latents where they fire (the SAE's error kept)",
    )  # fmt: skip


def inviting_prompts(alignment: Sequence[str], n: int = AWAY_PROMPTS) -> list[str]:
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
    max_new_tokens: int = 16,
    seed: int = 0,
    world: World | None = None,
) -> AwayCalibration:
    """Measure the recommended suppression at ``strengths`` and choose the largest whose neutral
    perplexity ratio stays under ``target_ratio`` (read between grid points in log ratio).

    Neutral and inviting prompts run as one batch per strength (one sample each, the same seeds
    at every strength); under ``torchrun`` the batches are shared out and gathered, so every
    process holds what one process would."""
    world = world or World()
    rec = scores.recommended_away
    prompts = list(neutral) + list(inviting)
    gen = Generator(tokenizer, prompts, seed=seed, batch_size=len(prompts))
    context = context_length(model, tokenizer)
    if context is not None:  # a short context: fewer new tokens, never a truncated prompt
        max_new_tokens = min(max_new_tokens, context - max(map(len, gen.prompt_ids)))
    if max_new_tokens < 4:
        raise ValueError(f"the model's context ({context} tokens) leaves no room to continue")
    gen.options = sampling_options(max_new_tokens=max_new_tokens, do_sample=True)
    jobs = [None, *strengths]  # None: the unsteered model

    def run(strength: float | None) -> list[list[int]]:
        if strength is None:
            part = gen.run(model)[0]
        else:
            with SteeredModel(model, sae, scores=scores, direction="away", method=rec.method,
                              strength=strength) as steered:  # fmt: skip
                part = gen.run(steered)[0]
        return [c.token_ids for c in part]

    mine = {i: run(job) for i, job in enumerate(jobs) if i % world.size == world.rank}
    done: dict[int, list[list[int]]] = {}
    for part in all_gather_json(mine, world):
        done.update({int(i): ids for i, ids in part.items()})
    outputs = [done[i] for i in range(len(jobs))]
    n = len(neutral)
    neutral_ids = [ids[:n] for ids in outputs]
    prompt_ids = gen.prompt_ids[:n] * len(jobs)
    ppl = perplexity(model, tokenizer, prompt_ids, [c for ids in neutral_ids for c in ids])
    ppl = ppl.view(len(jobs), -1)

    def similarity(ids: list[list[int]]) -> float:
        texts = [tokenizer.decode(t, skip_special_tokens=True) or "." for t in ids[n:]]
        return float((embed([t if t.strip() else "." for t in texts]) @ centroid).mean())

    base_similarity = similarity(outputs[0])
    curve = []
    for j, strength in enumerate(strengths, 1):
        logs = (ppl[j] / ppl[0]).log()
        logs = logs[logs.isfinite()]
        ratio = math.exp(float(logs.mean())) if len(logs) else None
        drop = base_similarity - similarity(outputs[j])
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
