"""The multi-topic benchmark: every rule and method, CAA, random controls, a prompt prefix and
fine-tuning, on many topics, compared at matched fluency (``docs/method.md`` §8).

Per topic: fit one artifact per candidate rule on the topic's ``fit`` texts (against the shared
reference set), then run :func:`~hf_sae_steer.evaluation.sweep.evaluate` on neutral prompts
with the topic's ``eval`` texts as the measure (centroid, and the classifier's positives
against the topic's negatives). Curves are read at perplexity ratios 1.25×, 1.5× and 2×
(:mod:`~hf_sae_steer.evaluation.matched`), each against CAA with paired intervals.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hf_sae_steer.evaluation.conditions import Condition, recommended_condition
from hf_sae_steer.evaluation.judges import Judge, JudgeTexts
from hf_sae_steer.evaluation.matched import TARGETS, against_point, compare, curves
from hf_sae_steer.evaluation.result import EvalResult
from hf_sae_steer.evaluation.sweep import evaluate
from hf_sae_steer.evaluation.topics import Topic
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scoring.fit import FeatureScores

GRID = (0.25, 0.5, 0.75, 1.0)
CAA = "CAA"


@dataclass(frozen=True)
class Candidate:
    """A selection rule with its options, steered with ``add`` over the norm-fraction grid."""

    name: str
    rule: str
    options: tuple[tuple[str, Any], ...] = ()

    def fit_options(self) -> dict[str, Any]:
        return {"rule": self.rule, **dict(self.options)}


@dataclass
class TopicRun:
    """One topic's evaluation, its matched comparisons and what fitting took."""

    topic: str
    split: str
    result: EvalResult
    matched: list[dict[str, Any]]
    fits: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, FeatureScores] = field(default_factory=dict, repr=False)  # not saved


def calibrated_label(name: str) -> str:
    """The condition of a candidate's recommended (calibrated) point."""
    return f"{name} (calibrated)"


def carrying(weights: Any, share: float) -> int:
    """How many of ``weights`` (the largest first) carry ``share`` of their sum."""
    w = sorted((float(x) for x in weights), reverse=True)
    total, running = sum(w), 0.0
    for n, x in enumerate(w, start=1):
        running += x
        if running >= share * total:
            return n
    return len(w)


def conditions_for(
    candidates: Sequence[Candidate], default: str, *, grid: Sequence[float] = GRID,
    recommended: dict[str, dict[str, Any]] | None = None, baselines: bool = False,
    controls: bool = False,
) -> list[Condition]:  # fmt: skip
    """``orig``; each candidate's ``add`` curve and its ``recommended`` point; CAA (``default``'s
    mean difference) and a random vector of its norm, both by norm fraction; with ``controls``
    also random latents (``default``'s weights), support + clamp and seed + swap; with
    ``baselines`` a prompt prefix and fine-tuning."""
    rhos = tuple(grid)
    out = [Condition("orig")]
    for c in candidates:
        out.append(
            Condition(c.name, "add", scores=c.name, preserve_error=True, norm_fractions=rhos)
        )
    for name, rec in (recommended or {}).items():  # each rule's recommended point
        out.append(recommended_condition(rec, name=calibrated_label(name), scores=name))
    out += [
        Condition(CAA, "vector", scores=default, preserve_error=True, norm_fractions=rhos),
        Condition("random vector", "vector", scores=default, preserve_error=True,
                  norm_fractions=rhos[1::2] or rhos, control="random_vector"),
    ]  # fmt: skip
    if controls:
        out += [
            Condition("random latents", "add", scores=default, preserve_error=True,
                      norm_fractions=rhos, control="random_latents"),
            Condition("support clamp", "clamp", scores="support", preserve_error=True,
                      norm_fractions=rhos),
            Condition("seed swap", "swap", scores="seed", strengths=(1.0,)),
        ]  # fmt: skip
    if baselines:
        out += [Condition("prefix", baseline="prefix"), Condition("finetune", baseline="finetune")]
    return out


def fit_candidates(
    model: nn.Module, tokenizer: Any, sae: SAE, topic: Topic, reference: Sequence[str],
    plans: dict[str, dict[str, Any]], *, calibrate: Sequence[str] = (), seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, FeatureScores], dict[str, dict[str, Any]]]:  # fmt: skip
    """One artifact per plan (fit options), fitted on ``topic.fit`` against ``reference``, and
    what each fit took (seconds, latents, the recommended steering)."""
    artifacts, fits = {}, {}
    for name, options in plans.items():
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # reports are recorded, not printed
            scores = FeatureScores.fit(
                model, tokenizer, sae, reference=list(reference), alignment=topic.fit,
                progress=False, calibrate_strength=name in calibrate, seed=seed,
                **(extra or {}), **options,
            )  # fmt: skip
        artifacts[name] = scores
        weights = scores.latent_weights()
        fits[name] = {
            "seconds": time.perf_counter() - started,
            "latents": None if weights is None else len(weights[0]),
            "latents_90": None if weights is None else carrying(weights[1], 0.9),
            "target_explained": scores.quality.delta_explained if scores.quality else None,
            "recommended": scores.recommended and scores.recommended.to_json(),
        }
    return artifacts, fits


def judged(judge: Judge | None, texts: JudgeTexts | None, topic: Topic) -> dict[str, Any]:
    """``evaluate``'s measuring options: the judge's fit texts (its centroid) and classifier
    when there is a judge, else the topic's own ``eval`` texts against its negatives."""
    if judge is None or texts is None:
        return {"alignment": topic.eval, "reference": topic.negatives}
    return {"alignment": texts.positives, "classifier": judge.classifier}


def run_topic(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    topic: Topic,
    reference: Sequence[str],
    prompts: Sequence[str],
    candidates: Sequence[Candidate],
    *,
    default: str,
    grid: Sequence[float] = GRID,
    samples: int = 2,
    max_new_tokens: int = 32,
    seed: int = 0,
    batch_size: int = 48,
    embedder: Any = None,
    fit_options: dict[str, Any] | None = None,
    baselines: bool = False,
    controls: bool = False,
    calibrate: bool = True,
    judge: Judge | None = None,
    judge_texts: JudgeTexts | None = None,
    reference_point: tuple[str, float] | None = None,
    n_boot: int = 1000,
) -> TopicRun:
    """Fit every candidate (and, with ``controls``, the support and seed rules) on ``topic.fit``,
    evaluate every condition of :func:`conditions_for` on ``prompts`` and compare them at
    matched fluency. With a ``judge`` and its ``judge_texts``
    (:mod:`~hf_sae_steer.evaluation.judges`) every cosine and P(topic) is the judge's;
    ``reference_point`` (a candidate and a norm fraction of ``grid``) reads every curve at that
    point's perplexity (``run.fits["reference_point"]``)."""
    extra = dict(fit_options or {})
    if embedder is not None:
        extra["embedder"] = embedder
    plans = {c.name: c.fit_options() for c in candidates}
    if controls:
        plans |= {"support": {"rule": "support"}, "seed": {"rule": "seed"}}
    names = [c.name for c in candidates]
    artifacts, fits = fit_candidates(
        model, tokenizer, sae, topic, reference, plans, calibrate=names if calibrate else (),
        seed=seed, extra=extra,
    )  # fmt: skip
    conditions = conditions_for(
        candidates, default, grid=grid, baselines=baselines, controls=controls,
        recommended={c.name: artifacts[c.name].recommended for c in candidates},
    )  # fmt: skip
    result = evaluate(
        model, tokenizer, sae, artifacts, list(prompts), baseline_texts=topic.fit,
        conditions=conditions, samples=samples, max_new_tokens=max_new_tokens, seed=seed,
        batch_size=batch_size, embedder=embedder, n_boot=n_boot, progress=False,
        **judged(judge, judge_texts, topic),
    )  # fmt: skip
    all_curves = curves(result.samples)
    matched = compare(all_curves, TARGETS, against=CAA, n_boot=n_boot, seed=seed)
    if reference_point is not None:
        fits["reference_point"] = against_point(
            all_curves, *reference_point, n_boot=n_boot, seed=seed
        )
    if judge is not None:
        fits["judge"] = judge.summary()
    return TopicRun(topic.name, topic.split, result, matched, fits, artifacts)
