"""The result of :func:`~hf_sae_steer.evaluation.sweep.evaluate`: a table, its samples, writers,
a plot."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hf_sae_steer.evaluation.metrics import bootstrap_ci

# Per-continuation measures summarised in every row (mean, _lo, _hi).
MEASURES = ("relevance_centroid", "relevance_nearest", "perplexity", "repetition")
COLORS = {
    "orig": "black",
    "sae": "tab:gray",
    "clamp": "tab:blue",
    "weight": "tab:orange",
    "swap": "tab:red",
}


def label(method: str, preserve_error: bool | None) -> str:
    """``swap``, ``swap+err`` (preserve_error), ``sae+err (identity)``."""
    if not preserve_error:
        return method
    return "sae+err (identity)" if method == "sae" else f"{method}+err"


def summarise(
    records: list[dict[str, Any]], timing: dict[tuple, tuple[int, float]], n_boot: int, seed: int
) -> list[dict[str, Any]]:
    """One row per configuration: means and 95% intervals, bootstrapped over prompts."""
    by_config: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        by_config.setdefault((r["method"], r["preserve_error"], r["strength"]), []).append(r)
    base = {(r["prompt_index"], r["sample"]): r for r in by_config.get(("orig", None, None), [])}
    rows = []
    for (method, keep_err, strength), recs in by_config.items():
        groups = [r["prompt_index"] for r in recs]
        row: dict[str, Any] = {
            "method": method,
            "preserve_error": keep_err,
            "strength": strength,
            "label": label(method, keep_err),
            "n": len(recs),
        }
        for name in MEASURES:
            values = np.array([r[name] for r in recs], dtype=np.float64)
            if name == "perplexity":  # heavy-tailed: a geometric mean, interval on the log scale
                m, lo, hi = (
                    math.exp(v) for v in bootstrap_ci(np.log(values), n_boot, seed, groups=groups)
                )
            else:
                m, lo, hi = bootstrap_ci(values, n_boot, seed, groups=groups)
            row.update({name: m, f"{name}_lo": lo, f"{name}_hi": hi})
        if base:  # paired with orig's continuation from the same prompt and seed
            diffs = [
                r["relevance_centroid"]
                - base[(r["prompt_index"], r["sample"])]["relevance_centroid"]
                for r in recs
            ]
            m, lo, hi = bootstrap_ci(diffs, n_boot, seed, groups=groups)
            row.update(relevance_delta=m, relevance_delta_lo=lo, relevance_delta_hi=hi)
        n_tokens, seconds = timing[(method, keep_err, strength)]
        row["n_tokens_mean"] = float(np.mean([r["n_tokens"] for r in recs]))
        row["tokens_per_s"] = n_tokens / seconds if seconds > 0 else math.nan
        rows.append(row)
    return rows


def _bars(rows: list[dict[str, Any]], name: str) -> tuple[list[float], list[list[float]]]:
    """Means and matplotlib's asymmetric error bars ``[[below], [above]]`` of one measure."""
    means = [r[name] for r in rows]
    below = [r[name] - r[f"{name}_lo"] for r in rows]
    above = [r[f"{name}_hi"] - r[name] for r in rows]
    return means, [below, above]


def _ci(row: dict[str, Any], name: str, digits: int = 3) -> str:
    m, lo, hi = row.get(name), row.get(f"{name}_lo"), row.get(f"{name}_hi")
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


@dataclass
class EvalResult:
    """``rows``: one dict per configuration (method, preserve_error, strength, n, each measure's
    mean with ``_lo``/``_hi`` 95% bootstrap bounds, ``relevance_delta`` paired against orig,
    ``n_tokens_mean``, ``tokens_per_s``); ``samples``: one dict per continuation; ``config``:
    the evaluation settings."""

    rows: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    def row(
        self, method: str, preserve_error: bool | None = None, strength: float | None = None
    ) -> dict[str, Any]:
        """The row of one configuration (``orig`` needs no preserve_error or strength)."""
        for r in self.rows:
            if r["method"] == method and (
                method == "orig"
                or (r["preserve_error"] == preserve_error and r["strength"] == strength)
            ):
                return r
        raise KeyError(f"No row for {label(method, preserve_error)} at strength {strength}.")

    def to_markdown(self) -> str:
        """A markdown table: mean [95% CI] of each measure per configuration."""
        head = [
            "method",
            "preserve_error",
            "strength",
            "n",
            "relevance (centroid)",
            "relevance (nearest)",
            "Δ relevance vs orig (paired)",
            "perplexity (geo. mean)",
            "repeated 3-grams",
            "tokens",
            "tokens/s",
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            pe = "–" if r["preserve_error"] is None else ("yes" if r["preserve_error"] else "no")
            if r["method"] == "sae" and r["preserve_error"]:
                pe = "yes (identity)"
            cells = [
                r["method"],
                pe,
                "–" if r["strength"] is None else f"{r['strength']:g}",
                str(r["n"]),
                _ci(r, "relevance_centroid"),
                _ci(r, "relevance_nearest"),
                "–" if r["method"] == "orig" else _ci(r, "relevance_delta"),
                _ci(r, "perplexity", 1),
                _ci(r, "repetition"),
                f"{r['n_tokens_mean']:.1f}",
                f"{r['tokens_per_s']:.0f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        return path

    def to_jsonl(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = (json.dumps(s, ensure_ascii=False) for s in self.samples)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """PNG, two panels. Left: concept relevance (centroid) against perplexity, one curve per
        method and preserve_error across strengths, 95% intervals as error bars, ``orig`` as a
        star. Right: the paired relevance gain over orig against strength."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure  # no pyplot: no global backend state

        fig = Figure(figsize=(14, 6.5))
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        curves: dict[str, list[dict[str, Any]]] = {}
        for r in self.rows:
            curves.setdefault(r["label"], []).append(r)
        dodged: list[str] = []
        for name, rows in curves.items():
            rows = sorted(rows, key=lambda r: r["strength"] or 0.0)
            method, keep_err = rows[0]["method"], rows[0]["preserve_error"]
            if method == "orig":
                x, y = _bars(rows, "perplexity"), _bars(rows, "relevance_centroid")
                left.errorbar(
                    x[0],
                    y[0],
                    xerr=x[1],
                    yerr=y[1],
                    fmt="*",
                    ms=16,
                    color="black",
                    capsize=3,
                    label="orig (unsteered)",
                    zorder=5,
                )
                left.axhline(y[0][0], color="black", lw=0.6, ls=":", zorder=0)
                continue
            style = {
                "color": COLORS.get(method),
                "ls": "--" if keep_err else "-",
                "marker": "s" if keep_err else "o",
                "mfc": "white" if keep_err else None,
                "capsize": 2,
                "lw": 1.4,
                "alpha": 0.9,
                "label": name,
            }
            x, y = _bars(rows, "perplexity"), _bars(rows, "relevance_centroid")
            left.errorbar(x[0], y[0], xerr=x[1], yerr=y[1], **style)
            for r in rows:
                left.annotate(
                    f"{r['strength']:g}",
                    (r["perplexity"], r["relevance_centroid"]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                    color=style["color"],
                )
            if "relevance_delta" in rows[0]:
                d = _bars(rows, "relevance_delta")
                shift = 2 ** (0.025 * (len(dodged) - 4))  # side by side, bars readable
                dodged.append(name)
                right.errorbar([r["strength"] * shift for r in rows], d[0], yerr=d[1], **style)
        xs = [r[k] for r in self.rows for k in ("perplexity_lo", "perplexity_hi")]
        if xs and min(xs) > 0 and max(xs) / min(xs) > 8:
            left.set_xscale("log")
        left.set_xlabel("perplexity of the continuation under the unsteered model (geometric mean)")
        left.set_ylabel("concept relevance: cosine to the alignment centroid")
        left.set_title("relevance vs fluency cost (numbers = strength)", fontsize=10)
        left.legend(
            fontsize=8, loc="best", title="method (+err = preserve_error)", title_fontsize=8
        )
        right.axhline(0.0, color="black", lw=0.8, ls=":")
        strengths = sorted({r["strength"] for r in self.rows if r["strength"] is not None})
        if strengths and strengths[0] > 0:
            right.set_xscale("log", base=2)
        right.set_xticks(strengths, [f"{s:g}" for s in strengths])
        right.minorticks_off()
        right.set_xlabel("strength")
        right.set_ylabel("relevance gain over orig (paired: same prompt and seed)")
        right.set_title("paired gain in relevance", fontsize=10)
        for ax in (left, right):
            ax.grid(alpha=0.3)
        n = self.config.get("n_prompts"), self.config.get("samples")
        fig.suptitle(
            title
            or f"Steering towards the alignment set: {n[0]} prompts × {n[1]} samples per "
            "point, bars = 95% bootstrap CI over prompts",
            fontsize=11,
        )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return path

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write table.md, table.csv, samples.jsonl, plot.png and config.json into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "table.md").write_text(self.to_markdown(), encoding="utf-8")
        (folder / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        return {
            "table.md": folder / "table.md",
            "table.csv": self.to_csv(folder / "table.csv"),
            "samples.jsonl": self.to_jsonl(folder / "samples.jsonl"),
            "plot.png": self.plot(folder / "plot.png"),
            "config.json": folder / "config.json",
        }
