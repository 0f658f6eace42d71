"""Steering away, fitted (``docs/method.md`` §9): which latents carry the topic where it is
written, and how hard to suppress them.

The topic's latents are the ``k`` whose mean activation per token is highest on the alignment
set's tokens compared with the reference set's (from the fit's sums). Latents that are merely
*specific* to the topic (a high ratio or log odds of firing: they fire rarely, on a few topic
words) turned out not to lower the topic's share of generated text on the demo's tuning topics;
latents that carry much of the topic's activation mass did (``scripts/explore_away.py``).

``SteeredModel(direction="away", method="suppress")`` attenuates those latents where they fire
(``z_i -> (1 - s) z_i``, the SAE's error kept); ``method="attenuate"``, the *recommended*
suppression (the benchmark's choice on its tuning topics, ``docs/benchmark.md``), subtracts the
topic's mean difference in proportion to the SAE's posterior that a token is on the topic, from
which of the topic's most specific latents fire (:func:`topic_gate`).

Its strength is calibrated teacher-forced, so no sampling noise moves it: the largest whose
perplexity ratio on unsteered continuations of neutral prompts (:data:`FORCED_SAMPLES` each)
stays under :data:`AWAY_TARGET_RATIO` (a suppression should leave unrelated text alone). The
curve also records the effect: the perplexity ratio of the topic's own words after prompts that
invite it (openings of the alignment texts). Sampled readings (the suppressed model's own
continuations, their perplexity and their similarity to the topic) were dropped: over six seeds
they moved the demo's chosen strength from 0.22 to 1 where the teacher-forced reading stayed
within 1.82-2.32, and they were most of a fit's calibration time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hf_sae_steer.distributed import World, shared_map
from hf_sae_steer.generation import Generator, perplexity, sampling_options
from hf_sae_steer.models import context_length
from hf_sae_steer.scores.recommendation import AwayCalibration, Recommendation
from hf_sae_steer.scoring.walk.passes import ScoringSums
from hf_sae_steer.steering.steered import SteeredModel

AWAY_K = 10
# Latents whose firing gates ``attenuate`` (the topic's most specific ones).
GATE_K = 100
# Alignment tokens a latent must fire on before it can be a topic latent.
MIN_ALIGNMENT_TOKENS = 3
AWAY_TARGET_RATIO = 1.1
AWAY_GRID = (0.5, 1.0, 2.0, 3.0)
# attenuate subtracts the mean difference times a posterior that is well under 1 on most tokens
AWAY_GRIDS = {"attenuate": (1.0, 2.0, 4.0, 8.0)}
# Unsteered continuations per neutral prompt that the suppressed model reads (teacher-forced).
FORCED_SAMPLES = 4
# Neutral prompts, and alignment texts read as topic passages, the suppression is measured on.
AWAY_PROMPTS = 12
INVITING_WORDS = 4
# Tokens of the topic's own words read after each inviting prompt.
TOPIC_TOKENS = 32


def topic_latents(sums: ScoringSums, k: int = AWAY_K) -> Tensor:
    """The ``k`` latents with the largest mean activation per alignment token over per reference
    token (at least :data:`MIN_ALIGNMENT_TOKENS` alignment tokens, a positive difference)."""
    align = sums.align_act_sum / max(int(sums.align_tokens), 1)
    ref = sums.act_sum / max(int(sums.ref_tokens), 1)
    key = align - ref
    key[(sums.align_act_tokens < MIN_ALIGNMENT_TOKENS) | (key <= 0)] = -math.inf
    order = torch.argsort(key, descending=True)[:k]
    return order[torch.isfinite(key[order])]


def topic_gate(sums: ScoringSums, k: int = GATE_K) -> tuple[Tensor, Tensor, float] | None:
    """``(latents, log_odds, bias)`` of the posterior that gates ``attenuate``: naive Bayes over
    whether each of the ``k`` latents with the largest log odds of firing on an alignment token
    rather than a reference token fires (firing frequencies smoothed by half a token; at least
    :data:`MIN_ALIGNMENT_TOKENS` alignment tokens; a prior of even odds). ``None`` when no latent
    fires more often on the alignment set."""
    on_topic = (sums.align_act_tokens.double() + 0.5) / (int(sums.align_tokens) + 1)
    off_topic = (sums.act_tokens.double() + 0.5) / (int(sums.ref_tokens) + 1)
    odds = torch.logit(on_topic) - torch.logit(off_topic)
    odds[(sums.align_act_tokens < MIN_ALIGNMENT_TOKENS) | (odds <= 0)] = -math.inf
    order = torch.argsort(odds, descending=True)[:k]
    order = order[torch.isfinite(odds[order])]
    if not len(order):
        return None
    silent = ((1 - on_topic[order]) / (1 - off_topic[order])).log()  # a latent that stays off
    return order, odds[order].float(), float(silent.sum())


def recommend_away(
    latents: Tensor, has_direction: bool = True, gated: bool = False
) -> Recommendation | None:
    """The default suppression: ``attenuate`` (``x - s p(topic | x) v``), which lowered the
    topic's share of text most within a neutral-perplexity budget on the benchmark's tuning
    topics (``docs/benchmark.md``: by a hair ahead of CAA subtraction, then directional ablation
    and the topic's latents suppressed); strength 1 until calibrated. Without the posterior's
    latents, CAA subtraction (``vector`` away, ``x - s v``); without a mean difference either,
    ``suppress`` on the topic's latents."""
    if has_direction and gated:
        return Recommendation(
            "attenuate", 1.0, True, None,
            "subtracts the topic's mean difference where the SAE sees the topic (attenuate)",
        )  # fmt: skip
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


def topic_passages(alignment: Sequence[str], tokenizer: Any, n: int = AWAY_PROMPTS
                   ) -> tuple[list[str], list[list[int]]]:  # fmt: skip
    """Up to ``n`` alignment texts split into a prompt that invites the topic (their first
    :data:`INVITING_WORDS` words) and the topic's own words after it (up to
    :data:`TOPIC_TOKENS` tokens)."""
    prompts: list[str] = []
    rests: list[list[int]] = []
    for text in alignment:
        words = text.split()
        opening = " ".join(words[:INVITING_WORDS])
        if len(words) <= INVITING_WORDS or opening in prompts:
            continue
        rest = " " + " ".join(words[INVITING_WORDS:])
        ids = list(tokenizer(rest, add_special_tokens=False)["input_ids"])[:TOPIC_TOKENS]
        if ids:
            prompts.append(opening)
            rests.append(ids)
        if len(prompts) == n:
            break
    return prompts, rests


def calibrate_away(
    model: nn.Module,
    tokenizer: Any,
    sae: Any,
    scores: Any,
    *,
    neutral: Sequence[str],
    alignment: Sequence[str],
    target_ratio: float = AWAY_TARGET_RATIO,
    strengths: Sequence[float] | None = None,
    max_new_tokens: int = 16,
    seed: int = 0,
    world: World | None = None,
) -> AwayCalibration:
    """Measure the recommended suppression at ``strengths`` (default: :data:`AWAY_GRIDS` for its
    method, else :data:`AWAY_GRID`) and choose the largest whose teacher-forced neutral
    perplexity ratio stays under ``target_ratio`` (read between grid points in log ratio).

    Everything is read teacher-forced, so nothing is sampled but the unsteered continuations of
    the neutral prompts: at each strength the suppressed model reads those (the side effect) and
    the topic's own words after prompts that invite it (:func:`topic_passages`: the effect, as
    the ratio of their perplexity to the unsteered model's). Under ``torchrun`` the readings are
    shared out and gathered, so every process holds what one process would."""
    world = world or World()
    rec = scores.recommended_away
    if strengths is None:
        strengths = AWAY_GRIDS.get(rec.method, AWAY_GRID)
    gen = Generator(tokenizer, list(neutral), samples=FORCED_SAMPLES, seed=seed,
                    batch_size=len(neutral) * FORCED_SAMPLES)  # fmt: skip
    context = context_length(model, tokenizer)
    if context is not None:  # a short context: fewer new tokens, never a truncated prompt
        max_new_tokens = min(max_new_tokens, context - max(map(len, gen.prompt_ids)))
    if max_new_tokens < 4:
        raise ValueError(f"the model's context ({context} tokens) leaves no room to continue")
    gen.options = sampling_options(max_new_tokens=max_new_tokens, do_sample=True)
    topic_prompts, topic_texts = topic_passages(alignment, tokenizer)
    if not topic_prompts:
        raise ValueError("no alignment text is long enough to open a prompt with")
    (texts,) = shared_map(lambda _: [c.token_ids for c in gen.run(model)[0]], 1, world)
    prompts = [gen.prompt_ids[i // FORCED_SAMPLES] for i in range(len(texts))]
    jobs = [None, *strengths]  # None: the unsteered model

    def read(i: int) -> list[list[float]]:
        """Job ``i``'s model's perplexity of the neutral continuations and of the topic's
        words (the passages read in the same batches as the neutral texts)."""
        both = forced_perplexity(model, tokenizer, sae, scores, rec.method, jobs[i],
                                 prompts + topic_prompts, texts + topic_texts)  # fmt: skip
        return [both[: len(texts)].tolist(), both[len(texts) :].tolist()]

    readings = shared_map(read, len(jobs), world)
    (neutral_base, topic_base), *steered = [
        [torch.tensor(part, dtype=torch.float64) for part in r] for r in readings
    ]

    def mean_ratio(steered_ppl: Tensor, base_ppl: Tensor) -> float | None:
        logs = (steered_ppl / base_ppl).log()
        logs = logs[logs.isfinite()]
        return math.exp(float(logs.mean())) if len(logs) else None

    curve = [
        {
            "strength": strength,
            "neutral_forced_ratio": mean_ratio(neutral_ppl, neutral_base),
            "topic_forced_ratio": mean_ratio(topic_ppl, topic_base),
        }
        for strength, (neutral_ppl, topic_ppl) in zip(strengths, steered, strict=True)
    ]
    return AwayCalibration(
        method=rec.method,
        target_ratio=target_ratio,
        strength=strength_at(curve, target_ratio, key="neutral_forced_ratio"),
        neutral_prompts=len(neutral),
        inviting_prompts=len(topic_prompts),
        curve=curve,
    )


def forced_perplexity(
    model: nn.Module,
    tokenizer: Any,
    sae: Any,
    scores: Any,
    method: str,
    strength: float | None,
    prompts: Sequence[str | list[int]],
    texts: Sequence[list[int]],
) -> Tensor:
    """The perplexity of each of ``texts`` given its prompt (text or token ids), teacher-forced,
    under the unsteered model (``strength`` None), else under ``method`` away from the topic at
    ``strength``."""
    if strength is None:
        return perplexity(model, tokenizer, list(prompts), list(texts))
    with SteeredModel(model, sae, scores=scores, direction="away", method=method,
                      strength=strength) as steered:  # fmt: skip
        return perplexity(steered, tokenizer, list(prompts), list(texts))


def strength_at(
    curve: Sequence[dict[str, Any]], target: float, key: str = "neutral_ratio"
) -> float:
    """The largest strength whose neutral ratio (``key`` of each point) stays at or under
    ``target``, linear in log ratio between the last point under it and the next, from
    (0, ratio 1)."""
    goal = math.log(target)
    prev_s, prev_log = 0.0, 0.0
    for point in sorted(curve, key=lambda p: p["strength"]):
        ratio = point.get(key)
        log = max(math.log(ratio), prev_log) if ratio and 0 < ratio < math.inf else math.inf
        if log > goal:
            if math.isinf(log):
                return prev_s if prev_s > 0 else point["strength"] / 2
            return prev_s + (goal - prev_log) / (log - prev_log) * (point["strength"] - prev_s)
        prev_s, prev_log = point["strength"], log
    return prev_s
