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
is calibrated on neutral prompts: the strength is the largest whose *teacher-forced* perplexity
ratio stays under :data:`AWAY_TARGET_RATIO` (a suppression should leave unrelated text alone):
the suppressed model's perplexity of unsteered continuations of the neutral prompts
(:data:`FORCED_SAMPLES` each) over the unsteered model's own. Both models read the same tokens,
so the ratio carries no sampling noise. The sampled ratio (the suppressed model's own
continuations, scored by the unsteered model) is recorded beside it but not used: on the demo's
medical artifact, over six seeds, 12 neutral prompts with one continuation each put the sampled
ratio at strength 1 anywhere from 1.00x to 1.49x and the strength it chose from 0.22 to 1 (the
top of a 0.25-1 grid); read teacher-forced, the chosen strength stayed within 1.82-2.32, and
within 1.93-2.08 over 24 prompts (``scripts/explore_away.py`` measures both on the benchmark's
topics: their means agree within a factor that depends on the topic). The curve also records
how far the continuations of prompts that invite the topic (openings of the alignment texts)
move away from it: the drop of their cosine similarity to the alignment set.
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
    strengths: Sequence[float] | None = None,
    max_new_tokens: int = 16,
    seed: int = 0,
    world: World | None = None,
) -> AwayCalibration:
    """Measure the recommended suppression at ``strengths`` (default: :data:`AWAY_GRIDS` for its
    method, else :data:`AWAY_GRID`) and choose the largest whose
    teacher-forced neutral perplexity ratio stays under ``target_ratio`` (read between grid
    points in log ratio).

    Neutral and inviting prompts run as one batch per strength (one sample each, the same seeds
    at every strength); under ``torchrun`` the batches are shared out and gathered, so every
    process holds what one process would."""
    world = world or World()
    rec = scores.recommended_away
    if strengths is None:
        strengths = AWAY_GRIDS.get(rec.method, AWAY_GRID)
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

    n = len(neutral)
    # Teacher-forced: the suppressed model reads unsteered continuations of the neutral prompts,
    # FORCED_SAMPLES each. Every generation, then every reading, is shared out across processes
    # and gathered, so each process holds the same curve and does a share of the work.
    forced_gen = Generator(tokenizer, list(neutral), samples=FORCED_SAMPLES, seed=seed,
                           batch_size=n * FORCED_SAMPLES, options=gen.options)  # fmt: skip

    def generated(i: int) -> list[list[int]]:
        if i < len(jobs):
            return run(jobs[i])
        return [c.token_ids for c in forced_gen.run(model)[0]]

    outputs = _shared(generated, len(jobs) + 1, world)
    texts = outputs.pop()
    forced_prompts = [forced_gen.prompt_ids[i // FORCED_SAMPLES] for i in range(len(texts))]

    def read(i: int) -> list[list[float]]:
        """The unsteered model's perplexity of job ``i``'s sampled neutral continuations, and
        job ``i``'s model's perplexity of the unsteered continuations (teacher-forced)."""
        sampled = perplexity(model, tokenizer, gen.prompt_ids[:n], outputs[i][:n])
        forced = forced_perplexity(model, tokenizer, sae, scores, rec.method, jobs[i],
                                   forced_prompts, texts)  # fmt: skip
        return [sampled.tolist(), forced.tolist()]

    readings = _shared(read, len(jobs), world)
    ppl = [torch.tensor(r[0], dtype=torch.float64) for r in readings]
    forced_base, *forced = [torch.tensor(r[1], dtype=torch.float64) for r in readings]

    def similarity(ids: list[list[int]]) -> float:
        texts = [tokenizer.decode(t, skip_special_tokens=True) or "." for t in ids[n:]]
        return float((embed([t if t.strip() else "." for t in texts]) @ centroid).mean())

    def mean_ratio(steered_ppl: Tensor, base_ppl: Tensor) -> float | None:
        logs = (steered_ppl / base_ppl).log()
        logs = logs[logs.isfinite()]
        return math.exp(float(logs.mean())) if len(logs) else None

    base_similarity = similarity(outputs[0])
    curve = []
    for j, strength in enumerate(strengths, 1):
        curve.append({
            "strength": strength,
            "neutral_ratio": mean_ratio(ppl[j], ppl[0]),
            "neutral_forced_ratio": mean_ratio(forced[j - 1], forced_base),
            "topic_drop": base_similarity - similarity(outputs[j]),
        })  # fmt: skip
    return AwayCalibration(
        method=rec.method,
        target_ratio=target_ratio,
        strength=strength_at(curve, target_ratio, key="neutral_forced_ratio"),
        neutral_prompts=len(neutral),
        inviting_prompts=len(inviting),
        curve=curve,
    )


def _shared(work: Any, n: int, world: World) -> list[Any]:
    """``[work(0), ..., work(n - 1)]``, each computed by one process (JSON values) and gathered."""
    done: dict[int, Any] = {}
    for part in all_gather_json({i: work(i) for i in range(n) if world.owns(i)}, world):
        done.update({int(i): value for i, value in part.items()})
    return [done[i] for i in range(n)]


def forced_perplexity(
    model: nn.Module,
    tokenizer: Any,
    sae: Any,
    scores: Any,
    method: str,
    strength: float | None,
    prompt_ids: Sequence[list[int]],
    texts: Sequence[list[int]],
) -> Tensor:
    """The perplexity of each of ``texts`` given its prompt (teacher-forced) under the unsteered
    model (``strength`` None), else under ``method`` away from the topic at ``strength``."""
    if strength is None:
        return perplexity(model, tokenizer, list(prompt_ids), list(texts))
    with SteeredModel(model, sae, scores=scores, direction="away", method=method,
                      strength=strength) as steered:  # fmt: skip
        return perplexity(steered, tokenizer, list(prompt_ids), list(texts))


def forced_perplexities(
    model: nn.Module,
    tokenizer: Any,
    sae: Any,
    scores: Any,
    method: str,
    strengths: Sequence[float],
    prompt_ids: Sequence[list[int]],
    texts: Sequence[list[int]],
) -> list[Tensor]:
    """:func:`forced_perplexity` unsteered, then at each of ``strengths``."""
    return [
        forced_perplexity(model, tokenizer, sae, scores, method, s, prompt_ids, texts)
        for s in (None, *strengths)
    ]


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
