"""Steering quality, measured: topic relevance against fluency for every condition.

No LLM judge is needed. Relevance is measured twice: the sentence-embedding cosine of a
continuation to the alignment set's centroid, and ``P(topic)`` from a classifier trained on the
alignment texts against the reference texts (:mod:`~hf_sae_steer.evaluation.classifier`), since
the cosine alone rewards topical word salad. Fluency is the continuation's perplexity under the
*unsteered* model and its share of repeated 3-grams; cost is generated tokens per second. Every
condition sees the same prompts and the same sampling seeds (common random numbers), so
differences are paired; intervals are 95% percentile bootstraps over prompts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hf_sae_steer.data.embedders import DEFAULT_EMBEDDER, Embedder, embed_prompts, load_embedder
from hf_sae_steer.data.prompts import load_prompts
from hf_sae_steer.distributed import current_world
from hf_sae_steer.evaluation.baselines import FineTuner, directional_ablation, topic_prefix
from hf_sae_steer.evaluation.classifier import TopicClassifier
from hf_sae_steer.evaluation.conditions import (
    NORM_FRACTIONS,
    Baseline,
    Condition,
    Control,
    standard_conditions,
)
from hf_sae_steer.evaluation.metrics import relevance_of_embeddings
from hf_sae_steer.evaluation.result import EvalResult, summarise
from hf_sae_steer.evaluation.runner import PointRunner
from hf_sae_steer.generation import Generator, sampling_options
from hf_sae_steer.models import model_device, model_id
from hf_sae_steer.sae.base import SAE, SparseCode
from hf_sae_steer.scores.record import FeatureScores, load_scores
from hf_sae_steer.sites.layouts import find_layout
from hf_sae_steer.sites.resolve import resolve_site
from hf_sae_steer.steering.names import REFERENCE_METHODS, Method
from hf_sae_steer.steering.steered import Scores, SteeredModel
from hf_sae_steer.steering.strength import strength_for

NEAREST_K = 5


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE | None,
    scores: Scores | Mapping[str, Scores] | None,
    prompts: Any,
    alignment: Any,
    *,
    reference: Any = None,
    baseline_texts: Any = None,
    conditions: Sequence[Condition] | None = None,
    methods: Sequence[Method] = REFERENCE_METHODS,
    preserve_error: Sequence[bool] = (False, True),
    strengths: Sequence[float] = (0.5, 1.0, 2.0),
    norm_fractions: Sequence[float] = NORM_FRACTIONS,
    baselines: Sequence[Baseline] = (),
    controls: Sequence[Control] = (),
    samples: int = 3,
    max_new_tokens: int = 24,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 50,
    embedder: Embedder | None = None,
    layer: int | None = None,
    site: str | None = None,
    batch_size: int = 16,
    n_boot: int = 1000,
    progress: bool = True,
    classifier: TopicClassifier | None = None,
) -> EvalResult:
    """Generate from held-out ``prompts`` under every condition and measure relevance (centroid
    cosine, and ``P(topic)`` when ``reference`` texts are given to train the classifier),
    fluency and cost, paired against the unsteered model.

    >>> result = evaluate(model, tok, load_sae("storage/demo/sae"),              # doctest: +SKIP
    ...                   "storage/demo/scores", prompts="storage/demo/eval_prompts.txt",
    ...                   alignment="storage/demo/alignment.txt",
    ...                   reference="storage/demo/reference.txt",
    ...                   methods=("add", "swap"), controls=("random_latents",))
    >>> print(result.to_markdown()); result.save("eval/")

    ``conditions`` (:class:`~hf_sae_steer.evaluation.conditions.Condition`) say exactly what to
    run; without them :func:`~hf_sae_steer.evaluation.conditions.standard_conditions` builds
    them from ``methods`` (``add``/``vector`` by ``norm_fractions``, the others by ``strengths``
    × ``preserve_error``), ``baselines`` (``prefix``, ``finetune``) and ``controls``
    (``random_latents``, ``random_vector``: the same weights or norm in random directions).
    ``scores`` is one artifact (condition key ``"default"``) or a mapping of named artifacts.
    Sample ``j`` of every prompt uses the same seed under every condition. ``temperature <= 0``
    is greedy decoding (then use ``samples=1``). ``embedder`` defaults to the scores'.
    ``baseline_texts`` are what the prefix and fine-tuning baselines are built from (default:
    ``alignment``); give the texts the scores were fitted on when ``alignment`` holds other
    texts of the topic kept for measuring, so no baseline sees the measuring texts.
    """
    prompt_texts, align_texts = load_prompts(prompts), load_prompts(alignment)
    train_texts = load_prompts(baseline_texts) if baseline_texts is not None else align_texts
    reference_texts = load_prompts(reference) if reference is not None else None
    if samples < 1 or max_new_tokens < 1:
        raise ValueError("samples and max_new_tokens must be at least 1.")
    artifacts = _artifacts(scores)
    if conditions is None:
        conditions = standard_conditions(
            methods, strengths=strengths, preserve_error=preserve_error,
            norm_fractions=norm_fractions, baselines=baselines, controls=controls,
        )  # fmt: skip
    _check(conditions, artifacts, sae)
    first = artifacts.get("default", next(iter(artifacts.values()), None))
    main = first if isinstance(first, FeatureScores) else None
    embed_model, embedder_name = _embedder_for(embedder, main)
    (align_emb,), _ = embed_prompts(embed_model, [align_texts], progress=False)
    if classifier is None and reference_texts is not None:
        classifier = TopicClassifier.fit(embed_model, align_texts, reference_texts, seed=seed)
    sampling = sampling_options(
        max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=temperature,
        top_k=top_k, top_p=1.0,
    )  # fmt: skip
    gen = Generator(
        tokenizer, prompt_texts, samples=samples, seed=seed, batch_size=batch_size, options=sampling
    )
    where = resolve_site(
        find_layout(model), layer, site, scores=main, trained=sae.cfg if sae else None, warn=False
    )
    world = current_world(cpu=model_device(model).type == "cpu")
    run = PointRunner(gen, prompt_texts, world)
    prefix = None
    if _has(conditions, "prefix"):
        (train_emb,), _ = embed_prompts(embed_model, [train_texts], progress=False)
        prefix = topic_prefix(tokenizer, train_texts, train_emb)
    extra: dict[str, Any] = {}
    n_points = sum(len(c.points()) for c in conditions)
    clock = [time.perf_counter()]
    bar = tqdm(total=n_points, desc="eval", unit="point", disable=not (progress and world.is_main))
    was_training = model.training
    model.eval()
    try:
        gen.warm_up(model)
        for cond in conditions:
            if cond.baseline == "prefix":
                prefixed = Generator(
                    tokenizer, [f"{prefix} {p}" for p in prompt_texts], samples=samples,
                    seed=seed, batch_size=batch_size, options=sampling,
                )  # fmt: skip
                run(model, cond, None, None, generator=prefixed)
            elif cond.baseline == "finetune":
                tuner = FineTuner(model, tokenizer, train_texts, seed=seed)
                for epochs, _ in cond.points():
                    tuned = tuner.train_to(int(epochs))
                    run(tuned, cond, epochs, None, train_seconds=tuner.seconds)
                    bar.update(1)
                extra["finetune_loss"] = tuner.last_loss
                continue
            elif cond.baseline == "ablation":
                direction = _mean_difference(artifacts.get(cond.scores), cond)
                for strength, _ in cond.points():
                    with directional_ablation(model, where, direction, float(strength)):
                        run(model, cond, strength, None)
                    bar.update(1)
                continue
            elif cond.method is None:
                run(model, cond, None, None)
            else:
                _run_steering(run, model, sae, artifacts, cond, where, seed, bar)
                continue
            bar.update(1)
        # Every hook is gone now, so this is the unsteered model's perplexity.
        records = run.records
        prompt_ids = [gen.prompt_ids[r["prompt_index"]] for r in records]
        ids = [r.pop("_ids") for r in records]
        clock.append(time.perf_counter())
        ppl = run.perplexity(model, tokenizer, prompt_ids, ids, batch_size)
        clock.append(time.perf_counter())
    finally:
        bar.close()
        model.train(was_training)
    (emb,), _ = embed_prompts(embed_model, [[r["continuation"] for r in records]], progress=False)
    centroid, nearest = relevance_of_embeddings(emb, align_emb, k=NEAREST_K)
    p_topic = classifier.probability_of_embeddings(emb) if classifier is not None else None
    for i, r in enumerate(records):
        r.update(
            relevance_centroid=float(centroid[i]), relevance_nearest=float(nearest[i]),
            perplexity=float(ppl[i]),
            p_topic=float(p_topic[i]) if p_topic is not None else float("nan"),
        )  # fmt: skip
    clock.append(time.perf_counter())
    config = {
        "conditions": [c.name for c in conditions],
        "samples": samples,
        "seed": seed,
        **sampling,
        "batch_size": batch_size,
        "n_boot": n_boot,
        "embedder": embedder_name,
        "nearest_k": min(NEAREST_K, len(align_texts)),
        "classifier_cv_auc": None if classifier is None else classifier.cv_auc,
        "classifier_examples": None
        if classifier is None
        else [classifier.n_positive, classifier.n_negative],
        "prefix": prefix,
        "layer": where.layer,
        "site": where.kind,
        "n_prompts": len(prompt_texts),
        "n_alignment": len(align_texts),
        "n_reference": None if reference_texts is None else len(reference_texts),
        "model": model_id(model),
        "sae": sae.cfg.spec if sae is not None else None,
        "sae_fingerprint": sae.fingerprint() if sae is not None else None,
        "scores": {k: _describe(v) for k, v in artifacts.items()},
        "seconds": dict(
            zip(("generate", "perplexity", "embed"), np.diff(clock).tolist(), strict=True)
        ),
        **extra,
    }
    rows = summarise(records, run.timing, n_boot, seed)
    return EvalResult(rows=rows, samples=records, config=config)


def _run_steering(
    run: PointRunner,
    model: nn.Module,
    sae: SAE | None,
    artifacts: dict[str, FeatureScores | Any],
    cond: Condition,
    where: Any,
    seed: int,
    bar: Any,
) -> None:
    artifact = artifacts.get(cond.scores)
    override = _control(cond, artifact, sae, seed)
    with SteeredModel(
        model,
        sae,
        layer=where.layer,
        site=where.kind,
        method=cond.method,
        scores=artifact,
        strength=1.0,
        preserve_error=cond.preserve_error,
        clamp_value=cond.clamp_value,
        **dict(cond.options),
        **override,
    ) as steered:  # no hooks survive, even on error
        step = steered.interventions[0]
        for strength, rho in cond.points():
            if rho is not None:
                strength = _strength_at(rho, step, artifact, cond)
            steered.set_strength(float(strength))  # cheap: no hook moves
            run(steered, cond, float(strength), rho)
            bar.update(1)


def _strength_at(rho: float, step: Any, artifact: Any, cond: Condition) -> float:
    """The strength at which the condition adds ``rho`` times the mean hidden-state norm."""
    calibration = getattr(artifact, "calibration", None) or {}
    key = "mean_norm_raw" if cond.method == "vector" else "mean_norm"
    if step.added is None or key not in calibration:
        raise ValueError(
            f"Condition {cond.name!r} is placed by norm fraction, which needs an additive method "
            "(add, vector, or clamp with preserve_error) and scores fitted by this version of "
            "hf_sae_steer (they record the mean norms); give strengths instead."
        )
    return strength_for(rho, step.added.double().cpu(), float(calibration[key]))


def _control(cond: Condition, artifact: Any, sae: SAE | None, seed: int) -> dict[str, Any]:
    """Random latents with the artifact's weights, or a random vector of its vector's norm."""
    if cond.control is None:
        return {}
    g = torch.Generator().manual_seed(seed + 7919)
    if cond.control == "random_latents":
        chosen = artifact.latent_weights() if artifact is not None else None
        if chosen is None or sae is None:
            raise ValueError("The random-latents control needs scores fitted with mean_diff.")
        latents, weights = chosen
        pool = torch.ones(sae.d_sae).index_fill_(0, latents, 0.0)  # never the chosen ones
        random = torch.multinomial(pool, len(latents), replacement=False, generator=g)
        return {"latents": SparseCode(random, weights)}
    delta = artifact.stats.get("delta_raw") if artifact is not None else None
    if delta is None:
        raise ValueError("The random-vector control needs scores fitted with mean_diff.")
    direction = torch.randn(delta.numel(), generator=g)
    return {"vector": direction * (delta.float().norm() / direction.norm())}


def _mean_difference(artifact: Any, cond: Condition) -> Tensor:
    delta = artifact.stats.get("delta_raw") if isinstance(artifact, FeatureScores) else None
    if delta is None:
        raise ValueError(
            f"Condition {cond.name!r} ablates the mean difference of scores {cond.scores!r}, "
            "which need to be fitted with rule='mean_diff' by this version of hf_sae_steer."
        )
    return delta


def _artifacts(scores: Scores | Mapping[str, Scores] | None) -> dict[str, Any]:
    if scores is None:
        return {}
    items = dict(scores) if isinstance(scores, Mapping) else {"default": scores}
    return {k: load_scores(v) if isinstance(v, str | Path) else v for k, v in items.items()}


def _check(conditions: Sequence[Condition], artifacts: dict[str, Any], sae: SAE | None) -> None:
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"Condition names must be unique, got {names}.")
    for c in conditions:
        if c.method not in (None, "sae") and c.scores not in artifacts:
            raise ValueError(
                f"Condition {c.name!r} steers with scores {c.scores!r}, which were not given "
                f"(have: {sorted(artifacts) or 'none'})."
            )
        if c.baseline == "ablation" and c.scores not in artifacts:
            raise ValueError(f"Condition {c.name!r} ablates the direction of scores {c.scores!r}, "
                             f"which were not given (have: {sorted(artifacts) or 'none'}).")
        if c.method is not None and c.method != "vector" and sae is None:
            raise ValueError(f"Condition {c.name!r} needs an SAE.")


def _has(conditions: Sequence[Condition], baseline: str) -> bool:
    return any(c.baseline == baseline for c in conditions)


def _describe(scores: Any) -> dict[str, Any] | None:
    if not isinstance(scores, FeatureScores):
        return None
    return {
        "rule": scores.rule,
        "recommended": scores.recommended and scores.recommended.to_json(),
        "fit_seconds": scores.options.get("fit_seconds"),
        "coverage": scores.coverage,
    }


def _embedder_for(embedder: Embedder | None, scores: Any) -> tuple[Any, str]:
    """The given embedder, else the one the scores were fitted with, else the default."""
    if embedder is not None:
        return load_embedder(embedder, None)
    name = getattr(scores, "embedder", None) or DEFAULT_EMBEDDER
    try:
        return load_embedder(name, None)
    except Exception as err:  # e.g. the scores were fitted with a plain callable
        raise ValueError(
            f"Cannot load the embedder the scores were fitted with ({name!r}); pass embedder=."
        ) from err
