"""An in-process ``hf-sae-steer serve`` for the tests: uvicorn in a thread on a free port,
around any engine and concept library (the shipped demo's, by default)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = 60, **headers: str) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError("The server did not start.")


def demo_engine(**options: Any):
    """The transformers engine on the shipped demo: (engine, library)."""
    from hf_sae_steer.serving.server import setup_from, start_engine

    return start_engine("transformers", setup_from(demo=DEMO, **options))


@contextlib.contextmanager
def running_demo(**options: Any) -> Iterator[tuple[Any, Any]]:
    """:func:`demo_engine` until the block ends, then closed: ``(engine, library)``."""
    engine, library = demo_engine(**options)
    try:
        yield engine, library
    finally:
        engine.close()


@contextlib.contextmanager
def live_server(engine: Any, library: Any, **app_options: Any) -> Iterator[str]:
    """Serve ``engine`` on 127.0.0.1 until the block ends; yields the base URL (no ``/v1``).
    The engine is the caller's to close."""
    import uvicorn

    from hf_sae_steer.serving.app import build_app

    port = free_port()
    app = build_app(engine, library, **app_options)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=20)
