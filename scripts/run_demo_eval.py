"""Evaluate steering on the demo assets: ``storage/demo/EVAL.md``, ``eval_plot.png``,
``eval_table.csv``.

    python scripts/run_demo_eval.py                      # the full run (see EVAL.md for time)
    python scripts/run_demo_eval.py --quick --out /tmp/eval   # 6 prompts, 1 sample, smoke run

The prompts are ``eval_prompts.txt`` (held out: nothing is chosen on them); the conditions are
``hf_sae_steer.evaluation.eval_md.demo_conditions``. Every number in EVAL.md, including the
sentences of its findings, is computed from this run: regenerate it rather than edit it.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # hf_sae_steer without installing the package

NEEDED = (
    "model/config.json",
    "sae/cfg.json",
    "alignment.txt",
    "reference.txt",
    "eval_prompts.txt",
    "scores/steering_config.json",
    "scores_seed/steering_config.json",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--demo", type=Path, default=ROOT / "storage" / "demo", help="asset folder")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: --demo)")
    p.add_argument("--samples", type=int, default=3, help="continuations per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--n-prompts", type=int, default=None, help="first N prompts (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="6 prompts, 1 sample")
    a = p.parse_args(argv)
    if a.quick:
        a.samples, a.n_prompts = 1, a.n_prompts or 6
    a.out = a.out or a.demo
    return a


def command(a: argparse.Namespace) -> str:
    parts = ["python scripts/run_demo_eval.py"] + (["--quick"] if a.quick else [])
    defaults = parse_args([])
    for name in ("samples", "max_new_tokens", "n_prompts", "seed", "batch_size"):
        value = getattr(a, name)
        if not a.quick and value != getattr(defaults, name):
            parts.append(f"--{name.replace('_', '-')} {value}")
    if a.out != a.demo:
        parts.append(f"--out {a.out}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    missing = [name for name in NEEDED if not (a.demo / name).exists()]
    if missing:
        raise SystemExit(f"Demo assets missing in {a.demo}: {', '.join(missing)}; build them "
                         "with scripts/build_demo_assets.py.")  # fmt: skip
    from hf_sae_steer import FeatureScores, evaluate, load_prompts, load_sae
    from hf_sae_steer.evaluation.eval_md import demo_conditions, write_eval_md
    from hf_sae_steer.models import load_model

    t0 = time.time()
    model, tok = load_model(str(a.demo / "model"))
    sae = load_sae(a.demo / "sae")
    reference, alignment = a.demo / "reference.txt", a.demo / "alignment.txt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the reports are part of EVAL.md
        scores = {
            "default": FeatureScores.from_pretrained(a.demo / "scores"),
            "seed": FeatureScores.from_pretrained(a.demo / "scores_seed"),
            "support": FeatureScores.fit(
                model, tok, sae, reference=load_prompts(reference),
                alignment=load_prompts(alignment), rule="support", progress=False,
            ),
        }  # fmt: skip
    prompts = load_prompts(a.demo / "eval_prompts.txt")[: a.n_prompts]
    result = evaluate(
        model, tok, sae, scores, prompts, alignment, reference=reference,
        conditions=demo_conditions((scores["default"].recommended or {}).get("norm_fraction")),
        samples=a.samples, max_new_tokens=a.max_new_tokens,
        seed=a.seed, batch_size=a.batch_size,
    )  # fmt: skip
    seconds = time.time() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    result.to_csv(a.out / "eval_table.csv")
    result.plot(a.out / "eval_plot.png")
    report = write_eval_md(
        result, scores, demo=a.demo, command=command(a), seconds=seconds, threads=a.threads,
        root=ROOT,
    )  # fmt: skip
    (a.out / "EVAL.md").write_text(report, encoding="utf-8")
    print(result.to_markdown())
    print(f"done in {seconds / 60:.1f} min: {a.out / 'EVAL.md'}")


if __name__ == "__main__":
    main()
