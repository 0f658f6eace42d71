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
from hf_sae_steer.folders import write_folder

# Per-continuation measures summarised in every row (mean, _lo, _hi).
MEASURES = ("relevance_centroid", "relevance_nearest", "p_topic", "perplexity", "repetition")
# Measures also compared with orig's continuation from the same prompt and seed.
PAIRED = ("relevance_centroid", "p_topic")
Key = tuple[str, float | None, float | None]  # (condition, strength, norm fraction)


def point(row: dict[str, Any]) -> str:
    """How a row's point reads: ``ρ=0.5``, ``×2``, ``5 epochs`` or ``–``."""
    if row.get("norm_fraction") is not None:
        return f"ρ={row['norm_fraction']:g}"
    if row.get("method") == "finetune":
        return f"{row['strength']:g} epochs"
    return "–" if row.get("strength") is None else f"×{row['strength']:g}"


def summarise(
    records: list[dict[str, Any]], timing: dict[Key, tuple[int, float]], n_boot: int, seed: int
) -> list[dict[str, Any]]:
    """One row per condition point: means and 95% intervals, bootstrapped over prompts; the
    paired gains over ``orig`` (same prompt, same seed) and the perplexity ratio to it."""
    by_key: dict[Key, list[dict[str, Any]]] = {}
    for r in records:
        by_key.setdefault((r["label"], r["strength"], r["norm_fraction"]), []).append(r)
    base = {(r["prompt_index"], r["sample"]): r for r in by_key.get(("orig", None, None), [])}
    rows = []
    for key, recs in by_key.items():
        groups = [r["prompt_index"] for r in recs]
        first = recs[0]
        row: dict[str, Any] = {
            name: first[name]
            for name in ("label", "kind", "method", "preserve_error", "strength", "norm_fraction")
        }
        row["n"] = len(recs)
        if first.get("train_seconds") is not None:
            row["train_seconds"] = first["train_seconds"]
        for name in MEASURES:
            values = np.array([r[name] for r in recs], dtype=np.float64)
            if name == "perplexity":  # heavy-tailed: a geometric mean, interval on the log scale
                m, lo, hi = (
                    math.exp(v) for v in bootstrap_ci(np.log(values), n_boot, seed, groups=groups)
                )
            else:
                m, lo, hi = bootstrap_ci(values, n_boot, seed, groups=groups)
            row.update({name: m, f"{name}_lo": lo, f"{name}_hi": hi})
        if base:
            for name in PAIRED:
                diffs = [r[name] - base[(r["prompt_index"], r["sample"])][name] for r in recs]
                m, lo, hi = bootstrap_ci(diffs, n_boot, seed, groups=groups)
                row.update({f"{name}_delta": m, f"{name}_delta_lo": lo, f"{name}_delta_hi": hi})
            logs = [
                math.log(r["perplexity"] / base[(r["prompt_index"], r["sample"])]["perplexity"])
                for r in recs
            ]
            m, lo, hi = (math.exp(v) for v in bootstrap_ci(logs, n_boot, seed, groups=groups))
            row.update(perplexity_ratio=m, perplexity_ratio_lo=lo, perplexity_ratio_hi=hi)
        n_tokens, seconds = timing[key]
        row["n_tokens_mean"] = float(np.mean([r["n_tokens"] for r in recs]))
        row["tokens_per_s"] = n_tokens / seconds if seconds > 0 else math.nan
        rows.append(row)
    return rows


def ci(row: dict[str, Any], name: str, digits: int = 3, signed: bool = False) -> str:
    """``mean [lo, hi]`` of one measure of a row (``–`` when absent)."""
    m = row.get(name)
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(m)} [{f.format(row[name + '_lo'])}, {f.format(row[name + '_hi'])}]"


def steers(row: dict[str, Any]) -> bool:
    """Both relevance measures' paired gains have intervals above 0."""
    return all(row.get(f"{name}_delta_lo", -1.0) > 0 for name in PAIRED)


@dataclass
class EvalResult:
    """``rows``: one dict per condition point (label, kind, method, preserve_error, strength,
    norm_fraction, n, each measure's mean with ``_lo``/``_hi`` 95% bootstrap bounds, the paired
    ``*_delta`` gains over orig, ``perplexity_ratio``, ``n_tokens_mean``, ``tokens_per_s``);
    ``samples``: one dict per continuation; ``config``: the evaluation settings."""

    rows: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    def row(
        self, label: str, strength: float | None = None, norm_fraction: float | None = None
    ) -> dict[str, Any]:
        """The row of one condition point (``orig`` and ``prefix`` need no point)."""
        for r in self.rows:
            if r["label"] == label and (
                r["strength"] is None and r["norm_fraction"] is None
                or (strength is None or r["strength"] == strength)
                and (norm_fraction is None or r["norm_fraction"] == norm_fraction)
            ):
                return r
        raise KeyError(f"No row for {label} at strength {strength}, norm fraction {norm_fraction}.")

    def curve(self, label: str) -> list[dict[str, Any]]:
        """The rows of one condition in the order of their points."""
        rows = [r for r in self.rows if r["label"] == label]
        return sorted(rows, key=lambda r: (r["norm_fraction"] or 0.0, r["strength"] or 0.0))

    def to_markdown(self) -> str:
        """A markdown table: mean [95% CI] of each measure per condition point."""
        head = [
            "condition", "point", "n", "cosine to centroid", "Δ cosine (paired)", "P(topic)",
            "Δ P(topic) (paired)", "perplexity", "× orig's", "repeated 3-grams", "tokens/s",
        ]  # fmt: skip
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            base = r["label"] == "orig"
            cells = [
                r["label"],
                point(r),
                str(r["n"]),
                ci(r, "relevance_centroid"),
                "–" if base else ci(r, "relevance_centroid_delta", signed=True),
                ci(r, "p_topic"),
                "–" if base else ci(r, "p_topic_delta", signed=True),
                ci(r, "perplexity", 1),
                "–" if base else ci(r, "perplexity_ratio", 2),
                ci(r, "repetition"),
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

    def plot(
        self, path: str | Path, title: str | None = None, titles: dict[str, str] | None = None
    ) -> Path:
        """PNG: the paired gain in each relevance measure against the perplexity ratio to orig,
        one curve per condition through its points, 95% intervals as error bars; orig at (1, 0).
        Reading across at a fixed perplexity compares conditions at matched fluency cost.
        ``titles`` names the measures (e.g. when a judge other than the alignment set's
        measured them)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure  # no pyplot: no global backend state

        measures = [m for m in PAIRED if any(f"{m}_delta" in r for r in self.rows)]
        has_p = any(not math.isnan(r.get("p_topic", math.nan)) for r in self.rows)
        measures = [m for m in measures if m != "p_topic" or has_p]
        fig = Figure(figsize=(7 * len(measures), 6.5))
        FigureCanvasAgg(fig)
        axes = np.atleast_1d(fig.subplots(1, len(measures)))
        titles = titles or {"relevance_centroid": "Δ cosine to the alignment centroid",
                            "p_topic": "Δ P(topic) (classifier)"}  # fmt: skip
        from matplotlib import colormaps

        palette = colormaps["tab20"].colors[::2] + colormaps["tab20"].colors[1::2]
        labels = [lab for lab in dict.fromkeys(r["label"] for r in self.rows) if lab != "orig"]
        steered = [lab for lab in labels if self.curve(lab)[0]["kind"] != "control"]
        colour = {lab: palette[i % len(palette)] for i, lab in enumerate(steered)}
        for ax, name in zip(axes, measures, strict=True):
            for lab in labels:
                rows = self.curve(lab)
                if not rows or f"{name}_delta" not in rows[0]:
                    continue
                kind = rows[0]["kind"]
                x = [r["perplexity_ratio"] for r in rows]
                y = [r[f"{name}_delta"] for r in rows]
                yerr = [[r[f"{name}_delta"] - r[f"{name}_delta_lo"] for r in rows],
                        [r[f"{name}_delta_hi"] - r[f"{name}_delta"] for r in rows]]  # fmt: skip
                style = {"ls": ":" if kind == "control" else "--" if kind == "baseline" else "-",
                         "marker": "x" if kind == "control" else "s" if kind == "baseline" else "o",
                         "color": colour.get(lab, "gray")}  # fmt: skip
                ax.errorbar(x, y, yerr=yerr, capsize=2, lw=1.3, alpha=0.9, label=lab, **style)
                for r, xi, yi in zip(rows, x, y, strict=True):
                    ax.annotate(point(r), (xi, yi), textcoords="offset points", xytext=(3, 3),
                                fontsize=6, color=style["color"])  # fmt: skip
            ax.axhline(0.0, color="black", lw=0.8, ls=":")
            ax.plot([1.0], [0.0], marker="*", ms=14, color="black", label="orig (unsteered)")
            ax.set_xscale("log")
            ax.set_xlabel("perplexity under the unsteered model, × orig's (paired)")
            ax.set_ylabel(f"{titles[name]}, paired gain over orig")
            ax.set_title(titles[name], fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7, loc="best")
        n = self.config.get("n_prompts"), self.config.get("samples")
        fig.suptitle(
            title
            or f"Steering towards the alignment set: {n[0]} held-out prompts × {n[1]} samples "
            "per point; bars = 95% bootstrap CI over prompts",
            fontsize=11,
        )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return path

    def save(self, folder: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
        """Write table.md, table.csv, samples.jsonl, plot.png and eval_config.json into
        ``folder``, atomically. A folder holding other files is refused unless ``overwrite``."""

        def write(tmp: Path) -> None:
            (tmp / "table.md").write_text(self.to_markdown(), encoding="utf-8")
            config = {"kind": EVAL_KIND, **self.config}
            (tmp / "eval_config.json").write_text(json.dumps(config, indent=2) + "\n")
            self.to_csv(tmp / "table.csv")
            self.to_jsonl(tmp / "samples.jsonl")
            self.plot(tmp / "plot.png")

        path = write_folder(folder, EVAL_FILES, write, overwrite=overwrite, is_ours=is_evaluation)
        return {name: path / name for name in EVAL_FILES}


EVAL_KIND = "hf_sae_steer/evaluation"
EVAL_FILES = ("table.md", "table.csv", "samples.jsonl", "plot.png", "eval_config.json")


def is_evaluation(folder: Path) -> bool:
    try:
        config = json.loads((folder / "eval_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("kind") == EVAL_KIND
