"""Steering *away* from a topic, measured (issue 21): does a suppression keep a model off a topic
that a prompt invites, and what does it cost on text that never touched the topic?

Per topic there are two prompt sets: **inviting** prompts, the openings (a few words) of topic
texts the steering was never fitted on, which the unsteered model continues on topic; and
**neutral** prompts. Every condition generates from both with the same seeds, and each
continuation is judged (P(topic), cosine) and scored for perplexity under the unsteered model.
Per condition and point:

- **drop**: the change of P(topic) on inviting prompts, paired with the unsteered continuation
  of the same prompt and seed (negative is a suppression);
- **neutral ratio**: the perplexity ratio on neutral prompts (the side effect), and the
  **inviting ratio** on the inviting prompts.

Curves are compared *within a neutral-perplexity budget* ``T`` (1.05×, 1.10×): the drop where the
curve's neutral ratio crosses ``T`` (interpolated in log ratio, as
:mod:`~hf_sae_steer.evaluation.matched` does), or, for a curve that never costs that much, at its
strongest point. Intervals are paired percentile bootstraps over prompts, the inviting and the
neutral prompts resampled independently, one resample applied to every curve at once.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hf_sae_steer.atomic import write_text_atomically
from hf_sae_steer.evaluation.conditions import Condition
from hf_sae_steer.evaluation.matched import Curve, at_ratio, curves, resample_weights, summary
from hf_sae_steer.evaluation.sweep import evaluate
from hf_sae_steer.evaluation.topics import Topic
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scores.record import FeatureScores
from hf_sae_steer.steering.interventions import LatentEdit

BUDGETS = (1.05, 1.10)
CAA_SUBTRACTION = "CAA subtraction"
ABLATION = "directional ablation"
SUPPRESS = "suppress (library)"
ATTENUATE = "attenuate (library)"
DEFAULT_SUPPRESSION = "default suppression"
# norm fractions of the subtracted mean difference (negated), and strengths of latent edits
SUBTRACT_GRID = (0.1, 0.2, 0.4)
EDIT_STRENGTHS = (1.0, 2.0, 3.0)
ABLATION_STRENGTHS = (0.5, 1.0, 2.0)  # 1 projects the direction out, 2 reflects it
# multiples of the mean difference, each times the posterior (which rarely nears 1 off the topic)
ATTENUATE_STRENGTHS = (2.0, 4.0, 8.0)


def inviting_prompts(
    texts: Sequence[str], n: int | None = None, *, words: tuple[int, int] = (4, 6), seed: int = 0
) -> list[str]:
    """The openings of ``texts``: their first ``words[0]`` to ``words[1]`` words (drawn per text
    with ``seed``), trailing punctuation removed; at most ``n``, distinct, in order."""
    rng = random.Random(seed)
    out: list[str] = []
    for text in texts:
        parts = text.split()
        opening = " ".join(parts[: rng.randint(*words)])
        opening = re.sub(r"[\s,;:(\-]+$", "", opening)
        if opening and opening not in out:
            out.append(opening)
        if n is not None and len(out) >= n:
            break
    return out


def latent_edits(latents: Sequence[int], factor: float = 0.0) -> tuple[LatentEdit, ...]:
    """Multiply each of ``latents`` by ``factor`` where it fires (``sae`` method, error kept: at
    strength ``s`` a latent becomes ``(1 - s (1 - factor)) z``, so factor 0 at strength 1 is
    zero, at strength 2 its negative)."""
    return tuple(LatentEdit(int(i), float(factor), mode="multiply") for i in latents)


def random_latents(d_sae: int, avoid: Sequence[int], n: int, seed: int) -> list[int]:
    """``n`` latents drawn at random (seeded), none of ``avoid``."""
    pool = torch.ones(d_sae)
    pool[torch.as_tensor(list(avoid), dtype=torch.long)] = 0.0
    g = torch.Generator().manual_seed(seed + 7919)
    return torch.multinomial(pool, n, replacement=False, generator=g).tolist()


def away_conditions(
    artifact: str, latents: Sequence[int], d_sae: int, *, seed: int = 0,
    subtract: Sequence[float] = SUBTRACT_GRID, strengths: Sequence[float] = EDIT_STRENGTHS,
    recommended: Any = None, library: bool = True, gated: bool = False,
    extra: Sequence[Condition] = (),
) -> list[Condition]:  # fmt: skip
    """``orig``; CAA subtraction (``vector`` along ``artifact``'s mean difference, negative norm
    fractions); directional ablation of that difference
    (:func:`~hf_sae_steer.evaluation.baselines.directional_ablation`); with ``library`` the
    library's ``suppress`` (``direction="away"``: the artifact's topic latents, conditional)
    at ``strengths``, else ``latents`` multiplied towards 0 and below where they fire; as many
    random latents edited alike (the control at equal strength); with ``gated`` the library's
    ``attenuate`` (CAA subtraction times the SAE's topic posterior); the artifact's
    ``recommended`` suppression (its ``recommended_away``) as one point; then ``extra``."""
    control = latent_edits(random_latents(d_sae, latents, len(latents), seed))
    rhos = tuple(-abs(r) for r in subtract)
    k = len(latents)
    away = (("direction", "away"),)
    out = [
        Condition("orig"),
        Condition(CAA_SUBTRACTION, "vector", scores=artifact, preserve_error=True,
                  norm_fractions=rhos),
        Condition(ABLATION, scores=artifact, baseline="ablation",
                  strengths=ABLATION_STRENGTHS),
    ]  # fmt: skip
    if library:
        out.append(Condition(SUPPRESS, "suppress", scores=artifact, preserve_error=True,
                             strengths=tuple(strengths), options=away))  # fmt: skip
    else:
        edits = (("edits", latent_edits(latents)),)
        out.append(Condition(f"clamp top-{k}", "sae", scores=artifact, preserve_error=True,
                             strengths=tuple(strengths), options=edits))  # fmt: skip
    out.append(Condition(f"random {k} latents", "sae", scores=artifact, preserve_error=True,
                         strengths=tuple(strengths), options=(("edits", control),)))  # fmt: skip
    if gated:
        out.append(Condition(ATTENUATE, "attenuate", scores=artifact, preserve_error=True,
                             strengths=ATTENUATE_STRENGTHS, options=away))  # fmt: skip
    if recommended is not None:
        out.append(Condition(DEFAULT_SUPPRESSION, recommended.method, scores=artifact,
                             preserve_error=True, strengths=(float(recommended.strength),),
                             options=away))  # fmt: skip
    return [*out, *extra]


def split_curves(
    records: Sequence[dict[str, Any]], n_inviting: int
) -> tuple[dict[str, Curve], dict[str, Curve]]:
    """The paired curves of the inviting prompts (indices below ``n_inviting``) and of the
    neutral prompts (the rest) of one evaluation over both."""
    inviting = [r for r in records if r["prompt_index"] < n_inviting]
    neutral = [r for r in records if r["prompt_index"] >= n_inviting]
    return _weakest_first(curves(inviting)), _weakest_first(curves(neutral))


def _weakest_first(all_curves: dict[str, Curve]) -> dict[str, Curve]:
    """Each curve's points ordered by size (a subtraction's negative norm fractions sort the
    strongest first otherwise)."""
    out = {}
    for label, c in all_curves.items():
        order = sorted(range(len(c.points)), key=lambda j: abs(c.points[j]))
        gains = {m: g[order] for m, g in c.gains.items()}
        out[label] = Curve(label, [c.points[j] for j in order], gains, c.log_ratio[order])
    return out


def within_budget(gain: np.ndarray, log_ratio: np.ndarray, budget: float) -> np.ndarray:
    """``gain`` [..., points] where the curve's ratio crosses ``budget``; at its strongest point
    where it never does (it stays within the budget all along)."""
    value = at_ratio(gain, log_ratio, budget)
    never = np.maximum.accumulate(log_ratio, axis=-1)[..., -1] < math.log(budget)
    return np.where(never, gain[..., -1], value)


def analyse(
    records: Sequence[dict[str, Any]], n_inviting: int, *, budgets: Sequence[float] = BUDGETS,
    against: Sequence[str] = (CAA_SUBTRACTION,), n_boot: int = 1000, seed: int = 0,
) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """``points``: per condition and point, the drop of P(topic) and of the cosine on inviting
    prompts and both perplexity ratios; ``budgets``: per condition and budget, the drops within
    it and their paired differences to each condition of ``against`` (negative: suppresses more).
    """
    inv, neu = split_curves(records, n_inviting)
    n_inv = next(iter(inv.values())).log_ratio.shape[1]
    n_neu = next(iter(neu.values())).log_ratio.shape[1]
    w_inv = resample_weights(n_inv, n_boot, seed)
    w_neu = resample_weights(n_neu, n_boot, seed + 1)
    points, budget_rows, cache = [], [], {}
    for label, c in inv.items():
        n = neu[label]
        neutral_lr = w_neu @ n.log_ratio.T  # [boots + 1, points]
        inviting_lr = w_inv @ c.log_ratio.T
        drops = {m: w_inv @ g.T for m, g in c.gains.items()}
        for j, x in enumerate(c.points):
            row: dict[str, Any] = {"label": label, "point": x}
            for m, d in drops.items():
                row[m], row[f"{m}_lo"], row[f"{m}_hi"] = summary(d[:, j])
            ratio = summary(np.exp(neutral_lr[:, j]))
            row["neutral_ratio"], row["neutral_ratio_lo"], row["neutral_ratio_hi"] = ratio
            row["inviting_ratio"] = float(np.exp(inviting_lr[0, j]))
            points.append(row)
        for b in budgets:
            cache[(label, b)] = {m: within_budget(d, neutral_lr, b) for m, d in drops.items()}
            reached = bool(np.maximum.accumulate(neutral_lr[0])[-1] >= math.log(b))
            cache[(label, b, "invite")] = within_budget(inviting_lr, neutral_lr, b)
            cache[(label, b, "reached")] = reached
    for label in inv:
        for b in budgets:
            for m, values in cache[(label, b)].items():
                row = {"label": label, "budget": b, "measure": m,
                       "reached": cache[(label, b, "reached")],
                       "inviting_ratio": float(np.exp(cache[(label, b, "invite")][0]))}  # fmt: skip
                row["drop"], row["drop_lo"], row["drop_hi"] = summary(values)
                for other in against:
                    if other in inv and other != label:
                        diff = summary(values - cache[(other, b)][m])
                        row[f"vs {other}"] = dict(zip(("diff", "lo", "hi"), diff, strict=True))
                budget_rows.append(row)
    return {"points": points, "budgets": budget_rows}


def lowers(row: dict[str, Any]) -> bool:
    """A drop whose whole interval lies below 0."""
    hi = row.get("drop_hi", row.get("p_topic_hi"))
    return hi is not None and not math.isnan(hi) and hi < 0


@dataclass
class AwayRun:
    """One topic's away evaluation: its prompts, its analysis and the measuring setup."""

    topic: str
    split: str
    inviting: list[str]
    analysis: dict[str, list[dict[str, Any]]]
    config: dict[str, Any] = field(default_factory=dict)


def chosen_latents(artifact: FeatureScores, k: int) -> list[int]:
    """The ``k`` latents ``artifact`` weights most (its rule's own choice), else its top scores."""
    chosen = artifact.latent_weights()
    if chosen is None:
        return artifact.top_latents(k).tolist()
    latents, weights = chosen
    return latents[weights.argsort(descending=True)[:k]].tolist()


def run_away_topic(
    model: nn.Module, tokenizer: Any, sae: SAE, topic: Topic,
    artifacts: dict[str, FeatureScores], artifact: str, neutral: Sequence[str], *,
    measure: dict[str, Any], n_inviting: int = 24, k: int = 10, samples: int = 1,
    max_new_tokens: int = 24, seed: int = 0, batch_size: int = 48, embedder: Any = None,
    extra: Sequence[Condition] = (), n_boot: int = 1000,
) -> AwayRun:  # fmt: skip
    """Evaluate every away condition (:func:`away_conditions` of ``artifact``'s top ``k``
    latents, then ``extra``) on ``n_inviting`` openings of ``topic.eval`` and the ``neutral``
    prompts, judged by ``measure`` (``evaluate``'s alignment and classifier options), and
    :func:`analyse` it against CAA subtraction and every ``extra`` condition."""
    inviting = inviting_prompts(topic.eval, n_inviting, seed=seed)
    scores = artifacts[artifact]
    topic_latents = scores.topic_latents()
    library = topic_latents is not None
    latents = topic_latents[0].tolist() if library else chosen_latents(scores, k)
    conditions = away_conditions(
        artifact, latents, sae.d_sae, seed=seed, recommended=scores.recommended_away,
        library=library, gated=scores.topic_gate() is not None, extra=extra,
    )  # fmt: skip
    result = evaluate(
        model, tokenizer, sae, artifacts, inviting + list(neutral), conditions=conditions,
        samples=samples, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
        embedder=embedder, n_boot=n_boot, progress=False, **measure,
    )  # fmt: skip
    against = [CAA_SUBTRACTION, ABLATION, *(c.name for c in extra)]
    analysis = analyse(result.samples, len(inviting), against=against, n_boot=n_boot, seed=seed)
    rec = scores.recommended_away
    config = {"latents": latents, "recommended_away": rec.to_json() if rec else None,
              "n_inviting": len(inviting), "n_neutral": len(neutral),
              "samples": samples, "max_new_tokens": max_new_tokens,
              "conditions": [c.name for c in conditions],
              "seconds": result.config.get("seconds")}  # fmt: skip
    return AwayRun(topic.name, topic.split, inviting, analysis, config)


def save_away(run: AwayRun, folder: Path, *, seconds: float) -> Path:
    """One topic's away run as JSON (``folder/<topic>.away.json``), written atomically."""
    data = {"topic": run.topic, "split": run.split, "seconds": seconds,
            "inviting": run.inviting, "config": run.config, **run.analysis}  # fmt: skip
    path = folder / f"{run.topic}.away.json"
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(data, indent=1, default=_plain) + "\n")
    return path


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)
