"""The benchmark's candidates, its saved runs, and ``docs/benchmark.md`` with its plot.

Every number and every sentence of the verdicts in the report is computed from the saved runs:
regenerate the report (``scripts/run_topic_benchmark.py``), never edit it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf_sae_steer.atomic import write_text_atomically
from hf_sae_steer.evaluation import away_md
from hf_sae_steer.evaluation.away_md import format_value as _fmt
from hf_sae_steer.evaluation.benchmark import CAA, Candidate, TopicRun, calibrated_label
from hf_sae_steer.evaluation.benchmark_plot import plot
from hf_sae_steer.evaluation.result import steers

CANDIDATES = (
    Candidate("mean_diff k=5", "mean_diff", (("k", 5),)),
    Candidate("mean_diff k=10", "mean_diff", (("k", 10),)),
    Candidate("output k=10", "output", (("k", 10),)),
)
# The library's default rule (0.3's): its artifact gives CAA's vector and the away suppressions.
# The report re-chooses the toward default on the tuning topics (chosen_default).
DEFAULT_CANDIDATE = "mean_diff k=10"
# 0.2's default: mean_diff k=5 at norm fraction 0.5; every curve is read at its perplexity.
REFERENCE_POINT = ("mean_diff k=5", 0.5)
SHOWN = ("mean_diff k=5", "mean_diff k=10", "output k=10", CAA, "random vector")
MAIN_TARGET = 1.5


def save_run(run: TopicRun, folder: Path, *, seconds: float) -> Path:
    """One topic's rows, matched comparisons and fits as JSON (``folder/<topic>.json``)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "topic": run.topic, "split": run.split, "seconds": seconds, "fits": run.fits,
        "rows": run.result.rows, "matched": run.matched,
        "config": {k: run.result.config.get(k) for k in
                   ("classifier_cv_auc", "n_prompts", "samples", "max_new_tokens", "prefix")},
    }  # fmt: skip
    path = folder / f"{run.topic}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_plain) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def load_runs(folder: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    runs = []
    for name in names:
        path = folder / f"{name}.json"
        if path.is_file():
            runs.append(json.loads(path.read_text(encoding="utf-8")))
    return runs


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def matched(run: dict[str, Any], label: str, target: float, measure: str) -> dict[str, Any]:
    for r in run["matched"]:
        if r["label"] == label and r["target"] == target and r["measure"] == measure:
            return r
    return {}


def chosen_default(tuning: list[dict[str, Any]]) -> str:
    """The toward default, chosen on the tuning topics alone: the candidate with the largest mean
    Δ P(topic) at 1.5× perplexity (at 1.25× for a topic whose curves stop short of 1.5×)."""
    if not tuning:
        return DEFAULT_CANDIDATE

    def gain(run: dict[str, Any], name: str) -> float:
        value = matched(run, name, MAIN_TARGET, "p_topic").get("gain", math.nan)
        if value is None or math.isnan(value):
            value = matched(run, name, 1.25, "p_topic").get("gain", math.nan)
        return math.nan if value is None else value

    means = {c.name: _mean([gain(r, c.name) for r in tuning]) for c in CANDIDATES}
    return max(means, key=lambda n: -math.inf if math.isnan(means[n]) else means[n])


def default_row(run: dict[str, Any], name: str = DEFAULT_CANDIDATE) -> dict[str, Any]:
    label = calibrated_label(name)
    return next((r for r in run["rows"] if r["label"] == label), {})


def versus(row: dict[str, Any]) -> str:
    """``ahead``, ``behind`` or ``tied`` by the paired interval; ``n/a`` without one."""
    lo, hi = row.get("diff_lo", math.nan), row.get("diff_hi", math.nan)
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "n/a"
    return "ahead" if lo > 0 else "behind" if hi < 0 else "tied"


def steers_at(run: dict[str, Any], label: str, limit: float = 2.0) -> bool:
    """Some point of the curve steers (both gains' intervals above 0) at a perplexity ratio of
    at most ``limit``."""
    return any(steers(r) and r.get("perplexity_ratio", math.inf) <= limit
               for r in run["rows"] if r["label"] == label)  # fmt: skip


def default_steers(run: dict[str, Any], name: str = DEFAULT_CANDIDATE) -> bool:
    row = default_row(run, name)
    return bool(row) and steers(row) and row.get("perplexity_ratio", math.inf) <= 2.0


def _mean(values: list[float]) -> float:
    """The mean of the defined values; NaN when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def summary_table(runs: list[dict[str, Any]], name: str = DEFAULT_CANDIDATE) -> list[str]:
    """Per condition: topics where it steers at ≤ 2×, its standing against CAA at 1.5× on
    P(topic), and its mean matched gains."""
    head = ["condition", "steers at ≤ 2× (topics)", f"vs CAA at {MAIN_TARGET}× (ahead / tied / "
            "behind)", f"mean Δ P(topic) at {MAIN_TARGET}×", f"mean Δ cosine at {MAIN_TARGET}×"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    n = len(runs)
    rec = sum(default_steers(r, name) for r in runs)
    lines.append(f"| **default** (`{name}`, recommended strength) | **{rec} / {n}** "
                 "| (a point, not a curve) | – | – |")
    for label in SHOWN:
        stand = [versus(matched(r, label, MAIN_TARGET, "p_topic")) for r in runs]
        count = f"{stand.count('ahead')} / {stand.count('tied')} / {stand.count('behind')}"
        if label == CAA:
            count = "(the comparison)"
        elif stand.count("n/a"):
            count += f" ({stand.count('n/a')} n/a)"
        means = [_mean([matched(r, label, MAIN_TARGET, m).get("gain", math.nan) for r in runs])
                 for m in ("p_topic", "relevance_centroid")]  # fmt: skip
        steer = sum(steers_at(r, label) for r in runs)
        lines.append(f"| {label} | {steer} / {n} | {count} | {_fmt(means[0])} | {_fmt(means[1])} |")
    return lines


def judge_auc(run: dict[str, Any]) -> str:
    """The judge's held-out and transfer AUC (``–`` for a run judged by its own texts)."""
    judge = run["fits"].get("judge") or run.get("config", {}).get("judge")
    if not judge:
        return "–"
    return f"{judge['heldout_auc']:.2f} / {judge['transfer_auc']:.2f}"


def default_table(runs: list[dict[str, Any]], name: str = DEFAULT_CANDIDATE) -> list[str]:
    head = ["topic", "judge AUC (held-out / transfer)", "strength", "× perplexity", "Δ cosine",
            "Δ P(topic)", "steers?", "latents (90% of weight)", "fit s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        row, fit = default_row(run, name), run["fits"].get(name, {})
        lines.append("| " + " | ".join([
            run["topic"], judge_auc(run), f"{row.get('strength', math.nan):.2f}",
            f"{row.get('perplexity_ratio', math.nan):.2f}",
            _fmt(row.get("relevance_centroid_delta"), row.get("relevance_centroid_delta_lo"),
                 row.get("relevance_centroid_delta_hi")),
            _fmt(row.get("p_topic_delta"), row.get("p_topic_delta_lo"),
                 row.get("p_topic_delta_hi")),
            "yes" if default_steers(run, name) else "no", str(fit.get("latents_90", "–")),
            f"{fit.get('seconds', math.nan):.1f}",
        ]) + " |")  # fmt: skip
    return lines


def matched_table(runs: list[dict[str, Any]], target: float) -> list[str]:
    """Per topic: each condition's Δ P(topic) at ``target``, with its standing against CAA."""
    labels = [label for label in SHOWN if label != CAA]
    head = ["topic", f"CAA Δ P(topic) at {target}×"] + labels
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mark = {"ahead": " ▲", "behind": " ▼", "tied": "", "n/a": ""}
    for run in runs:
        caa = matched(run, CAA, target, "p_topic")
        cells = [run["topic"], _fmt(caa.get("gain"), caa.get("gain_lo"), caa.get("gain_hi"))]
        for label in labels:
            r = matched(run, label, target, "p_topic")
            cells.append(_fmt(r.get("gain")) + mark[versus(r)] if r else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def diff_table(runs: list[dict[str, Any]], label: str) -> list[str]:
    """``label`` minus CAA on Δ P(topic) at 1.25×, 1.5× and 2×, paired intervals."""
    targets = (1.25, 1.5, 2.0)
    head = ["topic"] + [f"{t}×" for t in targets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        cells = [run["topic"]]
        for t in targets:
            r = matched(run, label, t, "p_topic")
            cells.append(_fmt(r.get("diff"), r.get("diff_lo"), r.get("diff_hi")) if r else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


README_START = "<!-- benchmark table: scripts/run_topic_benchmark.py writes it -->"
README_END = "<!-- end of benchmark table -->"


def update_readme(
    path: Path, runs: list[dict[str, Any]], command: str, *, away: list[dict[str, Any]] = ()
) -> bool:  # fmt: skip
    """Replace the README's benchmark table (between its markers) with the held-out topics'
    summaries, toward and away; False when the README has no markers."""
    text = path.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        return False
    held = [r for r in runs if r["split"] == "heldout"]
    name = chosen_default([r for r in runs if r["split"] == "tuning"])
    block = [README_START, "", f"Held-out topics, toward ({len(held)}; `{command}`, judged by "
             "a classifier from another source, [docs/benchmark.md](docs/benchmark.md)):", "",
             *summary_table(held, name), ""]  # fmt: skip
    held_away = [r for r in away if r["split"] == "heldout"]
    if held_away:
        block += [f"Held-out topics, away ({len(held_away)}): P(topic) on topic-inviting "
                  "prompts against perplexity on neutral prompts:", "",
                  *away_md.summary_table(held_away), ""]  # fmt: skip
    block.append(README_END)
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    path.write_text(head + "\n".join(block) + tail, encoding="utf-8")
    return True


def _verdict(held: list[dict[str, Any]]) -> str:
    """Whether any SAE rule is clearly ahead of CAA on most held-out topics, said plainly."""
    if not held:
        return ""
    ahead = {c.name: sum(versus(matched(r, c.name, MAIN_TARGET, "p_topic")) == "ahead"
                         for r in held) for c in CANDIDATES}  # fmt: skip
    behind = {c.name: sum(versus(matched(r, c.name, MAIN_TARGET, "p_topic")) == "behind"
                          for r in held) for c in CANDIDATES}  # fmt: skip
    best = max(ahead, key=lambda name: ahead[name])
    if ahead[best] > len(held) / 2:
        return (f"**`{best}` is clearly ahead of CAA on most held-out topics** ({ahead[best]} of "
                f"{len(held)} at {MAIN_TARGET}× perplexity).")  # fmt: skip
    return (f"**No SAE rule is clearly ahead of CAA on most held-out topics.** The best, "
            f"`{best}`, is ahead on {ahead[best]} of {len(held)} and behind on {behind[best]} at "
            f"{MAIN_TARGET}× perplexity (paired intervals).")  # fmt: skip


def reference_line(runs: list[dict[str, Any]], name: str) -> list[str]:
    """Per topic: 0.2's default point (``REFERENCE_POINT``) against ``name``, read on its curve at
    that point's perplexity (paired), and at its own recommended strength (the EVAL.md-style
    comparison: a gain at no more than 0.2's perplexity)."""
    label, point = REFERENCE_POINT
    head = ["topic", f"0.2's default ({label} at norm fraction {point}): × perplexity, "
            "Δ P(topic)", f"`{name}` at that perplexity: Δ P(topic)", "difference (paired)",
            f"`{name}` at its recommended strength: × perplexity, Δ P(topic)",
            "at least as strong at no more perplexity?"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        rows = [r for r in run["fits"].get("reference_point", [])
                if r["label"] == name and r["measure"] == "p_topic"]  # fmt: skip
        own = default_row(run, name)
        at_own = (f"{own.get('perplexity_ratio', math.nan):.2f}×, " + _fmt(
            own.get("p_topic_delta"), own.get("p_topic_delta_lo"), own.get("p_topic_delta_hi")))
        if not rows:
            lines.append(f"| {run['topic']} | – | – | – | {at_own} | – |")
            continue
        r = rows[0]
        on_curve = r["diff"] is not None and not math.isnan(r["diff"]) and r["diff"] >= 0
        own_point = (own.get("perplexity_ratio", math.inf) <= r["ratio"]
                     and own.get("p_topic_delta", -math.inf) >= r["ref_gain"])  # fmt: skip
        verdict = ("yes, on its curve" + (" and at its recommended strength" if own_point else "")
                   if on_curve else "yes, at its recommended strength" if own_point else "no")
        lines.append("| " + " | ".join([
            run["topic"], f"{r['ratio']:.2f}×, "
            + _fmt(r["ref_gain"], r["ref_gain_lo"], r["ref_gain_hi"]),
            _fmt(r["gain"], r["gain_lo"], r["gain_hi"]),
            _fmt(r["diff"], r["diff_lo"], r["diff_hi"]), at_own, verdict]) + " |")  # fmt: skip
    return lines


def write_report(
    runs: list[dict[str, Any]], out: Path, *, command: str, seconds: float, threads: int,
    samples: int, away: list[dict[str, Any]] = (),
) -> Path:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    tuning = [r for r in runs if r["split"] == "tuning"]
    held = [r for r in runs if r["split"] == "heldout"]
    name = chosen_default(tuning)
    picture = plot(runs, list(away), out / "benchmark.png", name)
    n_held, n_steer = len(held), sum(default_steers(r, name) for r in held)
    minutes = sum(r.get("seconds", 0.0) for r in [*runs, *away]) / 60
    stand = {r["topic"]: versus(matched(r, name, MAIN_TARGET, "p_topic")) for r in held}
    behind = [t for t, s in stand.items() if s == "behind"]
    ahead = [t for t, s in stand.items() if s == "ahead"]
    cfg = (runs or [{}])[0].get("config", {})
    samples = cfg.get("samples") or samples  # as run, not as this report's command line says
    n_prompts = max((r["config"].get("n_prompts") or 0 for r in runs), default=0)
    medical = [r for r in runs if r["topic"] == "medical"]
    tuning_names = ", ".join(r["topic"] for r in tuning) or "none run"
    lines = [
        "# The multi-topic benchmark, both directions",
        "",
        f"Regenerated by `{command}`; do not edit. The topic runs took {minutes:.0f} min in all, "
        "each run's wall time added up (parallel processes on a 2-core machine shared with other "
        "jobs: an upper bound). The demo model, SAE and reference set (`storage/demo`), topics "
        "from `storage/topics` (WordNet lexicographer files). Every rule is fitted on the "
        "topic's 32 `fit.txt` texts. **Every cosine and P(topic) is a judge from another "
        "source**: a classifier and a centroid built from Webster 1913 definitions of the topic "
        "(`<topic>/judge.txt`, GCIDE) against `judge_negatives.jsonl` "
        "(`hf_sae_steer/evaluation/judges.py`), not from the topic's WordNet texts; its AUC on "
        "held-out definitions and its transfer AUC on the WordNet `eval.txt` texts are in the "
        "tables.",
        "",
        "## Toward",
        "",
        f"Measured on up to {n_prompts} neutral prompts per topic (tuning topics: the demo's 24 "
        "tuning prompts; held-out topics: its held-out evaluation prompts), "
        f"{samples} sampled continuation(s) of {cfg.get('max_new_tokens', '?')} tokens. Gains "
        "are paired with the unsteered model; curves (norm fractions "
        f"{', '.join(f'{x:g}' for x in _grid(runs))}) are read at matched perplexity ratios; "
        "intervals are 95% paired bootstraps over prompts (`docs/method.md` §8).",
        "",
        f"**The toward default, re-chosen on the tuning topics ({tuning_names}) under the "
        f"judge: `{name}`** (the candidate with the largest "
        f"mean Δ P(topic) at {MAIN_TARGET}× perplexity there), steered with `add` (error kept) "
        "at the artifact's recommended strength.",
        "",
        f"**Held-out topics**: the default steers (both intervals above 0 at ≤ 2× perplexity) on "
        f"**{n_steer} of {n_held}**; against CAA at {MAIN_TARGET}× perplexity (Δ P(topic), "
        f"paired) it is ahead on {len(ahead)} ({', '.join(ahead) or 'none'}), behind on "
        f"{len(behind)} ({', '.join(behind) or 'none'}), tied on "
        f"{list(stand.values()).count('tied')}"
        + (f", with no interval on {', '.join(t for t, v in stand.items() if v == 'n/a')} "
           f"(a curve does not reach {MAIN_TARGET}× in enough resamples)"
           if "n/a" in stand.values() else "") + ".",
        "",
        _verdict(held),
        "",
    ]
    if medical:
        lines += ["**Against 0.2's default on every topic, the shipped medical topic first** "
                  f"(`{name}` read at the perplexity of `{REFERENCE_POINT[0]}` at norm fraction "
                  f"{REFERENCE_POINT[1]}; paired):", "",
                  *reference_line(medical + [r for r in runs if r["topic"] != "medical"], name),
                  ""]  # fmt: skip
    for title, group in (("Held-out topics", held), ("Tuning topics", tuning)):
        if not group:
            continue
        lines += [f"### Toward, {title.lower()}", "", "Summary over topics:", "",
                  *summary_table(group, name), "",
                  "The default at its recommended strength:", "", *default_table(group, name), "",
                  f"Δ P(topic) at {MAIN_TARGET}× perplexity (▲ / ▼: ahead of / behind CAA, "
                  "paired interval; – : the curve never reaches that perplexity):", "",
                  *matched_table(group, MAIN_TARGET), "",
                  f"`{name}` minus CAA, Δ P(topic), at matched perplexity:", "",
                  *diff_table(group, name), ""]  # fmt: skip
    lines += away_md.section(list(away), samples)
    if picture:
        lines += ["![Toward: Δ P(topic) against perplexity; away: Δ P(topic) on inviting "
                  "prompts against neutral perplexity](benchmark.png)", ""]  # fmt: skip
    path = out / "benchmark.md"
    write_text_atomically(path, "\n".join(lines))
    held_away = [r for r in away if r["split"] == "heldout"]
    summary = {"command": command, "seconds": seconds, "default": name,
               "topics": [r["topic"] for r in runs], "away_topics": [r["topic"] for r in away],
               "heldout_steers": [n_steer, n_held], "ahead": ahead, "behind": behind,
               "away_verdicts": away_md.verdicts(held_away)}  # fmt: skip
    write_text_atomically(out / "benchmark.json", json.dumps(summary, indent=1) + "\n")
    return path


def _grid(runs: list[dict[str, Any]]) -> list[float]:
    return sorted({r["norm_fraction"] for run in runs for r in run["rows"]
                   if r["label"] == CAA and r.get("norm_fraction") is not None})  # fmt: skip
