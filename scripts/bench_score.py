#!/usr/bin/env python
"""``FeatureScores.fit`` speed against a one-prompt-at-a-time reference-style procedure.

Both run in one process on the same model, SAE, prompts and embeddings (random weights, a BPE
tokenizer trained here on the prompts). The reference-style procedure does what the demo does:
a full forward pass per prompt (every block and the LM head, the site read by a hook), the SAE
on its tokens, a pandas summary per prompt, per-row Python loops for the distances and the score
sums. ``fit`` also runs the alignment set through the model for its uncertainty report. Sentence
embeddings cost both the same (the demo embeds each set in one batched call too), so they are
computed once and timed apart; ``--embedder minilm`` uses the real all-MiniLM-L6-v2.

    python scripts/bench_score.py                       # tiny GPT-2 (4 x 128), 1,024-latent SAE
    python scripts/bench_score.py --shape gpt2-small    # 12 x 768, 32k-latent TopK SAE
    python scripts/bench_score.py --shape gpt2-small --device cuda --csv-io   # one GPU (target 10x)

Beyond one process, through the real command line (``hf_sae_steer score``, MiniLM embedder, a
streamed JSONL reference set of short synthetic prompts; the model and SAE saved to a temporary
folder):

    python scripts/bench_score.py --processes 1,2 --n-ref 2000   # torchrun, gloo on CPU
    python scripts/bench_score.py --memory 2000,20000            # peak RSS, fresh process each
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hf_sae_steer import FeatureScores, load_prompts
from hf_sae_steer.data.embedders import embed_prompts
from hf_sae_steer.sae import SAEConfig, build_sae

STORAGE = Path(__file__).resolve().parents[2] / "shared" / "seed" / "storage"
# shape -> (GPT2Config overrides, SAE latents, hooked layer); TopK(32) SAE at resid_post.
SHAPES: dict[str, tuple[dict[str, Any], int, int]] = {
    "tiny": ({"n_layer": 4, "n_embd": 128, "n_head": 4}, 1024, 2),
    "gpt2-small": ({"n_layer": 12, "n_embd": 768, "n_head": 12}, 32768, 9),
}


def synthetic(n: int, seed: int, words: int) -> list[str]:
    vocab = (
        "patient fever doctor river bridge steel poem story write act as a the of and to".split()
    )
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(vocab, size=words)) + "." for _ in range(n)]


def prompt_sets(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    ref = args.reference or (STORAGE / "d_ref_prompts.csv")
    align = args.alignment or (STORAGE / "d_align_prompts.csv")
    if Path(ref).exists() and Path(align).exists():
        return load_prompts(ref)[: args.n_ref], load_prompts(align)
    return synthetic(args.n_ref or 150, 0, 40), synthetic(20, 1, 300)


def build(args: argparse.Namespace, texts: list[str]) -> tuple[Any, Any, Any, int]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=4096, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet
    )
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    shape, d_sae, layer = SHAPES[args.shape]
    torch.manual_seed(0)
    # gpt2-small keeps GPT-2's LM head size (50,257) even though the tokenizer here is smaller.
    vocab = max(len(tok), 50257) if args.shape == "gpt2-small" else len(tok)
    config = GPT2Config(vocab_size=vocab, n_positions=1024, bos_token_id=0, eos_token_id=0, **shape)
    model = GPT2LMHeadModel(config).eval().to(args.device)
    d = config.n_embd
    state = {
        "W_enc": torch.randn(d, d_sae) / d**0.5,
        "b_enc": torch.zeros(d_sae),
        "W_dec": torch.randn(d_sae, d) / d_sae**0.5,
        "b_dec": torch.zeros(d),
    }
    cfg = SAEConfig(
        d_in=d,
        d_sae=d_sae,
        activation="topk",
        k=32,
        layer=layer,
        site="resid_post",
        normalize_activations="layer_norm",
    )
    return tok, model, build_sae(cfg, state).to(args.device), layer


def reference_style(
    model, tok, sae, layer, ref, ref_emb, align_emb, csv_dir=None
) -> tuple[np.ndarray, float]:
    """The demo's procedure: per prompt, full forward + SAE + pandas; per-row loops after."""
    captured = []
    hook = model.transformer.h[layer].register_forward_hook(lambda m, a, o: captured.append(o))
    rows = []
    with torch.no_grad():
        for prompt in ref:
            ids = torch.tensor([tok.encode(prompt)], device=sae.device)
            captured.clear()
            model(ids)  # every block and the LM head run
            hidden = captured[0][0] if isinstance(captured[0], tuple) else captured[0]
            lats = sae.encode(hidden[0]).cpu()
            frame = pd.DataFrame(lats[1:].numpy())
            rows.append(frame.sum(axis=0) / frame.sum(axis=0).sum())
    hook.remove()
    latents = pd.concat(rows, axis=1).T.fillna(0.0)
    coverage = float(((latents > 0).sum(axis=0) > 0).sum() / latents.shape[1])
    if csv_dir is not None:  # the demo writes the summaries out and reads them back
        latents.to_csv(Path(csv_dir) / "dref_latents.csv")
        latents = pd.read_csv(Path(csv_dir) / "dref_latents.csv", index_col=0, header=0)
    align = align_emb.numpy()
    dist = [min(np.linalg.norm(align - r, axis=1)) for r in ref_emb.numpy()]
    num = np.zeros(latents.shape[1])
    den = np.zeros(latents.shape[1])
    for i, summary in latents.iterrows():
        num += dist[int(i)] ** 2 * summary.to_numpy()
        den += summary.to_numpy()
    fired = den > 0
    raw = np.where(fired, num / np.where(fired, den, 1.0), 0.0)
    raw = raw - raw[fired].min()
    scores = np.where(fired, 1 - raw / raw[fired].max(), 0.0)
    return scores, coverage


def check_reference_csv(path: Path) -> None:
    """The demo's published scores import whole: 32,768 latents, 2,021 that never fired."""
    scores = FeatureScores.from_csv(path, layer=0, site="resid_post")
    never = round((1 - scores.coverage) * scores.d_sae)
    print(
        f"{path.name}: {scores.d_sae} scores, {never} never fired, coverage "
        f"{scores.coverage:.4f}, range [{scores.scores.min():.3f}, {scores.scores.max():.3f}], "
        f"NaN: {bool(scores.scores.isnan().any())}"
    )
    if scores.d_sae != 32768 or never != 2021 or scores.scores.isnan().any():
        raise SystemExit("unexpected import of the reference scores")


# -- beyond one process: the command line on saved assets --------------------------------------
def save_assets(args: argparse.Namespace, folder: Path, n: int) -> dict[str, Path]:
    """The model, tokenizer and SAE saved as a user would have them, ``n`` short reference
    prompts as JSONL (the first ``k`` of them are the first ``k`` lines) and 20 alignment texts."""
    ref, align = synthetic(n, 0, args.words), synthetic(20, 1, 40)
    tok, model, sae, _ = build(args, ref[:2000] + align)
    model.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    sae.save_pretrained(folder / "sae")
    reference = folder / "reference.jsonl"
    reference.write_text("".join(json.dumps({"text": p}) + "\n" for p in ref))
    (folder / "alignment.txt").write_text("\n".join(align) + "\n")
    return {"model": folder / "model", "sae": folder / "sae", "reference": reference,
            "alignment": folder / "alignment.txt"}  # fmt: skip


def score_command(paths: dict[str, Path], n: int, out: Path) -> list[str]:
    return [
        "-m", "hf_sae_steer", "score", "--model", str(paths["model"]), "--sae", str(paths["sae"]),
        "--reference", str(paths["reference"]), "--reference-split", f"[:{n}]",
        "--alignment", str(paths["alignment"]), "--rule", "seed", "--out", str(out), "--quiet",
    ]  # fmt: skip


def run_measured(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, int]:
    """Wall seconds and peak resident memory (bytes) of a fresh process (and its children)."""
    start = time.perf_counter()
    with log.open("w") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv[:6])} ... failed; see {log}:\n{log.read_text()[-2000:]}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024  # Linux: kilobytes


def fit_rate(out: Path, n: int) -> float:
    """Prompts per second inside fit (start-up and model loading excluded)."""
    config = json.loads((out / "steering_config.json").read_text())
    return n / config["options"]["fit_seconds"]


def bench_memory(args: argparse.Namespace, sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = save_assets(args, folder, max(sizes))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        peaks = {}
        for n in sizes:
            out = folder / f"out-{n}"
            argv = [sys.executable, *score_command(paths, n, out)]
            seconds, peaks[n] = run_measured(argv, env, folder / f"log-{n}.txt")
            print(f"{n:7d} streamed prompts: peak RSS {peaks[n] / 2**20:8.1f} MiB, "
                  f"{seconds:6.1f} s wall, {fit_rate(out, n):6.1f} prompts/s in fit")  # fmt: skip
        small, large = min(sizes), max(sizes)
        grown = (peaks[large] - peaks[small]) / 2**20
        print(f"peak RSS grows {grown:+.1f} MiB from {small} to {large} prompts (bound: 300 MB)")


def bench_processes(args: argparse.Namespace, counts: list[int], n: int) -> None:
    from hf_sae_steer.scores.record import FeatureScores

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = save_assets(args, folder, n)
        results = {}
        for procs in counts:
            out = folder / f"out-{procs}"
            # The same cores, split between the processes (or --threads each).
            threads = args.threads or max(1, cores // procs)
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
                   "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
            argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", str(procs), *score_command(paths, n, out)]  # fmt: skip
            seconds, _ = run_measured(argv, env, folder / f"log-{procs}.txt")
            results[procs] = FeatureScores.from_pretrained(out)
            shared = results[procs].options.get("processes", {}).get("reference_prompts", [n])
            rate = fit_rate(out, n)
            print(f"{procs} process(es) x {threads} thread(s): {rate:7.1f} prompts/s in fit, "
                  f"{seconds:6.1f} s wall; reference prompts per process {shared}")  # fmt: skip
        first = results[counts[0]]
        for procs, got in results.items():
            diff = float((got.scores - first.scores).abs().max())
            same = got.coverage == first.coverage and got.reference_hash == first.reference_hash
            print(f"{procs} vs {counts[0]} process(es): max |score diff| {diff:.1e}, "
                  f"coverage and reference hash equal: {same}")  # fmt: skip
            if diff > 1e-6 or not same:
                raise SystemExit("the processes disagree")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--reference", type=Path, help="default: the seed d_ref_prompts.csv")
    parser.add_argument("--alignment", type=Path, help="default: the seed d_align_prompts.csv")
    parser.add_argument("--n-ref", type=int, default=None, help="use the first N reference prompts")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--embedder", choices=["minilm", "letters"], default="letters")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--csv-io", action="store_true", help="reference-style also does the demo's CSV round trip"
    )
    parser.add_argument(
        "--check-csv",
        action="store_true",
        help="only import the seed medical_scores.csv and check it",
    )
    parser.add_argument("--processes", help="e.g. 1,2: score through torchrun with each count")
    parser.add_argument("--memory", help="e.g. 2000,20000: peak RSS of streamed runs")
    parser.add_argument("--words", type=int, default=16, help="words per synthetic prompt")
    args = parser.parse_args()
    if args.check_csv:
        return check_reference_csv(STORAGE / "medical_scores.csv")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory:
        return bench_memory(args, [int(n) for n in args.memory.split(",")])
    if args.processes:
        counts = [int(n) for n in args.processes.split(",")]
        return bench_processes(args, counts, args.n_ref or 2000)

    ref, align = prompt_sets(args)
    tok, model, sae, layer = build(args, ref + align)
    n_tokens = sum(len(t) for t in tok(ref)["input_ids"])
    print(
        f"shape={args.shape} d_sae={sae.d_sae} layer={layer} device={args.device} "
        f"threads={torch.get_num_threads()} |D_ref|={len(ref)} ({n_tokens} tokens) "
        f"|D_align|={len(align)}"
    )

    def letters(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[t.lower().count(c) / len(t) for c in "etaoinshrdlu "] for t in texts])

    start = time.perf_counter()
    embedder = "sentence-transformers/all-MiniLM-L6-v2" if args.embedder == "minilm" else letters
    (ref_emb, align_emb), _ = embed_prompts(embedder, [ref, align], args.device, progress=False)
    embed_s = time.perf_counter() - start
    cache = {t: e for t, e in zip(ref + align, torch.cat([ref_emb, align_emb]), strict=True)}

    def cached(texts: list[str]) -> torch.Tensor:
        return torch.stack([cache[t] for t in texts])

    # Warm-up (allocator, kernels) on a few prompts, then one timed run each.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FeatureScores.fit(
            model, tok, sae, reference=ref[:4], alignment=align[:2], embedder=cached,
            rule="seed", progress=False,
        )  # fmt: skip
        reference_style(model, tok, sae, layer, ref[:4], ref_emb[:4], align_emb)
        start = time.perf_counter()
        fitted = FeatureScores.fit(
            model,
            tok,
            sae,
            reference=ref,
            alignment=align,
            embedder=cached,
            rule="seed",  # the reference rule: what the reference-style procedure computes
            batch_size=args.batch_size,
            progress=False,
        )
        fit_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        csv_dir = tmp if args.csv_io else None
        expected, coverage = reference_style(
            model, tok, sae, layer, ref, ref_emb, align_emb, csv_dir
        )
        ref_s = time.perf_counter() - start

    diff = float(np.abs(fitted.scores.double().numpy() - expected).max())
    print(f"embeddings (shared, {args.embedder}): {embed_s:.2f} s")
    print(f"fit:             {fit_s:7.2f} s  {len(ref) / fit_s:8.1f} prompts/s  (with its report)")
    csv = " (with CSV round trip)" if args.csv_io else ""
    print(f"reference-style: {ref_s:7.2f} s  {len(ref) / ref_s:8.1f} prompts/s{csv}")
    print(
        f"speedup:         {ref_s / fit_s:7.1f}x  (with embeddings: "
        f"{(ref_s + embed_s) / (fit_s + embed_s):.1f}x)"
    )
    if args.device.startswith("cuda"):  # the reference's loop is CPU-bound; ours need not be
        verdict = "met" if ref_s / fit_s >= 10 else "NOT met"
        print(f"target on one GPU: >= 10x the reference-style loop: {verdict}")
    print(
        f"agreement:       max |score diff| = {diff:.2e}, coverage {fitted.coverage:.4f} vs "
        f"{coverage:.4f}"
    )
    if not math.isfinite(diff) or diff > 1e-3:
        raise SystemExit("fit and the reference-style procedure disagree")


if __name__ == "__main__":
    main()
