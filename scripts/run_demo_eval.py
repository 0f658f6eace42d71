"""Evaluate steering on the demo assets: ``storage/demo/EVAL.md``, ``eval_plot.png``,
``eval_table.csv``.

    python scripts/run_demo_eval.py                      # the full run (see EVAL.md for time)
    python scripts/run_demo_eval.py --quick --out /tmp/eval   # 6 prompts, 1 sample, smoke run

The prompts are ``eval_prompts.txt`` (held out: nothing is chosen on them); the conditions are
``hf_sae_steer.evaluation.demo_eval.demo_conditions``. The topic is judged from another source
than the fit texts: the judge built from ``storage/topics/<topic>/judge.txt`` (Webster 1913
definitions) against ``judge_negatives.jsonl``, as the topic benchmark builds it; the classifier
trained on the fit texts themselves is reported beside it. Every number in EVAL.md, including
the sentences of its findings, is computed from this run: regenerate it rather than edit it.
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
    p.add_argument("--topics", type=Path, default=ROOT / "storage" / "topics",
                   help="folder of the judges' texts (scripts/build_judges.py)")
    p.add_argument("--topic", default="medical", help="the demo's topic: whose judge to use")
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
    for name in ("samples", "max_new_tokens", "n_prompts", "seed", "batch_size", "topic"):
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
    from hf_sae_steer import FeatureScores, load_prompts, load_sae
    from hf_sae_steer.data.embedders import load_embedder
    from hf_sae_steer.evaluation.demo_eval import evaluate_demo, fit_run_artifacts
    from hf_sae_steer.evaluation.eval_md import JUDGE_TITLES, write_eval_md
    from hf_sae_steer.evaluation.judges import CachedEmbedder, load_judge_texts
    from hf_sae_steer.evaluation.remeasure import with_columns_of
    from hf_sae_steer.models import load_model

    t0 = time.time()
    model, tok = load_model(str(a.demo / "model"))
    sae = load_sae(a.demo / "sae")
    reference = load_prompts(a.demo / "reference.txt")
    alignment = load_prompts(a.demo / "alignment.txt")
    judge_texts = load_judge_texts(a.topics, a.topic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the reports are part of EVAL.md
        scores = {
            "default": FeatureScores.from_pretrained(a.demo / "scores"),
            "seed": FeatureScores.from_pretrained(a.demo / "scores_seed"),
        }
    scores |= fit_run_artifacts(model, tok, sae, alignment, reference, seed=a.seed)
    print(f"artifacts ready ({time.time() - t0:.0f} s)", flush=True)
    embedder_st, embedder_name = load_embedder(scores["default"].embedder, None)
    prompts = load_prompts(a.demo / "eval_prompts.txt")[: a.n_prompts]
    result, same_source = evaluate_demo(
        model, tok, sae, scores, prompts, alignment=alignment, reference=reference,
        judge_texts=judge_texts, embedder=CachedEmbedder(embedder_st),
        embedder_name=embedder_name, samples=a.samples, max_new_tokens=a.max_new_tokens,
        seed=a.seed, batch_size=a.batch_size,
    )  # fmt: skip
    seconds = time.time() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    with_columns_of(result, same_source, "same_source_").to_csv(a.out / "eval_table.csv")
    result.plot(a.out / "eval_plot.png", titles=JUDGE_TITLES)
    report = write_eval_md(
        result, scores, same_source=same_source, demo=a.demo, command=command(a),
        seconds=seconds, threads=a.threads, root=ROOT, topics=a.topics,
    )  # fmt: skip
    (a.out / "EVAL.md").write_text(report, encoding="utf-8")
    print(result.to_markdown())
    print(f"done in {seconds / 60:.1f} min: {a.out / 'EVAL.md'}")


if __name__ == "__main__":
    main()
