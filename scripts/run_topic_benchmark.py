"""The multi-topic benchmark: ``docs/benchmark.md`` with ``benchmark.png`` and ``benchmark.json``.

    python scripts/run_topic_benchmark.py                 # every topic (see benchmark.md: time)
    python scripts/run_topic_benchmark.py --split tuning  # tuning topics only (choose defaults)
    python scripts/run_topic_benchmark.py --quick --out /tmp/bench   # a smoke run (CI)

Topics come from ``storage/topics`` (``scripts/build_topics.py``), the model, SAE and reference
set from ``storage/demo``. Tuning topics are evaluated on the demo's tuning prompts, held-out
topics on its held-out evaluation prompts; every default (rule, method, strength rule) is chosen
on the tuning topics alone. Each topic's run is kept in ``<out>/benchmark_runs/`` so the report
can be rewritten without rerunning (``--report-only``). Regenerate, never edit, the report.
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--topics", type=Path, default=ROOT / "storage" / "topics")
    p.add_argument("--demo", type=Path, default=ROOT / "storage" / "demo")
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    p.add_argument("--split", choices=("tuning", "heldout", "all"), default="all")
    p.add_argument("--only", default=None, help="comma-separated topic names")
    p.add_argument("--samples", type=int, default=2, help="continuations per prompt")
    p.add_argument("--n-prompts", type=int, default=40, help="held-out prompts per topic")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="two topics, 6 prompts, 1 sample")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from runs")
    p.add_argument("--readme", type=Path, default=None,
                   help="also rewrite this README's benchmark table (between its markers)")
    a = p.parse_args(argv)
    if a.quick:
        a.samples, a.n_prompts, a.n_boot = 1, 6, 200
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    from hf_sae_steer.evaluation.benchmark import run_topic
    from hf_sae_steer.evaluation.benchmark_md import (
        CANDIDATES,
        DEFAULT_CANDIDATE,
        load_runs,
        save_run,
        update_readme,
        write_report,
    )
    from hf_sae_steer.evaluation.topics import load_topics

    runs_dir = a.out / "benchmark_runs"
    topics = load_topics(a.topics, None if a.split == "all" else a.split)
    if a.only:
        wanted = set(a.only.split(","))
        topics = [t for t in topics if t.name in wanted]
    if a.quick:
        topics = [next(t for t in topics if t.split == s) for s in ("tuning", "heldout")
                  if any(t.split == s for t in topics)]  # fmt: skip
    started = time.time()
    if not a.report_only:
        from hf_sae_steer import load_prompts, load_sae
        from hf_sae_steer.data.embedders import load_embedder
        from hf_sae_steer.models import load_model

        model, tok = load_model(str(a.demo / "model"))
        sae = load_sae(a.demo / "sae")
        reference = load_prompts(a.demo / "reference.txt")
        prompt_sets = {
            "tuning": load_prompts(a.demo / "tune_prompts.txt"),
            "heldout": load_prompts(a.demo / "eval_prompts.txt")[: a.n_prompts],
        }
        embedder, _ = load_embedder("sentence-transformers/all-MiniLM-L6-v2", None)
        for topic in topics:
            t0 = time.time()
            prompts = prompt_sets[topic.split][: a.n_prompts]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run = run_topic(
                    model, tok, sae, topic, reference, prompts, CANDIDATES,
                    default=DEFAULT_CANDIDATE, samples=a.samples,
                    max_new_tokens=a.max_new_tokens, seed=a.seed, embedder=embedder,
                    n_boot=a.n_boot, baselines=True,
                )  # fmt: skip
            save_run(run, runs_dir, seconds=time.time() - t0)
            print(f"{topic.name} ({topic.split}): {time.time() - t0:.0f} s", flush=True)
    runs = load_runs(runs_dir, [t.name for t in topics])
    command = "python scripts/run_topic_benchmark.py" + (" --quick" if a.quick else "")
    if a.split != "all":
        command += f" --split {a.split}"
    write_report(runs, a.out, command=command, seconds=time.time() - started,
                 threads=a.threads, samples=a.samples)  # fmt: skip
    if a.readme is not None and not update_readme(a.readme, runs, command):
        print(f"{a.readme} has no benchmark-table markers; left as it is")
    print(f"done in {(time.time() - started) / 60:.1f} min: {a.out / 'benchmark.md'}")


if __name__ == "__main__":
    main()
