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

from hf_sae_steer.evaluation.benchmark import CAA, Candidate, TopicRun, calibrated_label
from hf_sae_steer.evaluation.result import steers
from hf_sae_steer.scoring.calibration import TARGET_RATIO

CANDIDATES = (
    Candidate("mean_diff k=5", "mean_diff", (("k", 5),)),
    Candidate("mean_diff k=10", "mean_diff", (("k", 10),)),
    Candidate("output k=10", "output", (("k", 10),)),
    Candidate("trained", "trained"),
)
# The default rule: chosen on the tuning topics (see the report's "How the default was chosen").
DEFAULT_CANDIDATE = "mean_diff k=10"
SHOWN = ("mean_diff k=5", "mean_diff k=10", "output k=10", "trained", CAA,
         "random latents", "random vector", "support clamp", "finetune")  # fmt: skip
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


def default_row(run: dict[str, Any]) -> dict[str, Any]:
    label = calibrated_label(DEFAULT_CANDIDATE)
    return next((r for r in run["rows"] if r["label"] == label), {})


def _fmt(value: float | None, lo: float | None = None, hi: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"{value:+.3f}"
    return f"{value:+.3f} [{lo:+.3f}, {hi:+.3f}]"


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


def default_steers(run: dict[str, Any]) -> bool:
    row = default_row(run)
    return bool(row) and steers(row) and row.get("perplexity_ratio", math.inf) <= 2.0


def _mean(values: list[float]) -> float:
    """The mean of the defined values; NaN when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def summary_table(runs: list[dict[str, Any]]) -> list[str]:
    """Per condition: topics where it steers at ≤ 2×, its standing against CAA at 1.5× on
    P(topic), and its mean matched gains."""
    head = ["condition", "steers at ≤ 2× (topics)", f"vs CAA at {MAIN_TARGET}× (ahead / tied / "
            "behind)", f"mean Δ P(topic) at {MAIN_TARGET}×", f"mean Δ cosine at {MAIN_TARGET}×"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    n = len(runs)
    rec = sum(default_steers(r) for r in runs)
    lines.append(f"| **default** (`{DEFAULT_CANDIDATE}`, calibrated strength) | **{rec} / {n}** "
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


def default_table(runs: list[dict[str, Any]]) -> list[str]:
    head = ["topic", "classifier AUC", "strength", "× perplexity", "Δ cosine", "Δ P(topic)",
            "steers?", "latents (90% of weight)", "fit s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        row, fit = default_row(run), run["fits"].get(DEFAULT_CANDIDATE, {})
        auc = run["config"].get("classifier_cv_auc")
        lines.append("| " + " | ".join([
            run["topic"], f"{auc:.2f}" if auc else "–", f"{row.get('strength', math.nan):.2f}",
            f"{row.get('perplexity_ratio', math.nan):.2f}",
            _fmt(row.get("relevance_centroid_delta"), row.get("relevance_centroid_delta_lo"),
                 row.get("relevance_centroid_delta_hi")),
            _fmt(row.get("p_topic_delta"), row.get("p_topic_delta_lo"),
                 row.get("p_topic_delta_hi")),
            "yes" if default_steers(run) else "no", str(fit.get("latents_90", "–")),
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


def plot(runs: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        return None
    cols = 4
    rows_n = max(1, math.ceil(len(runs) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.2 * rows_n), squeeze=False)
    for ax, run in zip(axes.flat, runs, strict=False):
        for label in (DEFAULT_CANDIDATE, CAA, "random latents", "finetune"):
            pts = sorted((r for r in run["rows"] if r["label"] == label),
                         key=lambda r: r["perplexity_ratio"])  # fmt: skip
            xs = [1.0] + [r["perplexity_ratio"] for r in pts]
            ys = [0.0] + [r["p_topic_delta"] for r in pts]
            ax.plot(xs, ys, marker="o", ms=3, label=label)
        row = default_row(run)
        if row:
            ax.plot([row["perplexity_ratio"]], [row["p_topic_delta"]], "k*", ms=10, label="default")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.axvline(2.0, color="grey", lw=0.5, ls=":")
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_title(f"{run['topic']} ({run['split']})", fontsize=9)
        ax.set_xlabel("× perplexity", fontsize=8)
        ax.set_ylabel("Δ P(topic)", fontsize=8)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


README_START = "<!-- benchmark table: scripts/run_topic_benchmark.py writes it -->"
README_END = "<!-- end of benchmark table -->"


def update_readme(path: Path, runs: list[dict[str, Any]], command: str) -> bool:
    """Replace the README's benchmark table (between its markers) with the held-out topics'
    summary; False when the README has no markers."""
    text = path.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        return False
    held = [r for r in runs if r["split"] == "heldout"]
    block = [README_START, "", f"Held-out topics ({len(held)}; `{command}`, "
             "[docs/benchmark.md](docs/benchmark.md)):", "", *summary_table(held), "",
             README_END]  # fmt: skip
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
    best = max(ahead, key=lambda name: ahead[name])
    if ahead[best] > len(held) / 2:
        return (f"**`{best}` is clearly ahead of CAA on most held-out topics** ({ahead[best]} of "
                f"{len(held)} at {MAIN_TARGET}× perplexity).")  # fmt: skip
    return (f"**No SAE rule is clearly ahead of CAA on most held-out topics.** The best, "
            f"`{best}`, is ahead on {ahead[best]} of {len(held)} at {MAIN_TARGET}× perplexity "
            "(paired intervals above 0) and tied on most others.")  # fmt: skip


def write_report(
    runs: list[dict[str, Any]], out: Path, *, command: str, seconds: float, threads: int,
    samples: int,
) -> Path:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    tuning = [r for r in runs if r["split"] == "tuning"]
    held = [r for r in runs if r["split"] == "heldout"]
    picture = plot(runs, out / "benchmark.png")
    n_held, n_steer = len(held), sum(default_steers(r) for r in held)
    topic_minutes = sum(r.get("seconds", 0.0) for r in runs) / 60
    stand = {r["topic"]: versus(matched(r, DEFAULT_CANDIDATE, MAIN_TARGET, "p_topic"))
             for r in held}  # fmt: skip
    behind = [t for t, s in stand.items() if s == "behind"]
    ahead = [t for t, s in stand.items() if s == "ahead"]
    lines = [
        "# The multi-topic benchmark",
        "",
        f"Regenerated by `{command}`; do not edit. The topic runs took {topic_minutes:.0f} min "
        "in all, each run's wall time added up (they ran as parallel processes on a 2-core "
        "machine shared with other jobs: an upper bound). The demo model, SAE and reference set "
        "(`storage/demo`), topics from `storage/topics` (`scripts/build_topics.py`: WordNet "
        "lexicographer files, the demo's held-out documents). Per topic, every rule is fitted on "
        "the topic's 32 `fit.txt` texts; steering is measured on neutral prompts (tuning topics: "
        "the 24 tuning prompts; held-out topics: the held-out evaluation prompts), "
        f"{samples} sampled continuations each, by the cosine to the centroid of the topic's "
        "*other* texts (`eval.txt`) and by P(topic) from a classifier of those texts against "
        "negatives from other files. Gains are paired with the unsteered model; curves are read "
        "at matched perplexity ratios; intervals are 95% paired bootstraps over prompts "
        "(`docs/method.md` §8).",
        "",
        f"**The default**: `{DEFAULT_CANDIDATE}` steered with `add` (error kept) at the strength "
        f"calibrated per topic (the largest whose perplexity ratio on the neutral tuning prompts "
        f"stays under {TARGET_RATIO}×). It was chosen on the tuning topics only.",
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
    for title, group in (("Held-out topics", held), ("Tuning topics", tuning)):
        if not group:
            continue
        lines += [f"## {title}", "", "Summary over topics:", "", *summary_table(group), "",
                  "The default at its calibrated strength:", "", *default_table(group), "",
                  f"Δ P(topic) at {MAIN_TARGET}× perplexity (▲ / ▼: ahead of / behind CAA, "
                  "paired interval; – : the curve never reaches that perplexity):", "",
                  *matched_table(group, MAIN_TARGET), "",
                  f"`{DEFAULT_CANDIDATE}` minus CAA, Δ P(topic), at matched perplexity:", "",
                  *diff_table(group, DEFAULT_CANDIDATE), "",
                  "`trained` minus CAA, Δ P(topic), at matched perplexity:", "",
                  *diff_table(group, "trained"), ""]  # fmt: skip
    if picture:
        lines += ["![Δ P(topic) against perplexity per topic](benchmark.png)", ""]
    path = out / "benchmark.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    summary = {"command": command, "seconds": seconds, "default": DEFAULT_CANDIDATE,
               "heldout_steers": [n_steer, n_held], "ahead": ahead, "behind": behind}  # fmt: skip
    (out / "benchmark.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return path
