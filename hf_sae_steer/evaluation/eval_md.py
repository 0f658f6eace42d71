"""``EVAL.md``: the evaluation of the demo assets written out as a report. Every number, and every
sentence of the findings, is computed from the rows, so the report is regenerated, never edited.

What the evaluation runs is :mod:`~hf_sae_steer.evaluation.demo_eval`; the tables are
:mod:`~hf_sae_steer.evaluation.eval_tables`; :func:`write_eval_md` writes the report. Its
verdicts and findings are the cross-source judge's; the same-source classifier's are §6.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import torch

from hf_sae_steer.evaluation.conditions import FINETUNE_EPOCHS
from hf_sae_steer.evaluation.demo_eval import (
    RECOMMENDED,
    V02_FIT,
    V02_LABEL,
    V02_NORM_FRACTION,
    demo_conditions,
)
from hf_sae_steer.evaluation.eval_tables import (
    MAX_RATIO,
    at_ratio,
    controls_section,
    curve_table,
    examples,
    fmt,
    matched_section,
    paired_difference,
    verdicts,
)
from hf_sae_steer.evaluation.judges import JUDGE_FILE, NEGATIVES_FILE
from hf_sae_steer.evaluation.matched import against_point, curves
from hf_sae_steer.evaluation.result import PAIRED, EvalResult, ci
from hf_sae_steer.scores.record import FeatureScores
from hf_sae_steer.steering.strength import NORM_FRACTION

__all__ = ["against_v02", "at_ratio", "demo_conditions", "write_eval_md"]

JUDGE_TITLES = {
    "relevance_centroid": "Δ cosine to the cross-source judge's centroid",
    "p_topic": "Δ P(topic) (cross-source judge)",
}


def against_v02(result: EvalResult, rho: float, judge: str) -> list[str]:
    """Finding lines: the default (the recommended steering at norm fraction ``rho``) against
    0.2's default (at 0.5) on ``P(topic)`` as ``judge`` measures it: both gains and perplexity
    ratios, their paired difference, and the default's curve read at 0.2's perplexity."""
    new = result.row(RECOMMENDED, norm_fraction=rho)
    old = result.row(V02_LABEL, norm_fraction=V02_NORM_FRACTION)
    own = paired_difference(result, (RECOMMENDED, rho), (V02_LABEL, V02_NORM_FRACTION), "p_topic")
    c = result.config
    matched = against_point(
        curves(result.samples, [RECOMMENDED, V02_LABEL]), V02_LABEL, V02_NORM_FRACTION,
        n_boot=c["n_boot"], seed=c["seed"],
    )  # fmt: skip
    at = next(r for r in matched if r["label"] == RECOMMENDED and r["measure"] == "p_topic")
    gain = f"Δ P(topic) {ci(new, 'p_topic_delta', signed=True)} at " \
           f"{ci(new, 'perplexity_ratio', 2)}× orig's perplexity"  # fmt: skip
    lines = [
        f"- **The default against 0.2's default** ({judge}): the default (`{RECOMMENDED}`, ρ = "
        f"{rho:g}) {gain}; 0.2's default (`{V02_LABEL}`, ρ = {V02_NORM_FRACTION:g}) Δ P(topic) "
        f"{ci(old, 'p_topic_delta', signed=True)} at {ci(old, 'perplexity_ratio', 2)}×. Paired, "
        f"default minus 0.2's default at these points: {fmt(own)}."
    ]
    cheaper = new["perplexity_ratio"] <= old["perplexity_ratio"]
    own_where = f"there (its point costs {'no more' if cheaper else 'more'} perplexity than 0.2's)"
    if math.isnan(at["gain"]):
        lines.append(
            f"- The default's curve does not reach 0.2's default's perplexity "
            f"({at['ratio']:.2f}×), so they are compared at their own points only, and "
            + _verdict(own, own_where)
        )
        return lines
    diff = (at["diff"], at["diff_lo"], at["diff_hi"])
    lines.append(
        f"- At matched perplexity (the default's curve read at 0.2's default's "
        f"{at['ratio']:.2f}×): the default gains {fmt((at['gain'], at['gain_lo'], at['gain_hi']))} "
        f"against 0.2's {fmt((at['ref_gain'], at['ref_gain_lo'], at['ref_gain_hi']))}, a paired "
        f"difference of {fmt(diff)}: " + _verdict(diff, "at 0.2's default's perplexity")
        + " At their own points, " + _verdict(own, own_where)
    )
    return lines


def _verdict(diff: tuple[float, float, float], where: str) -> str:
    """One sentence: is the default weaker than 0.2's default by ``diff`` (default minus 0.2's,
    with its interval)?"""
    m, lo, hi = diff
    if hi < 0:
        return f"**the default is weaker than 0.2's default** {where}."
    if lo > 0:
        return f"the default is stronger than 0.2's default {where}."
    caveat = (
        "no interval: the curve misses that perplexity in some resamples"
        if math.isnan(lo) else "the interval includes 0"
    )  # fmt: skip
    if m < 0:
        return f"**the default is weaker than 0.2's default by point estimate** {where} ({caveat})."
    return (f"the default is at least as strong as 0.2's default {where} by point estimate "
            f"({caveat}).")  # fmt: skip


def judge_setup(result: EvalResult, same: EvalResult, topics: Path, show: Any) -> list[str]:
    """The Setup lines that say how the two judges were built and how far to trust them."""
    c, j = result.config, result.config["judge"]
    meta_path = topics / "judges.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    source = meta.get("source", "dictionary definitions")
    pos, neg = j["examples"]
    held, transfer = j["heldout_examples"], j["transfer_examples"]
    return [
        f"- Two judges of the topic, each a **P(topic)** (a logistic regression on the "
        f"continuation's {c['embedder']} embedding) and a **cosine** (to the centroid of its "
        "positives); the cosine alone rewards word salad made of topical pieces, the classifier "
        "asks whether the text reads like the topic.",
        f"  - **Cross-source (every verdict and finding below)**: trained on {pos} definitions "
        f"about the topic (`{show(topics / j['topic'] / JUDGE_FILE)}`) against {neg} definitions "
        f"of other topics (`{show(topics / NEGATIVES_FILE)}`), from {source}: a source and style "
        f"the fit texts never had. AUC: cross-validated {j['cv_auc']:.3f}, on {held[0]} + "
        f"{held[1]} held-out definitions **{j['heldout_auc']:.3f}**, and telling the "
        f"{transfer[0]} alignment texts from the {transfer[1]} reference texts (a source it was "
        f"not trained on) **{j['transfer_auc']:.3f}**.",
        f"  - **Same-source (second measure, §6)**: trained on the "
        f"{same.config['classifier_examples'][0]} alignment texts (the fit texts) against the "
        f"{same.config['classifier_examples'][1]} reference texts, cosine to the alignment "
        f"centroid (cross-validated AUC {same.config['classifier_cv_auc']:.3f}). It shares the "
        "fit texts' source and gloss style, so a steering can score on it by reproducing the "
        "style.",
        "- Fluency: perplexity of the continuation under the unsteered model (geometric mean; "
        "the ratio to orig is paired).",
    ]


def write_eval_md(
    result: EvalResult,
    scores: dict[str, FeatureScores],
    *,
    same_source: EvalResult,
    demo: Path,
    command: str,
    seconds: float,
    threads: int,
    root: Path | None = None,
    topics: Path | None = None,
) -> str:
    """EVAL.md for an evaluation of the demo assets in ``demo`` (``scores``: the artifacts by
    condition key; ``result`` judged by the cross-source judge, ``same_source`` the same
    continuations judged by the classifier trained on the fit texts, as
    :func:`~hf_sae_steer.evaluation.demo_eval.evaluate_demo` returns them): setup, findings
    computed from the rows, caveats, the table and examples. ``command`` reproduces it;
    ``topics`` is the folder of the judge's texts (default ``storage/topics`` under ``root``)."""
    root = root or demo.parent.parent
    topics = topics or root / "storage" / "topics"
    c = result.config
    info_path = demo / "build_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    tuning_path = demo / "tuning.json"
    tuning = json.loads(tuning_path.read_text()) if tuning_path.exists() else {}
    lm, sae_info = info.get("lm", {}), info.get("sae", {})
    main = scores["default"]
    rec = main.recommended or {}
    report = main.report()
    rho = rec.get("norm_fraction") or NORM_FRACTION
    works, fails = verdicts(result)
    same_works, same_fails = verdicts(same_source)
    orig = result.row("orig")
    add = result.row(RECOMMENDED, norm_fraction=rho)
    fit_s = main.options.get("fit_seconds")
    ft = result.curve("fine-tuning")
    steering = [RECOMMENDED, V02_LABEL, "vector (CAA)", "clamp (support rule)"]
    reference = ["swap (reference)", "swap+err (reference)", "clamp +10 (reference)",
                 "weight (reference)"]  # fmt: skip
    baselines = ["prefix", "fine-tuning"]
    controls = ["random latents", "random vector"]
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in c["seconds"].items())
    v02_rule = ", ".join(f"{k}={v}" for k, v in V02_FIT.items() if k != "rule")

    def show(path: Path) -> str:
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    def versus(label: str) -> str:
        pair = ((RECOMMENDED, rho), (label, rho))
        cells = [fmt(paired_difference(result, *pair, m)) for m in PAIRED]
        return f"Δ cosine {cells[0]}, Δ P(topic) {cells[1]}"

    text = [
        "# Steering evaluation on the demo assets",
        "",
        f"Generated by `{command}` in **{seconds / 60:.1f} min** on {threads} CPU thread(s) "
        f"({platform.machine()}, torch {torch.__version__}; {timing}); regenerate rather than "
        "edit.",
        "",
        "## Setup",
        "",
        f"- Model `{show(demo / 'model')}`: GPT-2 architecture, {lm.get('params', 0):,} "
        f"parameters, held-out perplexity {lm.get('lm_ppl', math.nan):.1f}. SAE "
        f"`{show(demo / 'sae')}`: TopK, layer {c['layer']} `{c['site']}`, d_sae "
        f"{sae_info.get('d_sae', '?')}, k {sae_info.get('k', '?')}, held-out FVU "
        f"{sae_info.get('fvu', math.nan):.3f}.",
        f"- Scores: `scores/` (`rule=\"{main.rule}\"`, the default; its chosen latents reproduce "
        f"{_pct(report.delta_explained)} of the alignment-minus-reference direction; recommended "
        f"steering `{rec.get('method')}` at strength {rec.get('strength', math.nan):.3g}, i.e. "
        f"norm fraction ρ = {rho:g}), `scores_seed/` (`rule=\"seed\"`, the reference rule "
        "exactly), and fitted for this run on the same alignment and reference texts: the "
        f"`support` rule and **0.2's default** (`rule=\"{V02_FIT['rule']}\"`, {v02_rule}; "
        f"`{V02_LABEL}` adds its latents keeping the SAE error, 0.2's point being ρ = "
        f"{V02_NORM_FRACTION:g}).",
        f"- **{c['n_prompts']} held-out prompts** (`eval_prompts.txt`, neutral openings in none of "
        f"the other sets) × {c['samples']} sampled continuations of up to {c['max_new_tokens']} "
        f"tokens (temperature {c.get('temperature', 0)}, top-k {c.get('top_k', '-')}). Nothing "
        "was chosen on them: "
        + (f"the strength was calibrated on the neutral calibration prompts ({rec['why']})"
           if rec.get("calibrated") else "the norm fraction ρ was chosen on `tune_prompts.txt`"
           + (f" ({tuning['rule']}; chose {tuning['chosen']:g})" if tuning else ""))
        + ". Sample j of a prompt uses the same seed under every condition, so every "
        "comparison is paired.",
        *judge_setup(result, same_source, topics, show),
        "- Controls at equal norm: `random latents` adds random decoder rows with the recommended "
        "latents' weights, `random vector` a random direction with the steering vector's norm, "
        "each at the same norm fraction as what it controls. Baselines: `prefix` puts the most "
        f"typical alignment text before the prompt (“{c.get('prefix')}”) and scores the "
        "continuation only; `fine-tuning` trains the whole model on the alignment texts "
        "(AdamW, lr 5e-4, batch 8).",
        f"- A condition **steers** at a point when both paired gains (the cross-source judge's) "
        f"have 95% intervals above 0 at no more than {MAX_RATIO:g}× orig's perplexity. "
        f"Intervals: percentile bootstrap ({c['n_boot']} resamples) over prompts.",
        "",
        "![paired gains against perplexity, cross-source judge](eval_plot.png)",
        "",
        "## Findings",
        "",
        "Every finding here is the cross-source judge's; the same-source classifier's are in §6.",
        "",
        f"- **Steers**: {', '.join(works) or 'nothing'}.",
        f"- **Does not steer**: {', '.join(fails) or 'nothing'}.",
        f"- The default (`scores/`, {rec.get('method')} at ρ = {rho:g}): Δ cosine "
        f"{ci(add, 'relevance_centroid_delta', signed=True)}, Δ P(topic) "
        f"{ci(add, 'p_topic_delta', signed=True)}, at {ci(add, 'perplexity_ratio', 2)}× the "
        f"unsteered perplexity (orig: cosine {orig['relevance_centroid']:.3f}, P(topic) "
        f"{orig['p_topic']:.3f}, perplexity {orig['perplexity']:.1f}).",
        *against_v02(result, rho, "cross-source judge"),
        "- Against its control at the same norm (random latents, same weights): "
        + versus("random latents") + ".",
        "- Against a plain steering vector (CAA) at the same norm: "
        + versus("vector (CAA)") + " (add minus vector).",
        f"- Scoring took {fit_s:.1f} s; fine-tuning took {ft[-1]['train_seconds']:.1f} s for "
        f"{ft[-1]['strength']:g} epochs (Δ P(topic) {ci(ft[-1], 'p_topic_delta', signed=True)} "
        f"at {ci(ft[-1], 'perplexity_ratio', 2)}× perplexity)."
        if ft and fit_s is not None
        else "- (no fine-tuning baseline in this run)",
        "",
        "### 1. The steerings, point by point",
        "",
        *curve_table(result, steering),
        "",
        "### 2. Controls at equal norm",
        "",
        "Each row: the steering minus its random control at the same norm fraction, paired by "
        "prompt and seed. A steering that only works because it perturbs the stream would be "
        "matched by its control.",
        "",
        *curve_table(result, controls),
        "",
        *controls_section(result),
        "",
        "### 3. The reference method and rule",
        "",
        "The reference's methods with the reference rule's scores (`scores_seed/`), at strength "
        "1 as published (`clamp` with the reference's +10 on 5 latents):",
        "",
        *curve_table(result, reference),
        "",
        "The reference rule's uncertainty report says why: "
        + " ".join(scores["seed"].report().warnings),
        "",
        "### 4. Baselines",
        "",
        *curve_table(result, baselines),
        "",
        *[f"- fine-tuning, {r['strength']:g} epochs: {r['train_seconds']:.1f} s of training"
          for r in ft],  # fmt: skip
        "",
        "### 5. At matched perplexity",
        "",
        "Paired gains interpolated to the same fluency cost (linear in log perplexity between "
        "neighbouring points, orig as the origin; '–' where a curve does not reach that cost).",
        "",
        *matched_section(result, steering + controls + ["fine-tuning"]),
        "",
        "### 6. The same-source measure",
        "",
        "The same continuations judged by the classifier trained on the alignment texts against "
        "the reference texts, and the cosine to the alignment centroid: the measure of the "
        "earlier reports. It shares the fit texts' source, so read it beside the cross-source "
        "judge, not instead of it.",
        "",
        f"- **Steers** (same-source): {', '.join(same_works) or 'nothing'}.",
        f"- **Does not steer** (same-source): {', '.join(same_fails) or 'nothing'}.",
        *against_v02(same_source, rho, "same-source classifier"),
        "",
        *curve_table(same_source, steering + controls + baselines),
        "",
        *matched_section(same_source, steering + controls + ["fine-tuning"]),
        "",
        "## Caveats",
        "",
        "- Both judges read sentence embeddings of short continuations and are trained on whole "
        "texts, so their probabilities on 32-token continuations are lower than on the texts "
        "themselves (the cross-source judge's most: its texts are dictionary definitions, not "
        "the demo model's glosses). Compare conditions, not levels.",
        "- Perplexity under the unsteered model penalises any change of topic a little, since the "
        "model did not expect it; compare at matched perplexity (§5).",
        f"- A {lm.get('params', 0) / 1e6:.1f}M-parameter model trained on WordNet glosses with a "
        f"{sae_info.get('d_sae', '?')}-latent SAE: what holds here need not hold for a real "
        "model, in either direction.",
        "",
        "## Table",
        "",
        "Cosine and P(topic) are the cross-source judge's (the same-source ones are in "
        "`eval_table.csv`, prefixed `same_source_`).",
        "",
        result.to_markdown(),
        "Machine-readable: `eval_table.csv` beside this file.",
        "",
        f"## Examples (sample 0; additive steerings at ρ = {rho:g}, 0.2's default at ρ = "
        f"{V02_NORM_FRACTION:g}; fine-tuning at {max(FINETUNE_EPOCHS)} epochs)",
        *examples(result, ["orig", *steering, *reference[:1], *baselines], rho,
                  points={V02_LABEL: V02_NORM_FRACTION}),  # fmt: skip
        "",
    ]
    return "\n".join(text)


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.0%}"
