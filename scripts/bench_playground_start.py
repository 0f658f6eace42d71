"""How long ``hf-sae-steer chat`` and ``hf-sae-steer app`` take to start on the shipped demo:
from launching the process to the chat's first prompt, and to the app's first HTTP 200.

    python scripts/bench_playground_start.py [--runs 3]

Each run is a fresh process (imports, model and SAE loading included), offline. Prints the
times of every run, their median and the machine's load average (quote the times with it);
nothing is asserted (the tests never time anything).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

READY = "Type a prompt"
LIMIT = 120.0  # seconds: give up on a run after this


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def chat_start() -> float:
    """Seconds until the chat prints its banner and waits for a prompt."""
    t0 = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "hf_sae_steer", "chat", "--quiet"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=_env(),
    )  # fmt: skip
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            if READY in line:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > LIMIT:
                break
        raise RuntimeError("the chat never showed its prompt")
    finally:
        process.communicate(input=":quit\n", timeout=30)


def app_start() -> float:
    """Seconds until the app answers its page with HTTP 200."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "hf_sae_steer", "app", "--quiet", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
    )  # fmt: skip
    try:
        while time.perf_counter() - t0 < LIMIT:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    if response.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the app never answered")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    before = os.getloadavg()
    for name, measure in (("chat", chat_start), ("app", app_start)):
        times = [measure() for _ in range(args.runs)]
        runs = ", ".join(f"{t:.1f}" for t in times)
        print(f"{name:<5} start: median {statistics.median(times):.1f} s  (runs: {runs} s)")
    after = os.getloadavg()
    print(
        f"({os.cpu_count()} CPUs, 1-minute load average {before[0]:.1f} before and "
        f"{after[0]:.1f} after; demo assets; imports and model loading included)"
    )


if __name__ == "__main__":
    main()
