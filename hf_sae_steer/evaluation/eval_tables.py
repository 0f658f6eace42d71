"""The tables and verdicts of ``EVAL.md`` (:mod:`~hf_sae_steer.evaluation.eval_md`), each computed
from an evaluation's rows and samples: curve tables, paired differences, controls, gains at
matched perplexity, examples."""

from __future__ import annotations

import math
from typing import Any

from hf_sae_steer.evaluation.conditions import FINETUNE_EPOCHS
from hf_sae_steer.evaluation.metrics import bootstrap_ci
from hf_sae_steer.evaluation.result import PAIRED, EvalResult, ci, point, steers

MAX_RATIO = 2.0  # the fluency budget of a "works" verdict: at most 2x orig's perplexity
MATCHED = (1.25, 1.5, 2.0)
NAMES = {"relevance_centroid": "Δ cosine", "p_topic": "Δ P(topic)"}


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
    """``+m [+lo, +hi]``; ``+m [no interval]`` where the bounds are undefined."""
    if any(math.isnan(v) for v in m_lo_hi[1:]):
        return f"{m_lo_hi[0]:+.3f} [no interval]"
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


def examples(
    result: EvalResult, labels: list[str], rho: float, n: int = 3,
    points: dict[str, float] | None = None,
) -> list[str]:  # fmt: skip
    """Sample 0 of the first ``n`` prompts under each of ``labels``, at norm fraction ``rho``
    (or the one ``points`` gives a label)."""
    out = []
    at = points or {}
    for p in range(n):
        picked = [
            s for s in result.samples
            if s["prompt_index"] == p and s["sample"] == 0 and s["label"] in labels
            and (s["norm_fraction"] in (None, at.get(s["label"], rho)))
            and (s["method"] != "finetune" or s["strength"] == max(FINETUNE_EPOCHS))
        ]  # fmt: skip
        if picked:
            out += ["", f"*{picked[0]['prompt']}* …"]
            out += [f"- `{s['label']}`: “{s['continuation'].strip()}”" for s in picked]
    return out
