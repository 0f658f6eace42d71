"""Reading ``scripts/explore_away.py``'s curves at matched neutral perplexity: paired bootstrap
intervals, per-run summaries and the tables (per topic and pooled) of saved runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

SEED = 0
TARGETS = (1.05, 1.10)


# -- reading curves at matched neutral perplexity --------------------------------------------
def weights(n: int, boots: int, rng: np.random.Generator) -> np.ndarray:
    picks = rng.integers(0, n, size=(boots, n))
    w = np.zeros((boots, n))
    np.add.at(w, (np.arange(boots)[:, None], picks), 1.0)
    return np.vstack([np.ones(n), w]) / n


def matched(curve: list[dict], target: float, w_inv, w_neu, side: str) -> np.ndarray:
    """Drop of P(topic) at neutral perplexity ``target`` per resample row (NaN: not reached);
    ``side`` is the side effect matched: ``lr_neutral`` (sampled continuations' perplexity) or
    ``forced_neutral`` (the steered model's perplexity of the unsteered continuations)."""
    from hf_sae_steer.evaluation.matched import at_ratio

    dp = np.stack([c["dp"] for c in curve])  # [points, prompts]
    lr = np.stack([np.nan_to_num(c[side]) for c in curve])
    gain, log_ratio = w_inv @ dp.T, w_neu @ lr.T
    out = at_ratio(gain, log_ratio, target)
    # A curve that never costs the budget is read at its strongest point (as docs/benchmark.md)
    under = np.isnan(out) & (log_ratio.max(axis=-1) < math.log(target))
    out[under] = gain[under, -1]
    return out


def interval(values: np.ndarray) -> str:
    est, boots = values[0], values[1:]
    if math.isnan(est):
        return "   –  "
    if np.isnan(boots).mean() > 0.025:
        return f"{est:+.3f} [n/a]"
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return f"{est:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def summarise(topic: str, curves: dict[str, list[dict]], base_p: float, boots: int,
              against: tuple[str, ...] = ("caa", "ablate")) -> dict:  # fmt: skip
    rng = np.random.default_rng(SEED)
    any_curve = next(iter(curves.values()))
    w_inv = weights(len(any_curve[0]["dp"]), boots, rng)
    w_neu = weights(len(any_curve[0]["lr_neutral"]), boots, rng)
    table: dict = {}
    for side, name in (("lr_neutral", "sampled"), ("forced_neutral", "teacher-forced")):
        print(f"\n== {topic}: unsteered P(topic) on inviting prompts {base_p:.3f}; matched at "
              f"{name} neutral perplexity")  # fmt: skip
        print(f"{'condition':34s} {'ΔP at 1.05x':>26s} {'ΔP at 1.10x':>26s}  vs "
              + " / ".join(against) + " at 1.10x")  # fmt: skip
        at = {(k, t): matched(c, t, w_inv, w_neu, side) for k, c in curves.items()
              for t in TARGETS}  # fmt: skip
        for label in curves:
            cells = [interval(at[(label, t)]) for t in TARGETS]
            diffs = []
            for other in against:
                key = next((k for k in curves if k.split(" ")[0] == other), None)
                if key is None or key == label:
                    continue
                diffs.append(interval(at[(label, 1.10)] - at[(key, 1.10)]))
            print(f"{label:34s} {cells[0]:>26s} {cells[1]:>26s}  {' / '.join(diffs)}")
            table.setdefault(name, {})[label] = {
                str(t): [at[(label, t)][0], *_bounds(at[(label, t)])] for t in TARGETS
            }
    return table


def _bounds(values: np.ndarray) -> list[float]:
    boots = values[1:]
    if math.isnan(values[0]) or np.isnan(boots).mean() > 0.025:
        return [math.nan, math.nan]
    return [float(v) for v in np.nanpercentile(boots, [2.5, 97.5])]


def print_points(label: str, strengths, curve: list[dict]) -> None:
    for s, c in zip(strengths, curve, strict=True):
        print(f"   {label:32s} s={s:<6.3g} ΔP {np.mean(c['dp']):+.3f}  neutral x"
              f"{math.exp(np.nanmean(c['lr_neutral'])):.3f} (forced x"
              f"{math.exp(np.nanmean(c['forced_neutral'])):.3f})  inviting x"
              f"{math.exp(np.nanmean(c['lr_inviting'])):.3f} (forced x"
              f"{math.exp(np.nanmean(c['forced_inviting'])):.3f})", flush=True)  # fmt: skip


def report(folder: Path, plan: str, topics: list[str], labels: list[str], boots: int,
           target: float = 1.10, side: str = "lr_neutral") -> None:  # fmt: skip
    """One markdown table from saved runs: per topic and condition, the drop of P(topic) on
    inviting prompts at ``target`` sampled neutral perplexity (95% interval), the inviting
    perplexity ratio there, and the paired difference to CAA subtraction and to ablation."""
    from hf_sae_steer.evaluation.matched import at_ratio

    print(f"\nMatched at {'sampled' if side == 'lr_neutral' else 'teacher-forced'} neutral "
          "perplexity.\n")  # fmt: skip
    print(f"| topic | condition | ΔP(topic) at {target:.2f}x neutral ppl | inviting ppl there "
          "| minus CAA | minus ablation |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    pooled: dict[str, list[np.ndarray]] = {}  # per label: per topic [rows] of (value, -caa, -abl)
    for name in topics:
        path = folder / f"{plan}_{name}.json"
        if not path.exists():
            continue
        run = json.loads(path.read_text())
        conds = run["conditions"]
        curves = {k: [{f: np.array(v, dtype=float) if isinstance(v, list) and f != "texts" else v
                       for f, v in p.items()} for p in c["points"]] for k, c in conds.items()}
        rng = np.random.default_rng(SEED)
        first = next(iter(curves.values()))[0]
        w_inv = weights(len(first["dp"]), boots, rng)
        w_neu = weights(len(first["lr_neutral"]), boots, rng)
        at = {k: matched(c, target, w_inv, w_neu, side) for k, c in curves.items()}
        for label in labels:
            key = next((k for k in curves if k == label or k.startswith(label + " ")), None)
            if key is None:
                continue
            c = curves[key]
            lr = np.stack([np.nan_to_num(p[side]) for p in c])
            li = np.stack([np.nan_to_num(p["lr_inviting"]) for p in c])
            inv = at_ratio(w_inv[:1] @ li.T, w_neu[:1] @ lr.T, target)[0]
            inv_s = "–" if math.isnan(inv) else f"{math.exp(inv):.2f}"
            diffs = [interval(at[key] - at[b]) if b in at and b != key else ""
                     for b in ("caa", "ablate")]  # fmt: skip
            print(f"| {name} (P {run['base_p']:.2f}) | {key} | {interval(at[key])} | {inv_s} "
                  f"| {diffs[0]} | {diffs[1]} |")  # fmt: skip
            if "caa" in at and "ablate" in at:
                pooled.setdefault(label, []).append(
                    np.stack([at[key], at[key] - at["caa"], at[key] - at["ablate"]])
                )
    print(f"\nPooled over topics (mean of the per-topic values; prompts resampled within each "
          f"topic), at {target:.2f}x:\n")  # fmt: skip
    print("| condition | topics | mean ΔP(topic) | minus CAA | minus ablation | ahead of CAA "
          "(point) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for label, per_topic in pooled.items():
        stacked = np.stack(per_topic)  # [topics, 3, rows]
        mean = stacked.mean(axis=0)  # NaN where any topic never reaches the target
        ahead = int((stacked[:, 1, 0] < 0).sum())
        print(f"| {label} | {len(per_topic)} | {interval(mean[0])} | {interval(mean[1])} "
              f"| {interval(mean[2])} | {ahead} of {len(per_topic)} |")  # fmt: skip
