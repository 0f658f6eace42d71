"""Throughput of ``hf-sae-steer serve``: requests/s and tokens/s at 1, 8 and 32 concurrent
clients, steered (add, vector, swap) and unsteered on the same server, and their ratio.

    python scripts/bench_serve.py [--engine transformers|vllm] [--clients 1,8,32]
        [--requests 64] [--max-tokens 32] [--rounds 3] [--url http://127.0.0.1:8000]
        [-- SERVE ARGS...]

Without ``--url`` it starts ``hf-sae-steer serve --engine ENGINE`` on a free port (the shipped
demo unless serve arguments follow ``--``, e.g. ``-- --model gpt2 --sae ... --concept
medical=...``) and stops it at the end. Every request is greedy with ``ignore_eos`` so all
conditions generate the same number of tokens. Conditions are interleaved round by round (the
median of ``--rounds`` is reported) so a slow moment hits them all; the ratio is steered /
unsteered tokens/s from this one run. Concept ``medical`` must be served (the demo's is).
Nothing is asserted: the tests never time anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

CONDITIONS = {
    "none": None,
    "add": [{"concept": "medical", "method": "add"}],
    "vector": [{"vector": "medical"}],
    "swap": [{"concept": "medical", "method": "swap"}],
}
PROMPTS = [
    "The children went", "A doctor", "She opened the door and looked at the",
    "In the spring the farmers", "The river", "He wrote a letter to",
    "The old man said that", "A small bird",
]  # fmt: skip


async def one_level(url: str, model: str, steering, clients: int, n: int, tokens: int) -> dict:
    """``n`` requests from ``clients`` concurrent clients; wall time, requests/s, tokens/s."""
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
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "requests_s": n / seconds, "tokens_s": generated / seconds}


def measure(args: argparse.Namespace, url: str, model: str) -> list[dict]:
    rows = []
    for clients in args.clients:
        n = max(args.requests, clients)
        runs: dict[str, list[dict]] = {name: [] for name in args.conditions}
        asyncio.run(one_level(url, model, None, clients, clients, 4))  # warm up this level
        for _ in range(args.rounds):
            for name in args.conditions:
                result = asyncio.run(
                    one_level(url, model, CONDITIONS[name], clients, n, args.max_tokens)
                )
                runs[name].append(result)
        base = statistics.median(r["tokens_s"] for r in runs["none"])
        for name in args.conditions:
            tokens = statistics.median(r["tokens_s"] for r in runs[name])
            rows.append({
                "clients": clients, "condition": name, "requests": n,
                "requests_s": statistics.median(r["requests_s"] for r in runs[name]),
                "tokens_s": tokens, "ratio": tokens / base,
            })  # fmt: skip
    return rows


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
    p.add_argument("--conditions", default="none,add,vector,swap")
    p.add_argument("--requests", type=int, default=64, help="requests per condition and level")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.conditions = ["none", *[c for c in args.conditions.split(",") if c != "none"]]
    process, url = (None, args.url) if args.url else start_server(args.engine, serve_args)
    try:
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        rows = measure(args, url, model)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    if args.json:
        print(json.dumps({"engine": args.engine, "model": model, "rows": rows}, indent=2))
        return
    print(f"engine {args.engine}, model {model}, {args.max_tokens} tokens per request, "
          f"median of {args.rounds} interleaved rounds")  # fmt: skip
    print("| clients | steering | requests/s | tokens/s | vs unsteered |")
    print("|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['condition']} | {r['requests_s']:.1f} | "
              f"{r['tokens_s']:.0f} | {r['ratio']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
