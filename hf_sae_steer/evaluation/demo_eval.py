"""What the demo's evaluation (``storage/demo/EVAL.md``, ``scripts/run_demo_eval.py``) runs:
its conditions, the artifacts it fits for them, and the two judges of the topic.

Every verdict and finding of EVAL.md is the *cross-source* judge's
(:mod:`~hf_sae_steer.evaluation.judges`: Webster 1913 definitions about the topic against
definitions of other topics, a source and style the fit texts never had); the classifier trained
on the fit texts themselves (alignment against reference) measures the same continuations a
second time (:mod:`~hf_sae_steer.evaluation.remeasure`), labelled as such.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from hf_sae_steer.evaluation.classifier import TopicClassifier
from hf_sae_steer.evaluation.conditions import FINETUNE_EPOCHS, NORM_FRACTIONS, Condition
from hf_sae_steer.evaluation.judges import JudgeTexts, build_judge
from hf_sae_steer.evaluation.remeasure import remeasure
from hf_sae_steer.evaluation.result import EvalResult
from hf_sae_steer.evaluation.sweep import evaluate
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scoring.fit import FeatureScores

RECOMMENDED = "add (recommended)"
# 0.2's default, refitted in the run: rule mean_diff with k=5, add keeping the SAE error, at
# norm fraction 0.5 (the release's fixed strength).
V02 = "v0.2"
V02_LABEL = "add (0.2's default)"
V02_FIT: dict[str, Any] = {"rule": "mean_diff", "k": 5}
V02_NORM_FRACTION = 0.5


def demo_conditions(recommended_fraction: float | None = None) -> list[Condition]:
    """The demo's comparison: the recommended steering and its random control, 0.2's default, a
    steering vector (CAA) and its control, the support rule, the reference's methods, and two
    baselines. Artifacts: ``default`` (the default rule), ``seed`` (the reference rule),
    ``support`` and ``v0.2`` (:func:`fit_run_artifacts`). The additive curves include the
    recommended (calibrated) norm fraction and 0.2's, so both defaults and the controls are
    compared at exactly their points."""
    extra = [recommended_fraction] if recommended_fraction else []
    rhos = tuple(sorted({*NORM_FRACTIONS, V02_NORM_FRACTION, *extra}))
    return [
        Condition("orig"),
        Condition(RECOMMENDED, "add", preserve_error=True, norm_fractions=rhos),
        Condition("random latents", "add", preserve_error=True, norm_fractions=rhos,
                  control="random_latents"),
        Condition(V02_LABEL, "add", scores=V02, preserve_error=True, norm_fractions=rhos),
        Condition("vector (CAA)", "vector", norm_fractions=rhos),
        Condition("random vector", "vector", norm_fractions=rhos, control="random_vector"),
        Condition("clamp (support rule)", "clamp", scores="support", preserve_error=True,
                  norm_fractions=rhos),
        Condition("swap (reference)", "swap", scores="seed"),
        Condition("swap+err (reference)", "swap", scores="seed", preserve_error=True),
        Condition("clamp +10 (reference)", "clamp", scores="seed", clamp_value=10.0),
        Condition("weight (reference)", "weight", scores="seed"),
        Condition("prefix", baseline="prefix"),
        Condition("fine-tuning", baseline="finetune", epochs=FINETUNE_EPOCHS),
    ]  # fmt: skip


def fit_run_artifacts(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    alignment: Sequence[str],
    reference: Sequence[str],
    *,
    seed: int = 0,
) -> dict[str, FeatureScores]:
    """The artifacts the run fits on the shipped alignment and reference texts: ``support``
    (the support rule) and ``v0.2`` (0.2's default rule). Both are placed by norm fraction, so
    neither needs its strength calibrated."""
    plans = {"support": {"rule": "support"}, V02: V02_FIT}
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the reports are part of EVAL.md
        for name, options in plans.items():
            out[name] = FeatureScores.fit(
                model, tokenizer, sae, reference=list(reference), alignment=list(alignment),
                calibrate_strength=False, measure_effect=False, progress=False, seed=seed,
                **options,
            )  # fmt: skip
    return out


def evaluate_demo(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    scores: dict[str, FeatureScores],
    prompts: Sequence[str],
    *,
    alignment: Sequence[str],
    reference: Sequence[str],
    judge_texts: JudgeTexts,
    embedder: Any,
    embedder_name: str,
    seed: int = 0,
    **options: Any,
) -> tuple[EvalResult, EvalResult]:
    """``(cross-source, same-source)``: :func:`demo_conditions` evaluated on ``prompts`` and
    judged by the judge built from ``judge_texts`` (its AUC, held out and on ``alignment``
    against ``reference``, in ``config["judge"]``); then the same continuations judged by the
    classifier trained on ``alignment`` against ``reference`` and the alignment centroid.
    The prefix and fine-tuning baselines are built from ``alignment``, never the judge's texts.
    ``options`` go to :func:`~hf_sae_steer.evaluation.sweep.evaluate`."""
    judge = build_judge(embedder, judge_texts, transfer=(alignment, reference), seed=seed)
    recommended = scores["default"].recommended
    result = evaluate(
        model, tokenizer, sae, scores, list(prompts), alignment=judge_texts.positives,
        classifier=judge.classifier, baseline_texts=list(alignment), embedder=embedder,
        conditions=demo_conditions(recommended.norm_fraction if recommended else None),
        seed=seed, **options,
    )  # fmt: skip
    result.config["embedder"] = embedder_name
    result.config["judge"] = {
        **judge.summary(),
        "heldout_examples": [len(judge_texts.heldout_positives),
                             len(judge_texts.heldout_negatives)],
        "transfer_examples": [len(alignment), len(reference)],
    }  # fmt: skip
    same = TopicClassifier.fit(embedder, list(alignment), list(reference), seed=seed)
    return result, remeasure(result, embedder, alignment, same)
