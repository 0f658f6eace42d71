"""Evaluate steering on the demo assets: ``storage/demo/EVAL.md``, ``eval_plot.png``,
``eval_table.csv``.

    python scripts/run_demo_eval.py                 # the full default run (see EVAL.md for time)
    python scripts/run_demo_eval.py --quick --out /tmp/eval   # 4 prompts, two strengths

Every number in EVAL.md, including the sentences of its findings, is computed from this run:
regenerate it rather than editing it by hand.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # hf_sae_steer without installing the package

NEEDED = (
    "model/config.json",
    "sae/cfg.json",
    "alignment.txt",
    "prompts.txt",
    "scores/steering_config.json",
)
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--demo", type=Path, default=ROOT / "storage" / "demo", help="asset folder")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: --demo)")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    p.add_argument("--samples", type=int, default=5, help="continuations per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--n-prompts", type=int, default=None, help="first N prompts (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    # One thread: the demo model's matmuls are too small to gain from more, and on a busy
    # machine OpenMP threads spin: two threads measured ~15x slower than one there.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--wait", type=float, default=0.0, help="minutes to wait for the assets")
    p.add_argument("--quick", action="store_true", help="4 prompts, strengths 1 and 2, 1 sample")
    a = p.parse_args(argv)
    if a.quick:
        a.strengths, a.samples, a.n_prompts = [1.0, 2.0], 1, a.n_prompts or 4
    a.out = a.out or a.demo
    return a


def wait_for_assets(demo: Path, minutes: float) -> None:
    """The score artifact is built last: poll until every file the evaluation reads exists."""
    deadline = time.time() + 60 * minutes
    while True:
        missing = [name for name in NEEDED if not (demo / name).exists()]
        if not missing:
            return
        if time.time() > deadline:
            raise SystemExit(
                f"Demo assets missing in {demo}: {', '.join(missing)}. Build them "
                "with scripts/build_demo_assets.py (or pass --wait MINUTES)."
            )
        print(f"waiting for {', '.join(missing)} ...", flush=True)
        time.sleep(20)


def command(a: argparse.Namespace) -> str:
    parts = ["python scripts/run_demo_eval.py"]
    if a.quick:
        parts.append("--quick")
    if a.demo != ROOT / "storage" / "demo":
        parts.append(f"--demo {a.demo}")
    if a.out != a.demo:
        parts.append(f"--out {a.out}")
    defaults = parse_args([])
    for name in ("strengths", "samples", "max_new_tokens", "n_prompts", "seed", "batch_size"):
        value = getattr(a, name)
        if not a.quick and value != getattr(defaults, name):
            flag = "--" + name.replace("_", "-")
            parts.append(
                f"{flag} {' '.join(f'{v:g}' for v in value)}"
                if isinstance(value, list)
                else f"{flag} {value}"
            )
    return " ".join(parts)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    wait_for_assets(a.demo, a.wait)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_sae_steer import FeatureScores, evaluate, load_prompts, load_sae
    from hf_sae_steer.evaluation.eval_md import write_eval_md

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(a.demo / "model")
    model = AutoModelForCausalLM.from_pretrained(a.demo / "model").eval()
    sae = load_sae(str(a.demo / "sae"))
    scores = FeatureScores.from_pretrained(a.demo / "scores")
    prompts = load_prompts(a.demo / "prompts.txt")[: a.n_prompts]
    result = evaluate(
        model,
        tok,
        sae,
        scores,
        prompts,
        a.demo / "alignment.txt",
        strengths=a.strengths,
        samples=a.samples,
        max_new_tokens=a.max_new_tokens,
        seed=a.seed,
        batch_size=a.batch_size,
    )
    seconds = time.time() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    result.to_csv(a.out / "eval_table.csv")
    result.plot(a.out / "eval_plot.png")
    report = write_eval_md(
        result,
        scores,
        demo=a.demo,
        command=command(a),
        seconds=seconds,
        threads=a.threads,
        root=ROOT,
    )
    (a.out / "EVAL.md").write_text(report, encoding="utf-8")
    print(result.to_markdown())
    print(f"done in {seconds / 60:.1f} min: {a.out / 'EVAL.md'}")


if __name__ == "__main__":
    main()
