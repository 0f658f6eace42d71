#!/usr/bin/env python
"""What the strength calibration costs on the demo (``storage/demo``), in time and in LM tokens.

Time: default fits (``FeatureScores.fit`` with the demo's model, SAE, ``reference.txt`` and
``alignment.txt``: the default rule, MiniLM embedder, calibration on) against the same fits
with ``calibrate_strength=False``, alternating, in one process; printed: the fits' medians and
the strength calibration's share of a calibrated fit (its ``calibration_seconds`` over
``fit_seconds``; target <= 25%), and the share of everything ``calibrate_strength`` adds (the
fits' difference: with it, the suppression's calibration too, ``docs/method.md`` §9). By
default the fits run in this process after one untimed warm-up fit (the embedder then loads
faster); ``--fresh`` runs each in a new process, as ``hf-sae-steer score`` does. ``--grid``
also times the full grid on the last fit, and the search, for three seeds, and compares their
chosen points.

Tokens: the real command, ``hf_sae_steer score`` on a ``--n-ref`` prompt reference set (the
demo's 150, then WordNet documents as ``scripts/demo_corpus.py`` makes them), in one process and
under ``torchrun --nproc-per-node 2`` (gloo on CPU); every process counts the positions its LM
embeds (a forward pre-hook on the model's input embedding: the scoring walk, the alignment
pass, the calibrations' generation and perplexity, the effect in words; padding included).
Printed: each process's count and the busiest one's as a share of one process's (target <=
70%).

    python scripts/bench_calibration.py                  # both, 3 repeats, 300 prompts
    python scripts/bench_calibration.py --part time --repeats 5 --grid
    python scripts/bench_calibration.py --part time --fresh   # each fit in a new process
    python scripts/bench_calibration.py --part tokens --n-ref 300
    # the same measurements of another checkout's library (its venv's python):
    PYTHONDONTWRITEBYTECODE=1 /path/to/other/.venv/bin/python scripts/bench_calibration.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"
CHILD = "--count-tokens-child"  # internal: run the CLI with a token counter (see count_tokens)
FIT_CHILD = "--one-fit-child"  # internal: one fit, its options printed as JSON


# -- time -------------------------------------------------------------------------------------
def demo_fitter() -> Any:
    """``fit(calibrate)``: a default fit on the demo (model and SAE loaded once)."""
    from hf_sae_steer import FeatureScores, load_sae
    from hf_sae_steer.models import load_model

    model, tok = load_model(str(DEMO / "model"))
    sae = load_sae(str(DEMO / "sae"))

    def fit(calibrate: bool) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return FeatureScores.fit(
                model, tok, sae, reference=str(DEMO / "reference.txt"),
                alignment=str(DEMO / "alignment.txt"), progress=False,
                calibrate_strength=calibrate,
            )  # fmt: skip

    fit.assets = (model, tok, sae)  # type: ignore[attr-defined]
    return fit


def fresh_fit(calibrate: bool) -> Any:
    """One default fit in a new process (as ``hf-sae-steer score`` runs it): its options."""
    from types import SimpleNamespace

    done = subprocess.run([sys.executable, __file__, FIT_CHILD, "1" if calibrate else "0"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return SimpleNamespace(options=json.loads(done.stdout.strip().splitlines()[-1]))


def bench_time(repeats: int, grid: bool, fresh: bool) -> None:
    import torch

    print(f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores; fits "
          f"{'each in a new process' if fresh else 'in this process, after one to warm up'}")
    if fresh:
        fit = fresh_fit
    else:
        fit = demo_fitter()
        fit(False)  # the embedder's first load, allocator, lazy imports: paid once, untimed
    plain, calibrated, shares, differences = [], [], [], []
    for i in range(repeats):
        uncalibrated = fit(False)
        without = uncalibrated.options["fit_seconds"]
        record = fit(True)
        options = record.options
        with_ = options["fit_seconds"]
        # recorded by the fit since the calibration was timed; else the difference of the fits
        seconds = options.get("calibration_seconds", with_ - without)
        plain.append(without), calibrated.append(with_)
        shares.append(seconds / with_), differences.append((with_ - without) / with_)
        print(f"  repeat {i + 1}: fit {without:6.2f} s without calibration, {with_:6.2f} s with "
              f"(strength calibration {seconds:5.2f} s, "
              f"{options.get('calibration_tokens', '?')} LM tokens; the rest of the difference, "
              f"e.g. the suppression's calibration: {with_ - without - seconds:5.2f} s)",
              flush=True)  # fmt: skip
    print(f"median default fit: {statistics.median(plain):.2f} s without calibration, "
          f"{statistics.median(calibrated):.2f} s with it")  # fmt: skip
    print(f"strength calibration / calibrated fit: median {statistics.median(shares):.1%} "
          f"(target <= 25%); everything calibrate_strength adds, by the fits' difference: "
          f"{statistics.median(differences):.1%}")
    if grid and not fresh:
        compare_with_grid(*fit.assets, uncalibrated)


def compare_with_grid(model: Any, tok: Any, sae: Any, uncalibrated: Any) -> None:
    """The full grid and the search on an uncalibrated fit: their time and chosen points."""
    from hf_sae_steer.scoring.calibration import run_calibration

    for seed in (0, 1, 2):
        full = run_calibration(model, tok, sae, uncalibrated, search=False, seed=seed)
        search = run_calibration(model, tok, sae, uncalibrated, search=True, seed=seed)
        a, b = full.fluency.norm_fraction, search.fluency.norm_fraction
        print(f"seed {seed}: full grid {full.seconds:5.2f} s, {full.tokens} LM tokens, norm "
              f"fraction {a:.6f}; search {search.seconds:5.2f} s, {search.tokens} LM tokens, "
              f"{len(search.fluency.curve)} points, norm fraction {b:.6f} "
              f"(relative difference {b / a - 1:+.1e})", flush=True)  # fmt: skip


# -- tokens -----------------------------------------------------------------------------------
def reference_set(n: int, path: Path) -> Path:
    """The demo's reference prompts, then WordNet documents (6 to 40 words) not among them."""
    prompts = (DEMO / "reference.txt").read_text().splitlines()
    if n > len(prompts):
        sys.path.insert(0, str(Path(__file__).parent))
        from demo_corpus import build_corpus

        taken = set(prompts) | set((DEMO / "alignment.txt").read_text().splitlines())
        extra = sorted(d for d in build_corpus(seed=0).heldout
                       if 6 <= len(d.split()) <= 40 and d not in taken)  # fmt: skip
        prompts += extra[: n - len(prompts)]
    if len(prompts) < n:
        raise SystemExit(f"only {len(prompts)} reference prompts could be made, not {n}")
    path.write_text("\n".join(prompts[:n]) + "\n")
    return path


def count_tokens(folder: Path, argv: list[str]) -> None:
    """Inside one process of the run: count what the LM's input embedding sees, run the CLI."""
    import torch
    from torch import nn

    from hf_sae_steer.cli.main import main

    vocab = json.loads((DEMO / "model" / "config.json").read_text())
    shape = (vocab["vocab_size"], vocab["n_embd"])
    counted = [0]

    def hook(module: nn.Module, args: tuple) -> None:
        # the demo LM's token embedding only (MiniLM's and the position table differ in shape)
        if isinstance(module, nn.Embedding) and tuple(module.weight.shape) == shape:
            counted[0] += int(args[0].numel())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        code = main(argv)
    finally:
        handle.remove()
    rank = int(os.environ.get("RANK", "0"))
    (folder / f"tokens-{rank}.json").write_text(json.dumps({"tokens": counted[0], "code": code}))


def bench_tokens(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        reference = reference_set(n, folder / "reference.txt")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        env.pop("WORLD_SIZE", None)
        runs = {}
        for procs in (1, 2):
            where = folder / f"run-{procs}"
            where.mkdir()
            argv = ["score", "--model", str(DEMO / "model"), "--sae", str(DEMO / "sae"),
                    "--reference", str(reference), "--alignment", str(DEMO / "alignment.txt"),
                    "--out", str(where / "scores"), "--quiet", "--seed", "0"]  # fmt: skip
            launcher = [sys.executable]
            if procs > 1:
                launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                             str(procs)]  # fmt: skip
            started = time.perf_counter()
            done = subprocess.run([*launcher, __file__, CHILD, str(where), *argv], env=env,
                                  capture_output=True, text=True)  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"{procs} process(es) failed:\n{done.stderr[-3000:]}")
            counts = [json.loads((where / f"tokens-{r}.json").read_text())["tokens"]
                      for r in range(procs)]  # fmt: skip
            config = json.loads((where / "scores" / "steering_config.json").read_text())
            runs[procs] = (counts, config["options"])
            shared = config["options"].get("processes", {})
            print(f"{procs} process(es), {time.perf_counter() - started:5.1f} s wall: LM tokens "
                  f"per process {counts}; calibration tokens "
                  f"{shared.get('calibration_tokens', config['options'].get('calibration_tokens'))}"
                  f"; reference prompts {shared.get('reference_prompts', [n])}", flush=True)
        one = runs[1][0][0]
        busiest = max(runs[2][0])
        print(f"{n} reference prompts: the busiest of 2 processes passes {busiest / one:.1%} of "
              f"one process's LM tokens ({busiest} of {one}; target <= 70%)")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == CHILD:
        return count_tokens(Path(sys.argv[2]), sys.argv[3:])
    if len(sys.argv) > 2 and sys.argv[1] == FIT_CHILD:
        options = demo_fitter()(sys.argv[2] == "1").options
        return print(json.dumps({k: v for k, v in options.items() if "seconds" in k or
                                 k == "calibration_tokens"}))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["time", "tokens", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=3, help="calibrated/plain fit pairs")
    parser.add_argument("--grid", action="store_true", help="also time the full grid")
    parser.add_argument("--fresh", action="store_true", help="each fit in a new process")
    parser.add_argument("--n-ref", type=int, default=300, help="reference prompts (tokens)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.part in ("time", "both"):
        bench_time(args.repeats, args.grid, args.fresh)
    if args.part in ("tokens", "both"):
        bench_tokens(args.n_ref)


if __name__ == "__main__":
    main()
