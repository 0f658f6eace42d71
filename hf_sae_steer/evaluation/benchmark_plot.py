"""``docs/benchmark.png``: per topic, the toward curves (Δ P(topic) against perplexity) and the
away curves (Δ P(topic) on inviting prompts against perplexity on neutral prompts)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TOWARD_SHOWN = ("CAA", "random vector")


def plot(
    runs: list[dict[str, Any]], away: list[dict[str, Any]], path: Path, default: str
) -> Path | None:
    """Draw every toward run, then every away run, four panels a row; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        return None
    panels = [("toward", r) for r in runs] + [("away", r) for r in away]
    if not panels:
        return None
    cols = 4
    rows_n = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.2 * rows_n), squeeze=False)
    for ax, (kind, run) in zip(axes.flat, panels, strict=False):
        if kind == "toward":
            for label in (default, *TOWARD_SHOWN):
                pts = sorted((r for r in run["rows"] if r["label"] == label),
                             key=lambda r: r.get("norm_fraction") or 0.0)  # weakest first
                xs = [1.0] + [r["perplexity_ratio"] for r in pts]
                ys = [0.0] + [r["p_topic_delta"] for r in pts]
                ax.plot(xs, ys, marker="o", ms=3, label=label)
            own = [r for r in run["rows"] if r["label"] == f"{default} (calibrated)"]
            if own:
                ax.plot([own[0]["perplexity_ratio"]], [own[0]["p_topic_delta"]], "k*", ms=9,
                        label="default, recommended strength")  # fmt: skip
            ax.set_xlabel("× perplexity", fontsize=8)
            ax.set_ylabel("Δ P(topic)", fontsize=8)
        else:
            labels = dict.fromkeys(r["label"] for r in run["points"])
            for label in labels:
                pts = [r for r in run["points"] if r["label"] == label]
                xs = [1.0] + [r["neutral_ratio"] for r in pts]
                ys = [0.0] + [r["p_topic"] for r in pts]
                ax.plot(xs, ys, marker="o", ms=3, label=label)
            for budget in (1.05, 1.10):
                ax.axvline(budget, color="grey", lw=0.5, ls=":")
            ax.set_xlabel("× perplexity, neutral prompts", fontsize=8)
            ax.set_ylabel("Δ P(topic), inviting prompts", fontsize=8)
        ax.set_xscale("log")
        ticks = (0.9, 1.0, 1.25, 1.5, 2.0, 3.0) if kind == "toward" else (1.0, 1.05, 1.1, 1.25, 1.5)
        ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_title(f"{run['topic']} ({run['split']}), {kind}", fontsize=9)
        if ax is axes.flat[0] or (kind == "away" and ax is axes.flat[len(runs)]):
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
