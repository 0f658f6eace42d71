"""``EVAL.md``: an evaluation of the demo assets written out as a report, every number (the
findings' sentences too) computed from the rows, so it is regenerated rather than edited."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import torch

from hf_sae_steer.evaluation.metrics import bootstrap_ci, concept_relevance
from hf_sae_steer.evaluation.result import EvalResult, label
from hf_sae_steer.scoring.embedders import embed_prompts
from hf_sae_steer.scoring.prompts import load_prompts
from hf_sae_steer.scoring.record import FeatureScores

STEERING = ("clamp", "weight", "swap")


def show(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


# -- findings, computed from the rows --------------------------------------------------------
def ci(r: dict[str, Any], name: str, d: int = 3) -> str:
    return f"{r[name]:.{d}f} [{r[name + '_lo']:.{d}f}, {r[name + '_hi']:.{d}f}]"


def fmt(m_lo_hi: tuple[float, float, float]) -> str:
    return "{:+.3f} [{:+.3f}, {:+.3f}]".format(*m_lo_hi)


def paired_gain(result: EvalResult, a: str, b: str, strength: float) -> tuple[float, float, float]:
    """Relevance of config ``a`` minus config ``b`` (labels) at ``strength``, paired by prompt
    and sample, bootstrapped over prompts."""
    def by_key(name: str) -> dict[tuple[int, int], float]:
        return {
            (x["prompt_index"], x["sample"]): x["relevance_centroid"]
            for x in result.samples
            if x["label"] == name and x["strength"] == strength
        }

    va, vb = by_key(a), by_key(b)
    keys = sorted(va.keys() & vb.keys())
    c = result.config
    return bootstrap_ci(
        [va[k] - vb[k] for k in keys], c["n_boot"], c["seed"], groups=[k[0] for k in keys]
    )


def curve(result: EvalResult, name: str) -> list[dict[str, Any]]:
    """One curve's rows by strength, starting from ``orig``: every method at strength 0 *is*
    orig (``x + 0 * (x' - x) = x``), so orig is each curve's first point."""
    rows = sorted((r for r in result.rows if r["label"] == name), key=lambda r: r["strength"])
    return [result.row("orig"), *rows]


def relevance_at(points: list[dict[str, Any]], ppl: float) -> tuple[float, str] | None:
    """Relevance of a curve at perplexity ``ppl``, linear in log-perplexity between the first
    two consecutive strengths that bracket it; None when the curve never reaches ``ppl``."""
    for a, b in zip(points, points[1:], strict=False):
        pa, pb = math.log(a["perplexity"]), math.log(b["perplexity"])
        lo, hi = min(pa, pb), max(pa, pb)
        if lo <= math.log(ppl) <= hi:
            t = 0.0 if hi == lo else (math.log(ppl) - pa) / (pb - pa)
            rel = a["relevance_centroid"] + t * (b["relevance_centroid"] - a["relevance_centroid"])
            return rel, f"{a['strength'] or 0:g}–{b['strength']:g}"
    return None


def findings(result: EvalResult) -> tuple[list[str], dict[str, Any]]:
    orig = result.row("orig")
    strengths = result.config["strengths"]
    errs = result.config["preserve_error"]
    lines, facts = [], {}

    # 1. swap against orig
    lines += [
        "### 1. Does `swap` move continuations towards the alignment set more than `orig`?",
        "",
        f"`orig`: relevance {ci(orig, 'relevance_centroid')}, perplexity "
        f"{ci(orig, 'perplexity', 1)}.",
        "",
        "| config | strength | relevance (centroid) | Δ vs orig, paired | intervals "
        "overlap orig's? | perplexity |",
        "|---|---|---|---|---|---|",
    ]
    wins = []
    for e in errs:
        for s in strengths:
            r = result.row("swap", e, s)
            apart = r["relevance_centroid_lo"] > orig["relevance_centroid_hi"]
            below = r["relevance_centroid_hi"] < orig["relevance_centroid_lo"]
            overlap = "no: above" if apart else "no: below" if below else "yes"
            if apart:
                wins.append(f"{label('swap', e)} at strength {s:g}")
            lines.append(
                f"| {label('swap', e)} | {s:g} | {ci(r, 'relevance_centroid')} | "
                f"{ci(r, 'relevance_delta')} | {overlap} | "
                f"{ci(r, 'perplexity', 1)} |"
            )
    facts["swap_beats_orig"] = wins
    lines += [
        "",
        (
            f"**Yes**, with non-overlapping 95% intervals for: {', '.join(wins)}."
            if wins
            else "**No**: at no strength do swap's relevance interval and orig's stop overlapping."
        ),
    ]
    paired = [
        f"{label('swap', e)} {s:g}"
        for e in errs
        for s in strengths
        if result.row("swap", e, s)["relevance_delta_lo"] > 0
    ]
    lines.append(
        f"The paired difference (same prompt, same seed) is above 0 for: "
        f"{', '.join(paired) or 'none'}."
    )
    if False in errs and "sae" in result.config["methods"]:
        cells = [f"{s:g}: {fmt(paired_gain(result, 'swap', 'sae', s))}" for s in strengths]
        lines.append(
            "Against `sae` at the same strength (the SAE round trip alone, which swap without "
            "preserve_error includes), the paired relevance change of `swap` is "
            + "; ".join(cells)
            + ". This isolates what the scores add on top of the reconstruction."
        )

    # 2. equal perplexity cost
    lines += [
        "",
        "### 2. `swap` against `clamp` and `weight` at equal perplexity cost",
        "",
        "Relevance of `clamp`/`weight` (same preserve_error setting) interpolated to the "
        "perplexity that swap reaches (linear in log-perplexity between neighbouring "
        "strengths, orig counting as strength 0; '–' = that method never reaches this "
        "perplexity in the sweep).",
        "",
        "| swap config | perplexity | swap relevance | clamp at same perplexity | "
        "weight at same perplexity |",
        "|---|---|---|---|---|",
    ]
    compare = []
    for e in errs:
        for s in strengths:
            r = result.row("swap", e, s)
            cells = []
            for m in ("clamp", "weight"):
                got = relevance_at(curve(result, label(m, e)), r["perplexity"])
                cells.append("–" if got is None else f"{got[0]:.3f} (strength {got[1]})")
                if got is not None:
                    compare.append((m, e, s, r["relevance_centroid"] - got[0]))
            lines.append(
                f"| {label('swap', e)} {s:g} | {r['perplexity']:.1f} | "
                f"{r['relevance_centroid']:.3f} | {cells[0]} | {cells[1]} |"
            )
    for m in ("clamp", "weight"):
        diffs = [d for mm, _, _, d in compare if mm == m]
        if diffs:
            better = sum(d > 0 for d in diffs)
            lines.append(
                f"- vs `{m}`: swap is more relevant at {better} of {len(diffs)} "
                f"comparable points (mean difference {sum(diffs) / len(diffs):+.3f})."
            )
        else:
            lines.append(f"- vs `{m}`: no swap point lies within {m}'s perplexity range.")
    facts["equal_ppl"] = compare
    best = {
        m: max((r for r in result.rows if r["method"] == m), key=lambda r: r["relevance_centroid"])
        for m in STEERING
    }
    lines.append(
        "- Highest relevance reached: "
        + "; ".join(
            f"`{r['label']}` {r['strength']:g}: {r['relevance_centroid']:.3f} at perplexity "
            f"{r['perplexity']:.1f}"
            for r in best.values()
        )
        + "."
    )

    # 3. preserve_error
    if len(errs) == 2:
        lines += [
            "",
            "### 3. What `preserve_error` changes",
            "",
            "Each cell: relevance change, perplexity ratio (with / without "
            "preserve_error), same method and strength.",
            "",
            "| method | " + " | ".join(f"strength {s:g}" for s in strengths) + " |",
            "|---|" + "---|" * len(strengths),
        ]
        for m in ("sae", *STEERING):
            cells = []
            for s in strengths:
                a, b = result.row(m, False, s), result.row(m, True, s)
                cells.append(
                    f"{b['relevance_centroid'] - a['relevance_centroid']:+.3f}, "
                    f"×{b['perplexity'] / a['perplexity']:.2f}"
                )
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        sae1 = result.row("sae", False, max(strengths))
        lines.append(
            f"\n`sae` without preserve_error (the round trip alone) at strength "
            f"{max(strengths):g}: perplexity {ci(sae1, 'perplexity', 1)} against orig's "
            f"{orig['perplexity']:.1f}, relevance Δ {ci(sae1, 'relevance_delta')}: the "
            "cost of the SAE's reconstruction error, which preserve_error removes "
            "(`sae+err` is the identity and reproduces orig token for token)."
        )

    # 4. where it does not help
    flat = [
        f"{r['label']} {r['strength']:g}"
        for r in result.rows
        if r["method"] in STEERING and r["relevance_delta_lo"] <= 0
    ]
    worse = [
        f"{r['label']} {r['strength']:g}"
        for r in result.rows
        if r["method"] in STEERING and r["relevance_delta_hi"] < 0
    ]
    lines += [
        "",
        "### 4. Where steering does not help",
        "",
        f"- No paired relevance gain shown (the interval's lower end is at or below 0): "
        f"{', '.join(flat) or 'none'}.",
        f"- Relevance significantly *lower* than orig: {', '.join(worse) or 'none'}.",
    ]
    rep = [
        f"{r['label']} {r['strength']:g} ({r['repetition']:.3f})"
        for r in result.rows
        if r["repetition_lo"] > orig["repetition_hi"]
    ]
    lines.append(
        f"- More repeated 3-grams than orig (non-overlapping intervals; orig "
        f"{orig['repetition']:.3f}): {', '.join(rep) or 'none'}."
    )
    return lines, facts


def summary(result: EvalResult, facts: dict[str, Any]) -> list[str]:
    """The findings in a few sentences, every number from the rows."""
    orig = result.row("orig")
    swaps = [r for r in result.rows if r["method"] == "swap"]
    best = max(swaps, key=lambda r: r["relevance_delta"])
    out = [
        "**In short** (relevance = cosine to the alignment centroid; Δ = paired gain over "
        f"orig, whose relevance is {orig['relevance_centroid']:.3f} at perplexity "
        f"{orig['perplexity']:.1f}):",
        "",
    ]
    wins = facts["swap_beats_orig"]
    out.append(
        f"- `swap` beats `orig` with non-overlapping intervals at {', '.join(wins)}."
        if wins
        else "- `swap` does **not** move continuations towards the alignment set here: no "
        "strength lifts its relevance interval above orig's. Its best configuration, "
        f"`{best['label']}` {best['strength']:g}, has Δ {ci(best, 'relevance_delta')}."
    )
    gains = [r for r in result.rows if r["method"] in STEERING and r["relevance_delta_lo"] > 0]
    out.append(
        "- Paired gains with intervals above 0: "
        + "; ".join(
            f"`{r['label']}` {r['strength']:g}: Δ {r['relevance_delta']:+.3f} at "
            f"perplexity {r['perplexity']:.0f}"
            for r in gains
        )
        + "."
        if gains
        else "- No steering configuration has a paired gain whose interval lies above 0."
    )
    for m in ("clamp", "weight"):
        diffs = [d for mm, _, _, d in facts["equal_ppl"] if mm == m]
        if diffs:
            out.append(
                f"- At equal perplexity, swap is more relevant than `{m}` at "
                f"{sum(d > 0 for d in diffs)} of {len(diffs)} comparable points "
                f"(mean difference {sum(diffs) / len(diffs):+.3f})."
            )
    top = max(result.config["strengths"])
    if len(result.config["preserve_error"]) == 2:
        a, b = result.row("swap", False, top), result.row("swap", True, top)
        out.append(
            f"- preserve_error, swap at strength {top:g}: perplexity "
            f"{a['perplexity']:.1f} → {b['perplexity']:.1f}, relevance "
            f"{a['relevance_centroid']:.3f} → {b['relevance_centroid']:.3f}."
        )
    return out


def scale(result: EvalResult, demo: Path) -> str:
    """What relevance numbers mean here: the alignment texts' own score (in-sample, an upper
    reference) and the non-medical reference texts' (an off-topic reference)."""
    name = result.config["embedder"]
    align = load_prompts(demo / "alignment.txt")
    (emb,), _ = embed_prompts(name, [align], progress=False)
    own = concept_relevance(align, emb, name)[0].mean().item()
    if not (demo / "reference.txt").exists():
        return f"For scale: the alignment texts themselves score {own:.3f} (in-sample)."
    reference = load_prompts(demo / "reference.txt")
    ref = concept_relevance(reference, emb, name)[0].mean().item()
    return (
        f"For scale: the alignment texts themselves score {own:.3f} (in-sample, each counts in "
        f"the centroid), the {len(reference)} non-medical reference texts {ref:.3f}."
    )


def examples(result: EvalResult, strength: float, n: int = 3) -> list[str]:
    out = []
    for p in range(n):
        picked = [
            s
            for s in result.samples
            if s["prompt_index"] == p
            and s["sample"] == 0
            and (s["method"] == "orig" or (s["strength"] == strength and not s["preserve_error"]))
        ]
        if not picked:
            continue
        out += ["", f"*{picked[0]['prompt']}* …"]
        out += [f"- `{s['label']}`: “{s['continuation'].strip()}”" for s in picked]
    return out


def write_eval_md(
    result: EvalResult,
    scores: FeatureScores,
    *,
    demo: Path,
    command: str,
    seconds: float,
    threads: int,
    root: Path | None = None,
) -> str:
    """EVAL.md for an evaluation of the demo assets in ``demo``: setup, findings computed from
    the rows, caveats, the table and examples. ``command`` is what reproduces it."""
    root = root or demo.parent.parent
    c = result.config
    lines, facts = findings(result)
    build = demo / "build_info.json"
    info = json.loads(build.read_text()) if build.exists() else {}
    sae_info, lm = info.get("sae", {}), info.get("lm", {})
    quality = scores.report()
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in c["seconds"].items())
    mid = sorted(c["strengths"])[len(c["strengths"]) // 2]
    text = [
        "# Steering evaluation on the demo assets",
        "",
        f"Generated by `{command}` in **{seconds / 60:.1f} min** on {threads} CPU thread(s) "
        f"({platform.machine()}, torch {torch.__version__}; {timing}); regenerate rather than "
        "edit.",
        "",
        "## Setup",
        "",
        f"- Model `{show(demo / 'model', root)}`: GPT-2 architecture, {lm.get('params', 0):,} "
        f"parameters, held-out perplexity {lm.get('lm_ppl', math.nan):.1f}.",
        f"- SAE `{show(demo / 'sae', root)}`: TopK, layer {c['layer']} `{c['site']}`, d_sae "
        f"{sae_info.get('d_sae', '?')}, k {sae_info.get('k', '?')}, held-out FVU "
        f"{sae_info.get('fvu', math.nan):.3f}.",
        f"- Scores `{show(demo / 'scores', root)}`: coverage {quality.coverage:.1%}, effective "
        f"latents {quality.effective_latents:.1f}, top-{quality.top_k} latents firing on the "
        f"alignment set {quality.top_firing}."
        + "".join(f" Warning from `scores.report()`: {w}" for w in quality.warnings),
        f"- {c['n_prompts']} held-out prompts (`prompts.txt`, neutral openings, in neither the "
        f"alignment nor the reference set) × {c['samples']} sampled continuations of up to "
        f"{c['max_new_tokens']} tokens (temperature {c.get('temperature', 0)}, top-k "
        f"{c.get('top_k', '-')}). Sample j of a prompt uses the same seed under every "
        "configuration, so differences between rows are paired.",
        f"- Methods {', '.join(c['methods'])}, preserve_error {c['preserve_error']}, strengths "
        f"{', '.join(f'{s:g}' for s in c['strengths'])}.",
        f"- Concept relevance: cosine of the continuation's {c['embedder']} embedding to the "
        f"centroid of the {c['n_alignment']} alignment texts (`alignment.txt`), and the mean "
        f"cosine to its {c['nearest_k']} nearest alignment texts. Fluency: perplexity of the "
        "continuation under the unsteered model (geometric mean over continuations) and the "
        "share of 3-gram occurrences that repeat within a continuation. Cost: generated tokens "
        "per second (batched, KV cache; wall clock on a machine shared with other jobs, so "
        "only large differences mean anything).",
        f"- Intervals: 95% percentile bootstrap ({c['n_boot']} resamples) over prompts (the "
        "samples of one prompt are resampled together).",
        "",
        "![relevance against perplexity](eval_plot.png)",
        "",
        "## Findings",
        "",
        *summary(result, facts),
        "",
        scale(result, demo),
        "",
        *lines,
        "",
        "## Caveats",
        "",
        "- Relevance is an embedding cosine: word salad made of topical tokens scores as "
        "relevant, so read it together with perplexity (the examples below show what high "
        "perplexity looks like).",
        "- Perplexity under the unsteered model penalises any change of topic a little, since "
        "the model did not expect it; compare methods at equal perplexity, not relevance alone.",
        f"- A {lm.get('params', 0) / 1e6:.1f}M-parameter model trained on WordNet glosses with a "
        f"{sae_info.get('d_sae', '?')}-latent SAE: what holds here need not hold for a real "
        "model, in either direction.",
        "",
        "## Table",
        "",
        result.to_markdown(),
        "Machine-readable: `eval_table.csv` beside this file.",
        "",
        f"## Examples (sample 0, strength {mid:g}, without preserve_error)",
        *examples(result, mid),
        "",
    ]
    return "\n".join(text)
