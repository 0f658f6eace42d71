"""Fitting feature scores from an alignment set (``docs/method.md`` §3, §6): :func:`fit_scores`,
also ``FeatureScores.fit``.

Scoring walks forward once per set (:mod:`~hf_sae_steer.scoring.walk.accumulation`): embed the
(small) alignment set and run it to the site, then read the reference set as a stream, in
chunks: embed a chunk, take each prompt's distance to the alignment set, run the model only up
to the hooked site, encode with the SAE and add to the sums
(:class:`~hf_sae_steer.scoring.walk.passes.ScoringSums`). Under ``torchrun`` / ``accelerate launch``
the processes share the prompts and add up their sums; a checkpoint lets a run resume. A
selection rule turns the sums into scores; memory is bounded by a chunk and ``d_sae``, not by
the size of the reference set.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hf_sae_steer.data.embedders import DEFAULT_EMBEDDER, Embedder, load_embedder
from hf_sae_steer.data.prompts import hash_prompts, load_prompts
from hf_sae_steer.data.sources import open_prompts
from hf_sae_steer.distributed import World, all_gather_json, current_world
from hf_sae_steer.models import (
    context_length,
    model_device,
    model_id,
    module_device,
    weights_dtype,
    weights_fingerprint,
)
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scores import record
from hf_sae_steer.scoring.away import AWAY_PROMPTS, calibrate_away
from hf_sae_steer.scoring.calibration import CALIBRATION_PROMPTS, CalibrationRun, run_calibration
from hf_sae_steer.scoring.checks import (
    check_alignment,
    check_calibration,
    check_options,
    checkpointing,
)
from hf_sae_steer.scoring.from_sums import from_sums
from hf_sae_steer.scoring.rules import DEFAULT_RULE, Rule, get_rule
from hf_sae_steer.scoring.rules.objective import TopicMargin
from hf_sae_steer.scoring.walk.accumulation import ScoringWalk
from hf_sae_steer.scoring.walk.passes import (
    ProgressCallback,
    PromptPasses,
    Summary,
)
from hf_sae_steer.sites.layouts import find_layout
from hf_sae_steer.sites.resolve import resolve_site
from hf_sae_steer.steering.effect import SteeringEffect, effect_of
from hf_sae_steer.steering.live import live_steerings, steering_suspended
from hf_sae_steer.steering.strength import NORM_FRACTION


def fit_scores(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    *,
    layer: int | None = None,
    site: str | None = None,
    reference: Any,
    alignment: Any,
    rule: Rule = DEFAULT_RULE,
    k: int | None = None,
    prior_prompts: float | None = None,
    rule_options: Mapping[str, Any] | None = None,
    norm_fraction: float = NORM_FRACTION,
    calibrate_strength: bool = True,
    measure_effect: bool = True,
    target_ratio: float | None = None,
    calibration_prompts: Sequence[str] = CALIBRATION_PROMPTS,
    seed: int = 0,
    summary: Summary = "avg",
    skip_first_token: bool = True,
    embedder: Embedder = DEFAULT_EMBEDDER,
    batch_size: int = 16,
    max_length: int | None = None,
    embed_max_seq_length: int | None = None,
    report_max_tokens: int | None = 256,
    device: str | torch.device | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool | ProgressCallback = True,
) -> record.FeatureScores:
    """Score every latent of ``sae`` for steering towards ``alignment``.

    >>> scores = fit_scores(model, tok, sae, layer=9, site="resid_post",  # doctest: +SKIP
    ...                     reference=load_prompts("ref.csv"),
    ...                     alignment=load_prompts("med.csv"))
    >>> scores.recommended, scores.report()

    ``rule`` picks the selection rule (:mod:`~hf_sae_steer.scoring.rules`): ``"mean_diff"``
    (``k`` latents fitted to the mean difference, 10 by default), ``"output"`` (the same over
    the rows that raise the topic's likelihood), ``"trained"`` (weights fitted by gradient on
    the output; ``rule_options`` such as ``objective``, ``steps``, ``l1``), ``"support"``
    (``prior_prompts``, 5 by default) or ``"seed"``, the reference rule exactly. The artifact
    records the steering its rule recommends. An additive one (``add``) is calibrated on
    ``calibration_prompts`` (neutral openings): its strength is the largest whose perplexity
    ratio to the unsteered model stays under ``target_ratio`` (default 1.5), and the measured
    curve is kept (:mod:`~hf_sae_steer.scoring.calibration`); ``calibrate_strength=False`` sets
    it by norm fraction ``norm_fraction`` instead (:mod:`~hf_sae_steer.steering.strength`;
    ``target_ratio`` is then refused). The calibration's options are checked before any work.
    ``seed`` makes the trained rule and the calibration's sampling reproducible. ``measure_effect``
    records what the recommended steering does in words, ``record.effect`` (the tokens it raises
    and lowers most: two full forward passes over 16 neutral prompts and a logit lens,
    :mod:`~hf_sae_steer.steering.effect`).

    ``layer``/``site`` default to where the SAE was trained
    (:func:`~hf_sae_steer.sites.resolve.resolve_site`). ``alignment`` takes anything
    :func:`~hf_sae_steer.data.prompts.load_prompts` does; ``reference`` also takes a stream
    (:func:`~hf_sae_steer.data.sources.open_prompts`: large local files, a ``datasets``
    ``IterableDataset``), read a chunk at a time. ``embedder`` is a
    sentence-transformers id or path, a ``SentenceTransformer``, or any callable
    ``list[str] -> Tensor[n, dim]`` (used as is). Prompts longer than ``max_length`` (default:
    the model's context) are scored in windows of that length, each a fresh sequence. The
    alignment statistics (FVU, latents firing, its mean hidden state) read the first
    ``report_max_tokens`` tokens of each alignment text (``None``: all): about what the embedder
    reads. The SAE runs on ``device`` (default: beside its block, ``device_map="auto"`` too).

    ``progress``: a bar (True), none (False), or a callable ``progress(phase, done, total)``
    (:data:`~hf_sae_steer.scoring.walk.passes.ProgressCallback`); an exception raised from it stops
    the fit and leaves the model as it was.

    Under ``torchrun`` or ``accelerate launch`` the processes share the prompts (prompt ``i``
    to rank ``i mod world_size``) and add up their sums, and share the calibration's batches;
    every rank returns the same record. ``options`` records ``fit_seconds``, and for a
    calibrated fit ``calibration_seconds`` and ``calibration_tokens`` (the LM tokens it
    generated and scored; per process in ``options["processes"]`` under a launcher).
    ``checkpoint`` (a file) receives the sums every ``checkpoint_every`` reference prompts
    (default 1,024) and at the end; ``resume=True`` continues from it and gives the same
    scores as an uninterrupted run. An existing checkpoint is never overwritten otherwise; one
    run at a time holds it, and a damaged, crafted or foreign one raises
    :class:`~hf_sae_steer.scoring.walk.checkpoint.CheckpointError` (``docs/scaling.md``).
    """
    options_of_rule = check_options(
        rule, summary=summary, k=k, prior_prompts=prior_prompts, norm_fraction=norm_fraction,
        d_sae=sae.d_sae, rule_options=rule_options,
    )  # fmt: skip
    target_ratio = check_calibration(calibrate_strength, target_ratio, calibration_prompts)
    saving = checkpointing(checkpoint, checkpoint_every, resume)
    started = time.perf_counter()
    source, alignment = open_prompts(reference), check_alignment(load_prompts(alignment))
    layout = find_layout(model)
    where = resolve_site(layout, layer, site, trained=sae.cfg)
    inputs_on = model_device(model)
    beside = module_device(layout.blocks[where.layer]) or inputs_on
    sae_on = torch.device(device) if device is not None else beside
    world = current_world(cpu=sae_on.type == "cpu")
    passes = PromptPasses(
        model,
        tokenizer,
        layout,
        where,
        sae.placed(sae_on, torch.float32),
        inputs_on,
        skip_first=skip_first_token,
        batch_size=batch_size,
        max_length=max_length or context_length(model, tokenizer),
        progress=False,  # the walk shows one bar, on rank 0
    )
    embed_model, embedder_name = load_embedder(embedder, sae_on)
    options = {
        "skip_first_token": skip_first_token,
        "max_length": passes.max_length,
        "embed_max_seq_length": embed_max_seq_length,
        "report_max_tokens": report_max_tokens,
    }
    run = {
        "sae_fingerprint": sae.fingerprint(), "d_in": sae.d_in, "d_sae": sae.d_sae,
        "layer": where.layer, "site": where.kind, "summary": summary, "embedder": embedder_name,
        **options, "alignment_size": len(alignment), "alignment_hash": hash_prompts(alignment),
    }  # fmt: skip
    if saving is not None:  # the weights, not the path: a checkpoint resumes only its model
        run.update(model_fingerprint=weights_fingerprint(model), model_dtype=weights_dtype(model))
    walk = ScoringWalk(
        passes,
        embed_model,
        summary,
        world,
        run=run,
        embed_max_seq_length=embed_max_seq_length,
        report_max_tokens=report_max_tokens,
        checkpoint=saving,
        progress=progress,
    )
    was_training = model.training
    model.eval()  # dropout would make the summaries random
    try:
        with steering_suspended(model):  # score the base model
            with torch.inference_mode():
                done = walk(source, alignment)
            margin = None
            if get_rule(rule).needs_margin:
                margin = TopicMargin(
                    model, tokenizer, layout, where, passes.sae, alignment,
                    _reference_sample(reference), seed=seed, rule=rule,
                )  # fmt: skip
            if done.resumed_at:
                options["resumed_at"] = done.resumed_at
            if done.per_process is not None:  # what each process passed: prompts were shared
                options["processes"] = {
                    "count": world.size,
                    "reference_prompts": [counts[0] for counts in done.per_process],
                    "alignment_prompts": [counts[1] for counts in done.per_process],
                }
            if callable(progress):
                progress("rule", 0, None)
            record = from_sums(
                done.sums, sae, rule=rule, rule_options=options_of_rule, margin=margin,
                norm_fraction=norm_fraction, warn=world.is_main, layer=where.layer,
                alignment_texts=(len({text.strip() for text in alignment}), len(alignment)),
                site=where.kind, summary=summary, model_id=model_id(model),
                embedder=embedder_name, reference_hash=done.reference_hash,
                alignment_hash=hash_prompts(alignment), options=options,
                record_class=FeatureScores,
            )  # fmt: skip
            if calibrate_strength and record.recommended and record.recommended.norm_fraction:
                if callable(progress):
                    progress("calibrate", 0, None)
                try:
                    done_calibrating = run_calibration(
                        model, tokenizer, sae, record, target_ratio=target_ratio,
                        prompts=calibration_prompts, seed=seed, world=world,
                    )  # fmt: skip
                except ValueError as error:  # e.g. no room in a tiny context
                    warnings.warn(
                        f"The strength was not calibrated ({error}); the recommended one is "
                        f"that of norm fraction {norm_fraction:g}.",
                        stacklevel=2,
                    )
                else:
                    fluency = done_calibrating.fluency
                    record.calibration.fluency = fluency
                    record.recommended = record.recommended.calibrated_to(fluency)
                    _record_calibration_cost(record.options, done_calibrating, world)
            if calibrate_strength and record.recommended_away is not None:
                _calibrate_away(
                    model, tokenizer, sae, record, alignment,
                    neutral=list(calibration_prompts)[:AWAY_PROMPTS], seed=seed, world=world,
                )  # fmt: skip
            if measure_effect:
                record.effect = _effect_in_words(model, tokenizer, sae, record)
    finally:
        model.train(was_training)
    record.options["fit_seconds"] = time.perf_counter() - started
    return record


def _record_calibration_cost(options: dict[str, Any], run: CalibrationRun, world: World) -> None:
    """What the calibration cost: its seconds and LM tokens (all processes'), and under a
    launcher each process's tokens beside its prompt counts."""
    tokens = all_gather_json(run.tokens, world)
    options["calibration_seconds"] = run.seconds
    options["calibration_tokens"] = sum(tokens)
    if "processes" in options:
        options["processes"]["calibration_tokens"] = tokens


def _calibrate_away(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    scores: record.FeatureScores,
    alignment: Sequence[str],
    *,
    neutral: Sequence[str],
    seed: int,
    world: Any = None,
) -> None:
    """The recommended suppression's strength, measured (``docs/method.md`` §9); a warning and
    the uncalibrated strength 1 where it cannot be."""
    try:
        if live_steerings(model):  # measuring needs the model to ourselves
            raise ValueError("the model is steered now; remove its SteeredModel to calibrate")
        away = calibrate_away(
            model, tokenizer, sae, scores, neutral=neutral, alignment=alignment, seed=seed,
            world=world,
        )  # fmt: skip
    except ValueError as error:
        warnings.warn(
            f"The suppression's strength was not calibrated ({error}); it stays at 1.",
            stacklevel=3,
        )
        return
    scores.calibration.away = away
    rec = scores.recommended_away
    scores.recommended_away = dataclasses.replace(
        rec,  # type: ignore[arg-type]
        strength=away.strength,
        calibrated=True,
        why=(
            f"the largest strength under which the unsteered model's continuations of "
            f"{away.neutral_prompts} neutral prompts stay under {away.target_ratio:g}x their "
            "unsteered perplexity (teacher-forced)"
        ),
    )


def _effect_in_words(
    model: nn.Module, tokenizer: Any, sae: SAE, scores: record.FeatureScores
) -> SteeringEffect | None:
    """What the recommended steering does in words (``docs/method.md`` §4): two forward passes
    over a few neutral prompts and a logit lens. None, with a warning, where it cannot be
    measured (the model is steered now, or has no LM head)."""
    why = "the model is steered now" if live_steerings(model) else None
    if why is None:
        try:
            return effect_of(model, tokenizer, sae, scores=scores)
        except ValueError as error:
            why = str(error)
    warnings.warn(f"The effect in words was not measured ({why}).", stacklevel=3)
    return None


def _reference_sample(reference: Any, n: int = 256) -> list[str]:
    """The first ``n`` reference prompts, read again for the rules that read the output."""
    try:
        sample = list(itertools.islice(iter(open_prompts(reference)), n))
    except ValueError:  # a one-shot iterator, read to its end by the walk
        sample = []
    if not sample:
        raise ValueError(
            "The output and trained rules read the reference prompts a second time: pass a list, "
            "a file or a dataset, not a one-shot iterator."
        )
    return sample


class FeatureScores(record.FeatureScores):
    """The score record (:class:`hf_sae_steer.scores.record.FeatureScores`) with its fitting
    constructor: ``FeatureScores.fit(model, tokenizer, sae, ...)`` is :func:`fit_scores`."""

    # Not a wrapper: warnings from the fit then point at the caller's line.
    fit = staticmethod(fit_scores)
