"""``EVAL.md``: the evaluation of the demo assets written out as a report. Every number, and every
sentence of the findings, is computed from the rows, so the report is regenerated, never edited.

:func:`demo_conditions` is what the demo's evaluation compares; :func:`write_eval_md` writes it.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import torch

from hf_sae_steer.evaluation.conditions import FINETUNE_EPOCHS, NORM_FRACTIONS, Condition
from hf_sae_steer.evaluation.metrics import bootstrap_ci
from hf_sae_steer.evaluation.result import PAIRED, EvalResult, ci, point, steers
from hf_sae_steer.scores.record import FeatureScores
from hf_sae_steer.steering.strength import NORM_FRACTION

MAX_RATIO = 2.0  # the fluency budget of a "works" verdict: at most 2x orig's perplexity
MATCHED = (1.25, 1.5, 2.0)
NAMES = {"relevance_centroid": "Δ cosine", "p_topic": "Δ P(topic)"}


def demo_conditions(recommended_fraction: float | None = None) -> list[Condition]:
    """The demo's comparison: the recommended steering and its random control, a steering
    vector (CAA) and its control, the support rule, the reference's methods, and two baselines.
    Artifacts: ``default`` (the default rule), ``seed`` (the reference rule), ``support``. The
    additive curves include the recommended (calibrated) norm fraction, so the recommended
    steering and its controls are compared at exactly that point."""
    extra = [recommended_fraction] if recommended_fraction else []
    rhos = tuple(sorted({*NORM_FRACTIONS, *extra}))
    return [
        Condition("orig"),
        Condition("add (recommended)", "add", preserve_error=True, norm_fractions=rhos),
        Condition("random latents", "add", preserve_error=True, norm_fractions=rhos,
                  control="random_latents"),
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


def paired_difference(
    result: EvalResult, a: tuple[str, float | None], b: tuple[str, float | None], measure: str
) -> tuple[float, float, float]:
    """``a - b`` on ``measure``, paired by prompt and sample, bootstrapped over prompts; each of
    ``a``/``b`` is ``(label, norm fraction or None)``."""

    def values(label: str, rho: float | None) -> dict[tuple[int, int], float]:
        return {
            (s["prompt_index"], s["sample"]): s[measure]
            for s in result.samples
            if s["label"] == label and (rho is None or s["norm_fraction"] == rho)
        }

    va, vb = values(*a), values(*b)
    keys = sorted(va.keys() & vb.keys())
    c = result.config
    return bootstrap_ci(
        [va[k] - vb[k] for k in keys], c["n_boot"], c["seed"], groups=[k[0] for k in keys]
    )


def fmt(m_lo_hi: tuple[float, float, float]) -> str:
    return "{:+.3f} [{:+.3f}, {:+.3f}]".format(*m_lo_hi)


def at_ratio(rows: list[dict[str, Any]], ratio: float, measure: str) -> float | None:
    """A curve's paired gain at perplexity ratio ``ratio`` (orig = ratio 1, gain 0), linear in
    log-ratio between the two neighbouring points; None outside the curve's range."""
    points = [(0.0, 0.0)] + [(math.log(r["perplexity_ratio"]), r[f"{measure}_delta"]) for r in rows]
    target = math.log(ratio)
    for (xa, ya), (xb, yb) in zip(points, points[1:], strict=False):
        if min(xa, xb) <= target <= max(xa, xb):
            t = 0.0 if xb == xa else (target - xa) / (xb - xa)
            return ya + t * (yb - ya)
    return None


def verdicts(result: EvalResult) -> tuple[list[str], list[str]]:
    """Conditions with a point that steers (both gains above 0) within the perplexity budget,
    and those without."""
    works, fails = [], []
    for label in dict.fromkeys(r["label"] for r in result.rows if r["label"] != "orig"):
        good = [
            r for r in result.curve(label)
            if steers(r) and r["perplexity_ratio"] <= MAX_RATIO
        ]  # fmt: skip
        (works if good else fails).append(
            f"`{label}` ({', '.join(point(r) for r in good)})" if good else f"`{label}`"
        )
    return works, fails


def curve_table(result: EvalResult, labels: list[str]) -> list[str]:
    lines = [
        "| condition | point | strength | Δ cosine | Δ P(topic) | perplexity × orig's | steers? |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        for r in result.curve(label):
            strength = "–" if r["strength"] is None else f"{r['strength']:.3g}"
            verdict = "yes" if steers(r) and r["perplexity_ratio"] <= MAX_RATIO else "no"
            gains = [ci(r, f"{m}_delta", signed=True) for m in PAIRED]
            lines.append(
                f"| {label} | {point(r)} | {strength} | {gains[0]} | {gains[1]} "
                f"| {ci(r, 'perplexity_ratio', 2)} | {verdict} |"
            )
    return lines


def controls_section(result: EvalResult) -> list[str]:
    lines = [
        "| comparison (paired, same norm) | point | Δ cosine | Δ P(topic) |",
        "|---|---|---|---|",
    ]
    for method, control in (("add (recommended)", "random latents"),
                            ("vector (CAA)", "random vector")):  # fmt: skip
        for r in result.curve(method):
            rho = r["norm_fraction"]
            pair = ((method, rho), (control, rho))
            cells = [fmt(paired_difference(result, *pair, m)) for m in PAIRED]
            lines.append(f"| {method} − {control} | ρ={rho:g} | {cells[0]} | {cells[1]} |")
    return lines


def matched_section(result: EvalResult, labels: list[str]) -> list[str]:
    head = " | ".join(f"{NAMES[m]} at {x:g}× perplexity" for m in PAIRED for x in MATCHED)
    lines = [f"| condition | {head} |", "|---|" + "---|" * (len(PAIRED) * len(MATCHED))]
    for label in labels:
        rows = result.curve(label)
        cells = []
        for m in PAIRED:
            for x in MATCHED:
                got = at_ratio(rows, x, m)
                cells.append("–" if got is None else f"{got:+.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def examples(result: EvalResult, labels: list[str], rho: float, n: int = 3) -> list[str]:
    out = []
    for p in range(n):
        picked = [
            s for s in result.samples
            if s["prompt_index"] == p and s["sample"] == 0 and s["label"] in labels
            and (s["norm_fraction"] in (None, rho))
            and (s["method"] != "finetune" or s["strength"] == max(FINETUNE_EPOCHS))
        ]  # fmt: skip
        if picked:
            out += ["", f"*{picked[0]['prompt']}* …"]
            out += [f"- `{s['label']}`: “{s['continuation'].strip()}”" for s in picked]
    return out


def write_eval_md(
    result: EvalResult,
    scores: dict[str, FeatureScores],
    *,
    demo: Path,
    command: str,
    seconds: float,
    threads: int,
    root: Path | None = None,
) -> str:
    """EVAL.md for an evaluation of the demo assets in ``demo`` (``scores``: the artifacts by
    condition key): setup, findings computed from the rows, caveats, the table and examples.
    ``command`` is what reproduces it."""
    root = root or demo.parent.parent
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
    orig = result.row("orig")
    add = result.row("add (recommended)", norm_fraction=rho)
    fit_s = main.options.get("fit_seconds")
    ft = result.curve("fine-tuning")
    steering = ["add (recommended)", "vector (CAA)", "clamp (support rule)"]
    reference = ["swap (reference)", "swap+err (reference)", "clamp +10 (reference)",
                 "weight (reference)"]  # fmt: skip
    baselines = ["prefix", "fine-tuning"]
    controls = ["random latents", "random vector"]
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in c["seconds"].items())

    def show(path: Path) -> str:
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

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
        "exactly) and the `support` rule fitted for this run.",
        f"- **{c['n_prompts']} held-out prompts** (`eval_prompts.txt`, neutral openings in none of "
        f"the other sets) × {c['samples']} sampled continuations of up to {c['max_new_tokens']} "
        f"tokens (temperature {c.get('temperature', 0)}, top-k {c.get('top_k', '-')}). Nothing "
        "was chosen on them: "
        + (f"the strength was calibrated on the neutral calibration prompts ({rec['why']})"
           if rec.get("calibrated") else "the norm fraction ρ was chosen on `tune_prompts.txt`"
           + (f" ({tuning['rule']}; chose {tuning['chosen']:g})" if tuning else ""))
        + ". Sample j of a prompt uses the same seed under every condition, so every "
        "comparison is paired.",
        f"- Two topic measures. **Cosine**: the continuation's {c['embedder']} embedding against "
        f"the centroid of the {c['n_alignment']} alignment texts. **P(topic)**: a logistic "
        f"regression on the same embeddings, trained to tell the {c['classifier_examples'][0]} "
        f"alignment texts from the {c['classifier_examples'][1]} reference texts "
        f"(cross-validated AUC **{c['classifier_cv_auc']:.3f}**); the cosine alone rewards "
        "word salad made of topical pieces, the classifier asks whether the text reads like the "
        "topic. Fluency: perplexity of the continuation under the unsteered model (geometric "
        "mean; the ratio to orig is paired).",
        "- Controls at equal norm: `random latents` adds random decoder rows with the recommended "
        "latents' weights, `random vector` a random direction with the steering vector's norm, "
        "each at the same norm fraction as what it controls. Baselines: `prefix` puts the most "
        f"typical alignment text before the prompt (“{c.get('prefix')}”) and scores the "
        "continuation only; `fine-tuning` trains the whole model on the alignment texts "
        "(AdamW, lr 5e-4, batch 8).",
        f"- A condition **steers** at a point when both paired gains have 95% intervals above 0 "
        f"at no more than {MAX_RATIO:g}× orig's perplexity. Intervals: percentile bootstrap "
        f"({c['n_boot']} resamples) over prompts.",
        "",
        "![paired gains against perplexity](eval_plot.png)",
        "",
        "## Findings",
        "",
        f"- **Steers**: {', '.join(works) or 'nothing'}.",
        f"- **Does not steer**: {', '.join(fails) or 'nothing'}.",
        f"- The default (`scores/`, {rec.get('method')} at ρ = {rho:g}): Δ cosine "
        f"{ci(add, 'relevance_centroid_delta', signed=True)}, Δ P(topic) "
        f"{ci(add, 'p_topic_delta', signed=True)}, at {ci(add, 'perplexity_ratio', 2)}× the "
        f"unsteered perplexity (orig: cosine {orig['relevance_centroid']:.3f}, P(topic) "
        f"{orig['p_topic']:.3f}, perplexity {orig['perplexity']:.1f}).",
        "- Against its control at the same norm (random latents, same weights): Δ cosine "
        + fmt(paired_difference(result, ("add (recommended)", rho), ("random latents", rho),
                                "relevance_centroid"))
        + ", Δ P(topic) "
        + fmt(paired_difference(result, ("add (recommended)", rho), ("random latents", rho),
                                "p_topic"))
        + ".",
        "- Against a plain steering vector (CAA) at the same norm: Δ cosine "
        + fmt(paired_difference(result, ("add (recommended)", rho), ("vector (CAA)", rho),
                                "relevance_centroid"))
        + ", Δ P(topic) "
        + fmt(paired_difference(result, ("add (recommended)", rho), ("vector (CAA)", rho),
                                "p_topic"))
        + " (add minus vector).",
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
        "## Caveats",
        "",
        "- Both topic measures read sentence embeddings of short continuations; the classifier is "
        "trained on whole alignment and reference texts, so its probabilities on 32-token "
        "continuations are lower than on the texts themselves. Compare conditions, not levels.",
        "- Perplexity under the unsteered model penalises any change of topic a little, since the "
        "model did not expect it; compare at matched perplexity (§5).",
        f"- A {lm.get('params', 0) / 1e6:.1f}M-parameter model trained on WordNet glosses with a "
        f"{sae_info.get('d_sae', '?')}-latent SAE: what holds here need not hold for a real "
        "model, in either direction.",
        "",
        "## Table",
        "",
        result.to_markdown(),
        "Machine-readable: `eval_table.csv` beside this file.",
        "",
        f"## Examples (sample 0; additive steerings at ρ = {rho:g}; fine-tuning at "
        f"{max(FINETUNE_EPOCHS)} epochs)",
        *examples(result, ["orig", *steering, *reference[:1], *baselines], rho),
        "",
    ]
    return "\n".join(text)


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.0%}"
