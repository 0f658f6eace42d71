#!/usr/bin/env python
"""Steered vs plain ``generate()`` speed, per method, at several batch sizes (issue 2, "Speed").

Times, interleaved in one process with the same random prompts and greedy decoding of exactly
``--new-tokens`` tokens: plain ``model.generate`` with no hooks at all; ``SteeredModel.generate``
for every method; ``with steered.disabled()`` (hooks installed, steering off); and at batch 1 a
reference-style loop that re-runs the whole prefix through the hooked model for each new token
(no KV cache), as the reference demo does (minus its CSV writing). Random weights throughout.

    python scripts/bench_generate.py                                   # tiny model, CPU
    python scripts/bench_generate.py --shape gpt2-small --device cuda  # real figures
    python scripts/bench_generate.py --device cuda --check-sync        # no host syncs in the hook
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

from hf_sae_steer import METHODS, SAE, FeatureScores, Intervention, SteeredModel
from hf_sae_steer.sae.base import SAEConfig, build_sae
from hf_sae_steer.steering.names import AWAY_METHODS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# shape -> (GPT2Config overrides, SAE latents, hooked layer); the SAE is TopK(32) at resid_post.
SHAPES: dict[str, tuple[dict[str, Any], int, int]] = {
    "tiny": (dict(n_layer=4, n_embd=128, n_head=4, vocab_size=1000, n_positions=256), 1024, 2),
    "gpt2-small": ({}, 32768, 6),
}
Variant = tuple[str, str, bool]  # (label, method, preserve_error)


def build(shape: str, positions: int) -> tuple[GPT2LMHeadModel, SAE, Tensor]:
    """A random-weight GPT-2, a random TopK SAE for its ``layer`` and random scores."""
    overrides, n, layer = SHAPES[shape]
    tokens = {"bos_token_id": 999, "eos_token_id": 999} if shape == "tiny" else {}
    cfg = GPT2Config(**overrides, **tokens)
    if positions > cfg.n_positions:
        raise SystemExit(f"--prompt-len + --new-tokens exceeds n_positions={cfg.n_positions}.")
    model = GPT2LMHeadModel(cfg).eval()
    d, g = cfg.n_embd, torch.Generator().manual_seed(1)
    w_dec = torch.randn(n, d, generator=g)
    state = {
        "W_enc": torch.randn(d, n, generator=g) / d**0.5,
        "b_enc": torch.randn(n, generator=g) * 0.1,
        "W_dec": w_dec / w_dec.norm(dim=1, keepdim=True),
        "b_dec": torch.randn(d, generator=g) * 0.1,
    }
    sae_cfg = SAEConfig(d, n, "topk", 32, "layer_norm", layer=layer, site="resid_post")
    return model, build_sae(sae_cfg, state), torch.rand(n, generator=g)


def timed(fn: Callable[[], Tensor], cuda: bool, clock: str) -> tuple[float, Tensor]:
    now = time.process_time if clock == "cpu" else time.perf_counter
    if cuda:
        torch.cuda.synchronize()
    start = now()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return now() - start, out


@torch.no_grad()
def reference_loop(forward: Callable[..., Any], ids: Tensor, n: int) -> Tensor:
    """Re-run the whole prefix (hooks on, no KV cache) for each new token; greedy argmax."""
    for _ in range(n):
        logits = forward(input_ids=ids, use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=-1)
    return ids


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", choices=tuple(SHAPES), default="tiny")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cell")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="summary of the repeats (min resists noise from other work)")  # fmt: skip
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    p.add_argument("--batch-sizes", default="1,16", help="comma-separated")
    p.add_argument("--preserve-error", action="store_true", help="also preserve_error=True")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: process CPU time (CPU only; steadier when shared)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the raw timings to this file")
    p.add_argument("--check-sync", action="store_true", help="CUDA: no host sync in the hooks")
    args = p.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if bad := [m for m in args.methods if m not in METHODS]:
        p.error(f"unknown methods {bad}; choose from {', '.join(METHODS)}")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.clock == "cpu" and args.device != "cpu":
        p.error("--clock cpu only measures CPU work; use the wall clock on an accelerator")
    return args


def check_sync(steer: Callable[..., SteeredModel], variants: list[Variant],
               gen: Callable[[Tensor, int], dict[str, Any]], ids: Tensor) -> int:  # fmt: skip
    """Steered generate with every hook call under ``set_sync_debug_mode("error")``; failures."""
    from hf_sae_steer.steering.positions import PositionTracker

    armed = [False]

    def guarded(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def call(*a: Any) -> Tensor:
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error" if armed[0] else previous)
            try:
                return fn(*a)
            finally:
                torch.cuda.set_sync_debug_mode(previous)

        return call

    original_call, original_edit = Intervention.__call__, PositionTracker.edit
    # Intervention.__call__, and the whole per-site edit around it (position masking), guarded.

    def edit(self: PositionTracker, step: Callable[[Tensor], Tensor], pos: str) -> Callable:
        return guarded(original_edit(self, step, pos))

    Intervention.__call__ = guarded(original_call)  # type: ignore[method-assign]
    PositionTracker.edit = edit  # type: ignore[method-assign]
    failures = 0
    try:
        for label, method, keep in variants:
            for positions in ("all", "generated"):
                with steer(method, keep, positions=positions) as steered:
                    steered.generate(**gen(ids, 2))  # may place the SAE on first use: unchecked
                    armed[0] = True
                    try:
                        steered.generate(**gen(ids, 3))
                        print(f"  {label:10s} positions={positions:9s} ok: no host-device sync")
                    except RuntimeError as exc:
                        failures += 1
                        print(f"  {label:10s} positions={positions:9s} SYNC: {str(exc)[:200]}")
                    finally:
                        armed[0] = False
    finally:
        Intervention.__call__ = original_call  # type: ignore[method-assign]
        PositionTracker.edit = original_edit  # type: ignore[method-assign]
    print(f"--check-sync: {failures} failure(s)")
    return failures


def bench(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device, dtype, n = torch.device(args.device), DTYPES[args.dtype], args.new_tokens
    cuda = device.type == "cuda"
    model, sae, scores = build(args.shape, args.prompt_len + n)
    model.to(device=device, dtype=dtype)
    sae.to(device=device)  # SteeredModel computes the SAE in float32 beside any model dtype
    cfg, layer = model.config, sae.cfg.layer
    variants: list[Variant] = [(m, m, False) for m in args.methods]
    if args.preserve_error:
        variants += [(f"{m}+err", m, True) for m in args.methods if m != "orig"]

    def gen(ids: Tensor, new: int) -> dict[str, Any]:
        config = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                  pad_token_id=cfg.eos_token_id)  # fmt: skip
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "generation_config": config}  # fmt: skip

    # add: 5 latents with unit weights; vector: a random direction (the shapes are what count).
    latents = {int(i): 1.0 for i in torch.topk(scores, 5).indices}
    vector = torch.randn(cfg.n_embd, generator=torch.Generator().manual_seed(2))

    # The away methods read an artifact: the topic's 10 latents (suppress), a posterior over
    # 100 (attenuate) and the mean difference (ablate, attenuate), at the fit's sizes.
    gate = torch.topk(scores, 100).indices
    topic = FeatureScores(scores=scores.cpu(), coverage=1.0, stats={
        "delta_raw": vector, "away_latents": gate[:10], "away_gate_latents": gate,
        "away_gate_log_odds": torch.ones(100), "away_gate_bias": torch.tensor([-3.0]),
    })  # fmt: skip

    def steer(method: str, keep: bool, positions: str = "all") -> SteeredModel:
        extra = {"latents": latents} if method == "add" else {}
        extra = {"vector": vector} if method == "vector" else extra
        away = method in AWAY_METHODS and method != "vector"
        extra = {"scores": topic, "direction": "away"} if away else {"scores": scores, **extra}
        return SteeredModel(model, sae, layer=layer, site="resid_post", method=method,
                            preserve_error=keep, positions=positions, strength=1.0,
                            **extra)  # fmt: skip

    def run(fn: Callable[..., Tensor], *a: Any, **kw: Any) -> tuple[float, Tensor]:
        return timed(partial(fn, *a, **kw), cuda, args.clock)

    g = torch.Generator().manual_seed(args.seed)
    prompts = {b: torch.randint(0, cfg.vocab_size, (b, args.prompt_len), generator=g).to(device)
               for b in args.batch_sizes}  # fmt: skip
    print(
        f"shape={args.shape}: GPT-2 {cfg.n_layer} layers, d={cfg.n_embd}, vocab {cfg.vocab_size}; "
        f"SAE {sae.d_sae} latents TopK k={sae.k} layer-norm input at layer {layer} resid_post | "
        f"device={device} dtype={args.dtype} threads={torch.get_num_threads()} "
        f"prompt={args.prompt_len} new={n} repeats={args.repeats} clock={args.clock}"
    )
    if args.check_sync:
        if not cuda:
            print(f"--check-sync needs CUDA (torch.cuda.set_sync_debug_mode); skipped on {device}.")
            return
        raise SystemExit(1 if check_sync(steer, variants, gen, prompts[args.batch_sizes[0]]) else 0)

    # raw[batch][label][kind]: seconds per run; kinds: plain, steered, disabled, reference
    raw = {b: {v[0]: defaultdict(list) for v in variants} for b in args.batch_sizes}
    agree: dict[str, str] = {}
    for b, ids in prompts.items():  # warm-up: plain once, every variant on a short run
        model.generate(**gen(ids, n))
        for _, method, keep in variants:
            with steer(method, keep) as steered:
                steered.generate(**gen(ids, 2))
                if b == 1:
                    reference_loop(steered, ids, 2)
    for _ in range(args.repeats):
        for b, ids in prompts.items():
            for i, (label, method, keep) in enumerate(variants):
                cell = raw[b][label]
                cell["plain"].append(run(model.generate, **gen(ids, n))[0])
                with steer(method, keep) as steered:
                    t, out = run(steered.generate, **gen(ids, n))
                    cell["steered"].append(t)
                    if i == 0:
                        with steered.disabled():
                            t = run(steered.generate, **gen(ids, n))[0]
                        cell["disabled"].append(t)
                    if b == 1:
                        t, ref = run(reference_loop, steered, ids, n)
                        cell["reference"].append(t)
                        diff = (ref != out).any(dim=0).nonzero().flatten().tolist()
                        agree[label] = f"differ@{diff[0] - ids.shape[1]}" if diff else "same"
    report(args, raw, agree, variants)


def report(
    args: argparse.Namespace, raw: dict[int, Any], agree: dict[str, str], variants: list[Variant]
) -> None:
    n, sizes = args.new_tokens, args.batch_sizes
    stat = statistics.median if args.stat == "median" else min
    med = {b: {lab: {kind: stat(ts) for kind, ts in cell.items()}
               for lab, cell in by.items()} for b, by in raw.items()}  # fmt: skip
    head = f"{'method':10s}" + "".join(f" | b{b:<3d} plain ms/tok steered  ratio" for b in sizes)
    head += " | b1 ref-loop ms/tok ref/steered tokens" if 1 in sizes else ""
    print(head + "\n" + "-" * len(head))
    for label, _, _ in variants:
        row = f"{label:10s}"
        for b in sizes:
            m = med[b][label]
            row += f" | {1e3 * m['plain'] / n:17.2f} {1e3 * m['steered'] / n:7.2f}"
            row += f" {m['steered'] / m['plain']:5.3f}x"
        if 1 in sizes:
            m = med[1][label]
            row += f" | {1e3 * m['reference'] / n:18.2f} {m['reference'] / m['steered']:10.2f}x"
            print(row + f" {agree[label]}")
        else:
            print(row)
    lab = variants[0][0]
    ratios = [f"b{b} {med[b][lab]['disabled'] / med[b][lab]['plain']:.3f}x" for b in sizes]
    print(f"disabled() with {lab} hooks installed vs no hooks: " + ", ".join(ratios))
    print(f"ratio = {args.stat} steered / {args.stat} plain (no SteeredModel), timed alternately;")
    if 1 in sizes:
        print("ref/steered = no-cache loop re-running the prefix / KV-cached steered generate")
    if args.json:
        info = {k: str(v) for k, v in vars(args).items()}
        info["torch"] = torch.__version__
        payload = {"args": info, "raw_seconds": raw, f"{args.stat}_seconds": med, "tokens": agree}
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"raw timings written to {args.json}")


if __name__ == "__main__":
    bench(parse_args())
