"""Throughput of ``hf-sae-steer serve``: requests/s and tokens/s at 1, 8 and 32 concurrent
clients, steered (add, vector, swap, clamp) and unsteered on the same server, and their ratio.

    python scripts/bench_serve.py [--engine transformers|vllm] [--clients 1,8,32]
        [--requests 64] [--max-tokens 32] [--rounds 3] [--shape demo|gpt2-small]
        [--url http://127.0.0.1:8000] [-- SERVE ARGS...]

Without ``--url`` it starts ``hf-sae-steer serve --engine ENGINE`` on a free port and stops it
at the end: on the shipped demo, on ``--shape gpt2-small`` (a random-weight model of GPT-2
small's shape, 12 x 768, with the demo's 4,096-token vocabulary, a random TopK SAE of 32,768
latents at block 6 and a made-up ``medical`` artifact, written to a temporary folder), or on
what the serve arguments after ``--`` say (e.g. ``-- --model gpt2 --sae ... --concept
medical=...``; concept ``medical`` must be served). Every request is greedy with
``ignore_eos``, so all conditions generate the same number of tokens. Conditions are
interleaved round by round (the median of ``--rounds`` is reported) so a slow moment hits them
all. Reported per condition: requests/s and tokens/s (wall clock), tokens per CPU-second of the
server process (when it runs here: robust on a shared machine), and steered / unsteered ratios
of both from this one run. Nothing is asserted: the tests never time anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

CONDITIONS = {
    "none": None,
    "add": [{"concept": "medical", "method": "add"}],
    "vector": [{"vector": "medical"}],
    "swap": [{"concept": "medical", "method": "swap"}],
    "clamp": [{"concept": "medical", "method": "clamp"}],
}
PROMPTS = [
    "The children went", "A doctor", "She opened the door and looked at the",
    "In the spring the farmers", "The river", "He wrote a letter to",
    "The old man said that", "A small bird",
]  # fmt: skip


async def one_level(url: str, model: str, steering, clients: int, n: int, tokens: int,
                    server: psutil.Process | None = None) -> dict:  # fmt: skip
    """``n`` requests from ``clients`` concurrent clients: requests/s and tokens/s of the wall
    clock, and tokens per CPU-second of the ``server`` process."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    generated = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal generated
        while not queue.empty():
            i = queue.get_nowait()
            body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": tokens,
                    "temperature": 0, "ignore_eos": True}  # fmt: skip
            if steering is not None:
                body["steering"] = steering
            r = await http.post(f"{url}/v1/completions", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text}")
            generated += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        cpu0 = _cpu(server)
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - t0
        cpu = _cpu(server) - cpu0
    return {
        "seconds": seconds,
        "requests_s": n / seconds,
        "tokens_s": generated / seconds,
        "tokens_cpu_s": generated / cpu if server is not None and cpu > 0 else math.nan,
    }


def _cpu(process: psutil.Process | None) -> float:
    """CPU seconds of the server and its child processes (vLLM runs its engine core and
    workers in children)."""
    if process is None:
        return 0.0
    total = 0.0
    for proc in [process, *process.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:  # a child that just exited
            continue
        total += times.user + times.system
    return total


def measure(args: argparse.Namespace, url: str, model: str, pid: int | None) -> list[dict]:
    server = psutil.Process(pid) if pid is not None else None
    rows = []
    for clients in args.clients:
        n = max(args.requests, clients)
        runs: dict[str, list[dict]] = {name: [] for name in args.conditions}
        for name in args.conditions:  # warm up this level; a steering's first use builds it
            asyncio.run(one_level(url, model, CONDITIONS[name], clients, clients, 4))
        for _ in range(args.rounds):
            for name in args.conditions:
                result = asyncio.run(
                    one_level(url, model, CONDITIONS[name], clients, n, args.max_tokens, server)
                )
                runs[name].append(result)
        median = {
            name: {k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]}
            for name in args.conditions
        }
        for name in args.conditions:
            m, base = median[name], median["none"]
            rows.append({
                "clients": clients, "condition": name, "requests": n, **m,
                "ratio": m["tokens_s"] / base["tokens_s"],
                "cpu_ratio": m["tokens_cpu_s"] / base["tokens_cpu_s"],
            })  # fmt: skip
    return rows


def build_gpt2_small(folder: Path) -> list[str]:
    """A random GPT-2-small-shaped model (the demo's tokenizer), a random TopK SAE at block 6
    and a ``medical`` artifact recommending ``add`` (mean_diff-like latents and weights, a
    vector), saved in ``folder``; returns the serve arguments for them."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_sae_steer.cli.demo import find_assets
    from hf_sae_steer.sae.base import SAEConfig, build_sae
    from hf_sae_steer.scores.record import FeatureScores

    demo = find_assets()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=4096, n_positions=1024, bos_token_id=0, eos_token_id=0,
                        pad_token_id=0)  # fmt: skip
    GPT2LMHeadModel(config).eval().save_pretrained(folder / "model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo / "model" / name, folder / "model" / name)
    d, n, g = 768, 32768, torch.Generator().manual_seed(1)
    w_dec = torch.randn(n, d, generator=g)
    sae = build_sae(
        SAEConfig(d, n, "topk", 32, "layer_norm", layer=6, site="resid_post"),
        {"W_enc": torch.randn(d, n, generator=g) / d**0.5, "b_enc": torch.randn(n, generator=g)
         * 0.1, "W_dec": w_dec / w_dec.norm(dim=1, keepdim=True),
         "b_dec": torch.randn(d, generator=g) * 0.1},
    )  # fmt: skip
    sae.save_pretrained(folder / "sae")
    latents = torch.randperm(n, generator=g)[:5]
    FeatureScores(
        scores=torch.rand(n, generator=g), coverage=0.5, layer=6, site="resid_post",
        sae_fingerprint=sae.fingerprint(), rule="mean_diff",
        stats={"latents": latents, "weights": torch.rand(5, generator=g) + 0.5,
               "delta_raw": torch.randn(d, generator=g)},
        recommended={"method": "add", "strength": 4.0, "preserve_error": True},
        calibration={"mean_norm": 40.0, "mean_norm_raw": 60.0},
    ).save_pretrained(folder / "medical")  # fmt: skip
    return ["--model", str(folder / "model"), "--sae", str(folder / "sae"), "--concept",
            f"medical={folder / 'medical'}"]  # fmt: skip


def start_server(engine: str, serve_args: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "hf_sae_steer", "serve", "--engine", engine, "--quiet",
           "--port", str(port), "--max-waiting", "1024", *serve_args]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    process = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit("the server did not start within 10 minutes")


def main() -> None:
    argv = sys.argv[1:]
    serve_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--url", help="benchmark a running server instead of starting one")
    p.add_argument("--clients", default="1,8,32", help="concurrency levels")
    p.add_argument("--conditions", default="none,add,vector,swap,clamp")
    p.add_argument("--requests", type=int, default=64, help="requests per condition and level")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    p.add_argument("--shape", default="demo", choices=["demo", "gpt2-small"])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.conditions = ["none", *[c for c in args.conditions.split(",") if c != "none"]]
    with tempfile.TemporaryDirectory() as tmp:
        if args.shape == "gpt2-small" and not args.url:
            serve_args = [*build_gpt2_small(Path(tmp)), *serve_args]
        process, url = (None, args.url) if args.url else start_server(args.engine, serve_args)
        try:
            model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
            rows = measure(args, url, model, process.pid if process else None)
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
    if args.json:
        print(json.dumps({"engine": args.engine, "model": model, "rows": rows}, indent=2))
        return
    print(f"engine {args.engine}, model {model}, {args.max_tokens} tokens per request, "
          f"median of {args.rounds} interleaved rounds")  # fmt: skip
    print("| clients | steering | requests/s | tokens/s | vs unsteered | tokens/CPU-s | "
          "vs unsteered (CPU) |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['condition']} | {r['requests_s']:.1f} | "
              f"{r['tokens_s']:.0f} | {r['ratio']:.2f} | {r['tokens_cpu_s']:.0f} | "
              f"{r['cpu_ratio']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
