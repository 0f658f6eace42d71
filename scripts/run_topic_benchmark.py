"""The multi-topic benchmark, both directions: ``docs/benchmark.md`` with ``benchmark.png`` and
``benchmark.json``.

    python scripts/run_topic_benchmark.py --only medical,food,plant,person,artifact,location &
    python scripts/run_topic_benchmark.py --only animal,body,communication,substance,act,group
    python scripts/run_topic_benchmark.py --report-only --readme README.md   # both halves' runs
    python scripts/run_topic_benchmark.py --direction away     # steering away only
    python scripts/run_topic_benchmark.py --report-only --readme README.md
    python scripts/run_topic_benchmark.py --quick --out /tmp/bench   # a smoke run (CI)

Every cosine and P(topic) is a cross-source judge's (``storage/topics/<topic>/judge.txt``,
Webster 1913 definitions, against ``judge_negatives.jsonl``: ``evaluation/judges.py``), not the
topic's WordNet ``eval.txt``. *Toward*: the candidate rules, CAA and a random vector over norm
fractions on neutral prompts. *Away*: suppressions of the default rule's artifact on
topic-inviting prompts (openings of ``eval.txt`` texts, which no fit saw) and on neutral prompts
(``evaluation/away.py``).

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
    p.add_argument("--direction", choices=("toward", "away", "both"), default="both")
    p.add_argument("--samples", type=int, default=2, help="continuations per prompt")
    p.add_argument("--n-prompts", type=int, default=32, help="neutral prompts per topic")
    p.add_argument("--n-inviting", type=int, default=32, help="topic-inviting prompts per topic")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calibrate", action="store_true",
                   help="calibrate every candidate's strength (slow)")
    p.add_argument("--quick", action="store_true",
                   help="two topics, 6 prompts each way, 1 sample, 12 tokens")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from runs")
    p.add_argument("--readme", type=Path, default=None,
                   help="also rewrite this README's benchmark table (between its markers)")
    a = p.parse_args(argv)
    if a.quick:
        a.samples, a.n_prompts, a.n_inviting, a.n_boot, a.max_new_tokens = 1, 6, 6, 200, 12
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    from hf_sae_steer.evaluation.benchmark_md import load_runs, update_readme, write_report
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
        run_topics(a, topics, runs_dir)
    names = [t.name for t in load_topics(a.topics)] if a.report_only else [t.name for t in topics]
    runs = load_runs(runs_dir, names)
    away_runs = load_runs(runs_dir, [f"{n}.away" for n in names])
    command = "python scripts/run_topic_benchmark.py" + (" --quick" if a.quick else "")
    write_report(runs, a.out, command=command, seconds=time.time() - started,
                 threads=a.threads, samples=a.samples, away=away_runs)  # fmt: skip
    if a.readme is not None and not update_readme(a.readme, runs, command, away=away_runs):
        print(f"{a.readme} has no benchmark-table markers; left as it is")
    print(f"done in {(time.time() - started) / 60:.1f} min: {a.out / 'benchmark.md'}")


def run_topics(a: argparse.Namespace, topics: list, runs_dir: Path) -> None:
    from hf_sae_steer import load_prompts, load_sae
    from hf_sae_steer.data.embedders import load_embedder
    from hf_sae_steer.evaluation.away import run_away_topic, save_away
    from hf_sae_steer.evaluation.benchmark import (
        fit_candidates,
        judged,
        run_topic,
    )
    from hf_sae_steer.evaluation.benchmark_md import (
        CANDIDATES,
        DEFAULT_CANDIDATE,
        REFERENCE_POINT,
        save_run,
    )
    from hf_sae_steer.evaluation.judges import CachedEmbedder, build_judge, load_judge_texts
    from hf_sae_steer.models import load_model
    from hf_sae_steer.scoring.away import AWAY_PROMPTS
    from hf_sae_steer.scoring.fit import _calibrate_away

    model, tok = load_model(str(a.demo / "model"))
    sae = load_sae(a.demo / "sae")
    reference = load_prompts(a.demo / "reference.txt")
    prompt_sets = {
        "tuning": load_prompts(a.demo / "tune_prompts.txt"),
        "heldout": load_prompts(a.demo / "eval_prompts.txt"),
    }
    model_st, _ = load_embedder("sentence-transformers/all-MiniLM-L6-v2", None)
    embedder = CachedEmbedder(model_st)  # judge negatives and repeated texts embedded once
    for topic in topics:
        t0 = time.time()
        texts = load_judge_texts(a.topics, topic.name)
        judge = build_judge(embedder, texts, transfer=(topic.eval, topic.negatives), seed=a.seed)
        print(f"{topic.name}: judge held-out AUC {judge.heldout_auc:.3f}, transfer "
              f"{judge.transfer_auc:.3f} ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
        prompts = prompt_sets[topic.split][: a.n_prompts]
        options = dict(samples=a.samples, max_new_tokens=a.max_new_tokens, seed=a.seed,
                       embedder=embedder, n_boot=a.n_boot)  # fmt: skip
        artifacts = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if a.direction in ("toward", "both"):
                run = run_topic(
                    model, tok, sae, topic, reference, prompts, CANDIDATES,
                    default=DEFAULT_CANDIDATE, calibrate=a.calibrate, judge=judge,
                    judge_texts=texts, reference_point=REFERENCE_POINT, **options,
                )  # fmt: skip
                artifacts = run.artifacts
                save_run(run, runs_dir, seconds=time.time() - t0)
                print(f"{topic.name} toward: {time.time() - t0:.0f} s", flush=True)
            t1 = time.time()
            if a.direction in ("away", "both"):
                if artifacts is None:
                    plan = next(c for c in CANDIDATES if c.name == DEFAULT_CANDIDATE)
                    artifacts, _ = fit_candidates(
                        model, tok, sae, topic, reference, {plan.name: plan.fit_options()},
                        seed=a.seed, extra={"embedder": embedder},
                    )  # fmt: skip
                # The away recommendation's strength, measured as a fit with calibrate_strength
                # does (docs/method.md §9) on the tuning prompts, without the toward calibration.
                _calibrate_away(
                    model, tok, sae, artifacts[DEFAULT_CANDIDATE], topic.fit,
                    neutral=prompt_sets["tuning"][:AWAY_PROMPTS], seed=a.seed,
                )  # fmt: skip
                neutral = prompt_sets["heldout"][: a.n_prompts]  # never the calibration prompts
                away = run_away_topic(
                    model, tok, sae, topic, artifacts, DEFAULT_CANDIDATE, neutral,
                    measure=judged(judge, texts, topic), n_inviting=a.n_inviting, **options,
                )  # fmt: skip
                away.config["judge"] = judge.summary()
                save_away(away, runs_dir, seconds=time.time() - t1)
                print(f"{topic.name} away: {time.time() - t1:.0f} s", flush=True)


if __name__ == "__main__":
    main()
