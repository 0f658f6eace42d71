"""The away half of ``docs/benchmark.md``: tables and verdicts computed from the saved away runs
(``<topic>.away.json``, :mod:`~hf_sae_steer.evaluation.away`). Regenerate, never edit."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hf_sae_steer.evaluation.away import (
    ABLATION,
    ATTENUATE,
    BUDGETS,
    CAA_SUBTRACTION,
    DEFAULT_SUPPRESSION,
    SUPPRESS,
    lowers,
)

MAIN_BUDGET = 1.10
# The benchmark's conditions that are a library method (``direction="away"``, method=...).
LIBRARY_METHODS = {CAA_SUBTRACTION: "vector", ABLATION: "ablate", SUPPRESS: "suppress",
                   ATTENUATE: "attenuate"}  # fmt: skip


def format_value(value: float | None, lo: float | None = None, hi: float | None = None) -> str:
    """``+0.123 [+0.045, +0.201]`` (the interval when known), or ``–`` for no value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"{value:+.3f}"
    return f"{value:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def labels(runs: list[dict[str, Any]]) -> list[str]:
    """Every condition of the runs but ``orig``, in the order they were run."""
    seen: dict[str, None] = {}
    for run in runs:
        for label in run["config"].get("conditions", []):
            if label != "orig":
                seen.setdefault(label, None)
    return list(seen)


def budget_row(run: dict[str, Any], label: str, budget: float, measure: str = "p_topic"):
    for r in run["budgets"]:
        if r["label"] == label and r["budget"] == budget and r["measure"] == measure:
            return r
    return {}


def point_rows(run: dict[str, Any], label: str) -> list[dict[str, Any]]:
    return [r for r in run["points"] if r["label"] == label]


def standing(row: dict[str, Any], other: str) -> str:
    """``ahead`` (suppresses more: the paired difference's interval below 0), ``behind``,
    ``tied``; ``n/a`` without the comparison."""
    d = row.get(f"vs {other}")
    if not d or d["lo"] is None or math.isnan(d["lo"]) or math.isnan(d["hi"]):
        return "n/a"
    return "ahead" if d["hi"] < 0 else "behind" if d["lo"] > 0 else "tied"


def default_lowers(run: dict[str, Any], budget: float = MAIN_BUDGET) -> bool:
    """The default suppression's own point lowers P(topic) (interval below 0) at a neutral
    perplexity ratio of at most ``budget``."""
    rows = point_rows(run, DEFAULT_SUPPRESSION)
    return any(r["neutral_ratio"] <= budget and lowers(r) for r in rows)


def summary_table(runs: list[dict[str, Any]]) -> list[str]:
    """Per condition, at each budget: topics where it lowers P(topic), the mean drop, and its
    standing against CAA subtraction and directional ablation."""
    head = ["condition"]
    for b in BUDGETS:
        head += [f"lowers P(topic) within {b:.2f}× (topics)", f"mean Δ P(topic) within {b:.2f}×"]
    head += [f"vs CAA subtraction at {MAIN_BUDGET:.2f}× (ahead / tied / behind)",
             f"vs ablation at {MAIN_BUDGET:.2f}×"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    n = len(runs)
    for label in labels(runs):
        cells = [label]
        for b in BUDGETS:
            rows = [budget_row(r, label, b) for r in runs]
            cells.append(f"{sum(lowers(x) for x in rows if x)} / {n}")
            drops = [x["drop"] for x in rows if x and not math.isnan(x["drop"])]
            cells.append(format_value(float(np.mean(drops)) if drops else math.nan))
        for other in (CAA_SUBTRACTION, ABLATION):
            if label == other:
                cells.append("(the comparison)")
                continue
            stand = [standing(budget_row(r, label, MAIN_BUDGET), other) for r in runs]
            if stand.count("n/a") == n:
                cells.append("–")
                continue
            cell = f"{stand.count('ahead')} / {stand.count('tied')} / {stand.count('behind')}"
            cells.append(cell + (f" ({stand.count('n/a')} n/a)" if stand.count("n/a") else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def topic_table(runs: list[dict[str, Any]], budget: float = MAIN_BUDGET) -> list[str]:
    """Per topic: the unsteered P(topic) on inviting prompts is not stored; each condition's
    drop within ``budget`` (▲ / ▼: suppresses more / less than CAA subtraction, paired)."""
    shown = labels(runs)
    head = ["topic", "judge AUC (held-out / transfer)"] + shown
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mark = {"ahead": " ▲", "behind": " ▼", "tied": "", "n/a": ""}
    for run in runs:
        judge = run["config"].get("judge") or {}
        held, transfer = judge.get("heldout_auc", math.nan), judge.get("transfer_auc", math.nan)
        auc = f"{held:.2f} / {transfer or math.nan:.2f}"
        cells = [run["topic"], auc]
        for label in shown:
            r = budget_row(run, label, budget)
            if not r:
                cells.append("–")
                continue
            if label == CAA_SUBTRACTION:
                text = format_value(r["drop"], r["drop_lo"], r["drop_hi"])
            else:
                text = format_value(r["drop"]) + mark[standing(r, CAA_SUBTRACTION)]
            cells.append(text + ("" if r["reached"] else " ·"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def points_table(runs: list[dict[str, Any]]) -> list[str]:
    """Per topic and condition, the strongest point: Δ P(topic) on inviting prompts and both
    perplexity ratios (the side effect on neutral prompts, the cost on inviting ones)."""
    head = ["topic", "condition", "point", "Δ P(topic), inviting", "× ppl neutral",
            "× ppl inviting"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        for label in labels([run]):
            rows = point_rows(run, label)
            if not rows:
                continue
            r = rows[-1]
            lines.append("| " + " | ".join([
                run["topic"], label, f"{r['point']:g}",
                format_value(r["p_topic"], r["p_topic_lo"], r["p_topic_hi"]),
                f"{r['neutral_ratio']:.2f}", f"{r['inviting_ratio']:.2f}",
            ]) + " |")  # fmt: skip
    return lines


def verdicts(held: list[dict[str, Any]]) -> list[str]:
    """The "done when" questions of issue 21 for the away direction, answered by the numbers."""
    if not held:
        return []
    n = len(held)
    all_labels = labels(held)
    out = []
    if DEFAULT_SUPPRESSION in all_labels:
        k = sum(default_lowers(r) for r in held)
        rows = [budget_row(r, DEFAULT_SUPPRESSION, MAIN_BUDGET) for r in held]
        vs = []
        for other in (CAA_SUBTRACTION, ABLATION):
            stand = [standing(x, other) for x in rows if x]
            vs.append(f"{other}: ahead on {stand.count('ahead')}, tied on "
                      f"{stand.count('tied')}, behind on {stand.count('behind')}")  # fmt: skip
        out.append(f"- **The default suppression lowers P(topic) on inviting prompts (interval "
                   f"below 0) at neutral perplexity ≤ {MAIN_BUDGET:.2f}× on {k} of {n} held-out "
                   "topics** (its own point, at its calibrated strength). Read at the "
                   f"{MAIN_BUDGET:.2f}× budget (interpolated from the unsteered model to its "
                   "point where the point costs more), against " + "; against ".join(vs)
                   + ".")  # fmt: skip
    else:
        out.append("- **There is no default suppression yet** (the library recommends no away "
                   "steering), so the question is answered for each method below.")  # fmt: skip
    curves_only = [lab for lab in all_labels if lab != DEFAULT_SUPPRESSION]
    for label in curves_only:
        rows = [budget_row(r, label, MAIN_BUDGET) for r in held]
        k = sum(lowers(x) for x in rows if x)
        parts = [f"`{label}` lowers P(topic) within {MAIN_BUDGET:.2f}× neutral perplexity on "
                 f"{k} of {n}"]  # fmt: skip
        for other in (CAA_SUBTRACTION, ABLATION):
            if other == label or other not in all_labels:
                continue
            stand = [standing(x, other) for x in rows if x]
            parts.append(f"against {other}: ahead on {stand.count('ahead')}, tied on "
                         f"{stand.count('tied')}, behind on {stand.count('behind')}")  # fmt: skip
        out.append("- " + "; ".join(parts) + ".")
    best = max(curves_only, key=lambda lab: sum(
        lowers(budget_row(r, lab, MAIN_BUDGET)) for r in held))  # fmt: skip
    k = sum(lowers(budget_row(r, best, MAIN_BUDGET)) for r in held)
    vector = best in (CAA_SUBTRACTION, ABLATION)
    if k == 0:
        out.append(f"- **No method lowers P(topic) (interval below 0) on any held-out topic "
                   f"within {MAIN_BUDGET:.2f}× neutral perplexity.**")  # fmt: skip
        return out
    out.append(f"- The method that lowers P(topic) on the most held-out topics within "
               f"{MAIN_BUDGET:.2f}× is `{best}` ({k} of {n})"
               + (": **a vector method wins**." if vector else "."))  # fmt: skip
    return out


def tuning_choice(tuning: list[dict[str, Any]]) -> list[str]:
    """Which method the tuning topics choose (the most negative mean Δ P(topic) within the main
    budget, random controls and the default's own point aside), against the library's default."""
    if not tuning:
        return []
    candidates = [lab for lab in labels(tuning)
                  if lab != DEFAULT_SUPPRESSION and not lab.startswith("random")]  # fmt: skip

    def mean_drop(label: str) -> float:
        drops = [r["drop"] for r in (budget_row(t, label, MAIN_BUDGET) for t in tuning) if r]
        return float(np.mean(drops)) if drops else math.inf

    best = min(candidates, key=mean_drop)
    rec = (tuning[0]["config"].get("recommended_away") or {}).get("method")
    chosen = LIBRARY_METHODS.get(best)
    verdict = ("the library's default suppression" if chosen == rec else
               f"not the library's default suppression (`{rec}`)")  # fmt: skip
    ranking = ", ".join(
        f"`{lab}` {mean_drop(lab):+.3f}" for lab in sorted(candidates, key=mean_drop)
    )
    return [f"- **On the {len(tuning)} tuning topics the largest mean drop within "
            f"{MAIN_BUDGET:.2f}× is `{best}`'s** ({ranking}): {verdict}."]  # fmt: skip


def section(runs: list[dict[str, Any]], samples: int) -> list[str]:
    """The away half of the report."""
    if not runs:
        return []
    held = [r for r in runs if r["split"] == "heldout"]
    tuning = [r for r in runs if r["split"] == "tuning"]
    cfg = runs[0]["config"]
    samples = cfg.get("samples") or samples  # as run
    lines = [
        "# Away: suppressing a topic",
        "",
        f"Per topic, {cfg['n_inviting']} **inviting** prompts (the first 4-6 words of the topic's "
        f"`eval.txt` texts, which no fit saw) and {cfg['n_neutral']} **neutral** prompts (the "
        f"demo's held-out evaluation prompts, for every topic), {samples} sampled "
        f"continuation(s) of {cfg['max_new_tokens']} tokens each, the same seeds under every "
        "condition. Δ P(topic) is the judge's P(topic) on inviting prompts, paired with the "
        "unsteered continuation (negative: suppressed); the side effect is the perplexity ratio "
        "on neutral prompts. "
        f"Within a budget (neutral ratio {', '.join(f'{b:.2f}×' for b in BUDGETS)}) a curve is "
        "read where it crosses the budget, or at its strongest point when it never costs that "
        "much (marked ·). Intervals: 95% paired bootstraps, inviting and neutral prompts "
        "resampled independently. Conditions: CAA subtraction (`vector`, the artifact's mean "
        "difference at negative norm fractions), directional ablation (the hidden state minus s "
        "times its projection on that difference: s = 1 removes it; Arditi et al. 2024), "
        "`suppress (library)` (`SteeredModel(..., method=\"suppress\", direction=\"away\")`: "
        "the artifact's topic latents scaled by 1 - s where they fire, error kept; "
        "`docs/method.md` §9) or, for runs from before the library had it, `clamp top-k` (the "
        "artifact's top `mean_diff` latents edited alike), random latents edited alike (the "
        "control at equal strength), `attenuate (library)` (`method=\"attenuate\"`: CAA "
        "subtraction times the SAE's naive-Bayes posterior that the token is on the topic, from "
        "which of the topic's 100 most specific latents fire: conditional where CAA is not; "
        "strengths are multiples of the mean difference), and the **default suppression**: "
        "`direction=\"away\"` "
        "with the artifact's recommended suppression at its calibrated strength (calibrated on "
        "the tuning prompts, as a fit does).",
        "",
        *tuning_choice(tuning),
        *verdicts(held),
        "",
    ]
    for title, group in (("Held-out topics", held), ("Tuning topics", tuning)):
        if not group:
            continue
        lines += [f"## Away, {title.lower()}", "", "Summary over topics:", "",
                  *summary_table(group), "",
                  f"Δ P(topic) on inviting prompts within {MAIN_BUDGET:.2f}× neutral perplexity "
                  "(▲ / ▼: suppresses more / less than CAA subtraction, paired interval; · : the "
                  "curve never reaches the budget, its strongest point):", "",
                  *topic_table(group), "", "The strongest point of each curve:", "",
                  *points_table(group), ""]  # fmt: skip
    return lines
