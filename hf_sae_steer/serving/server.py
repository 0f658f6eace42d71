"""What ``hf-sae-steer serve`` sets up: the model, its SAEs and the concept library (the shipped
demo when no model is given), an engine, the app, and uvicorn.

Defaults: no ``--model`` serves the demo (its model and SAE) with the concepts given, or with
``medical`` (the demo's scores) when none is given; a ``--model`` needs its ``--sae``. Engines
are looked up by name in :data:`ENGINES` (``module:function`` taking a :class:`ServeSetup`
and returning the engine and its concept library), so an optional engine is imported only
when chosen.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_sae_steer.serving.concepts import ConceptLibrary, load_library
from hf_sae_steer.serving.engine import Engine
from hf_sae_steer.serving.lifecycle import BACKSTOP, Lifecycle
from hf_sae_steer.serving.prepare import ServeLimits
from hf_sae_steer.serving.security import AccessPolicy, exposure_warning

ENGINES: dict[str, str] = {
    "transformers": "hf_sae_steer.serving.server:transformers_engine",
    "vllm": "hf_sae_steer.serving.vllm_engine:vllm_engine",
}
DEMO_NAME = "hf-sae-steer-demo"


@dataclass
class ServeSetup:
    """Everything an engine needs to start: what to load and how much to batch."""

    model: str
    saes: list[str]
    concepts: dict[str, str]
    served_name: str
    device: str | None = None
    dtype: str | None = None
    max_batch: int = 32
    max_waiting: int = 64
    max_context: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


def setup_from(
    *,
    model: str | None = None,
    saes: list[str] | None = None,
    concepts: dict[str, str] | None = None,
    demo: Path | None = None,
    served_name: str | None = None,
    **options: Any,
) -> ServeSetup:
    """A :class:`ServeSetup` with the demo's defaults (from the asset folder ``demo``) filled
    in when no model is given (module docstring)."""
    saes, concepts = list(saes or []), dict(concepts or {})
    if model is None:
        if saes:
            raise ValueError("--sae needs --model; without --model the demo's SAE is served.")
        if demo is None:
            raise ValueError("Pass --model and --sae, or serve the demo.")
        root = demo
        model, saes = str(root / "model"), [str(root / "sae")]
        concepts = concepts or {"medical": str(root / "scores")}
        served_name = served_name or DEMO_NAME
    elif not saes:
        raise ValueError("Pass --sae with --model (the SAE the concepts were fitted on).")
    return ServeSetup(model, saes, concepts, served_name or model, **options)


def transformers_engine(setup: ServeSetup) -> tuple[Engine, ConceptLibrary]:
    """The default engine: the model loaded here, batched in a thread of this process."""
    from hf_sae_steer.models import load_model
    from hf_sae_steer.sae.loading import load_sae
    from hf_sae_steer.serving.transformers_engine import TransformersEngine

    saes = [load_sae(spec) for spec in setup.saes]
    lm, tokenizer = load_model(setup.model, device=setup.device, dtype=setup.dtype)
    library = load_library(lm, saes, setup.concepts)
    engine = TransformersEngine(
        lm, tokenizer, library, name=setup.served_name, max_batch=setup.max_batch,
        max_waiting=setup.max_waiting, max_context=setup.max_context,
    )  # fmt: skip
    return engine, library


def start_engine(kind: str, setup: ServeSetup) -> tuple[Engine, ConceptLibrary]:
    if kind not in ENGINES:
        raise ValueError(f"Unknown engine {kind!r}; use one of {', '.join(ENGINES)}.")
    module, _, name = ENGINES[kind].partition(":")
    factory: Callable[[ServeSetup], tuple[Engine, ConceptLibrary]] = getattr(
        importlib.import_module(module), name
    )
    return factory(setup)


def serve(
    engine: Engine,
    library: ConceptLibrary,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits | None = None,
    served_names: tuple[str, ...] = (),
    steered_models: Sequence[str] = (),
    log_level: str = "warning",
    on_ready: Callable[[str], None] | None = None,
    policy: AccessPolicy | None = None,
    shutdown_grace: float = 30.0,
) -> None:
    """Run the app with uvicorn until SIGTERM or Ctrl-C, then close the engine (vLLM's
    processes with it). ``policy``: who may use it (default: no API key, loopback names; a
    warning when ``host`` is beyond loopback without a key). ``shutdown_grace``: seconds in
    which running requests may finish after the signal (:mod:`.lifecycle`)."""
    import uvicorn

    from hf_sae_steer.serving.app import build_app

    policy = policy or AccessPolicy(bind=host)
    lifecycle = Lifecycle(shutdown_grace)
    try:
        app = build_app(engine, library, limits=limits, served_names=served_names,
                        steered_models=steered_models, policy=policy,
                        lifecycle=lifecycle)  # fmt: skip
    except BaseException:  # a bad --steered-model: nothing served, the engine closed
        engine.close()
        raise
    warning = exposure_warning(policy)
    if warning:
        print(f"hf-sae-steer serve: {warning}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=lifecycle.grace + BACKSTOP)  # fmt: skip

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            lifecycle.begin_shutdown()

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            lifecycle.bind(asyncio.get_running_loop())
            if self.started and on_ready is not None:
                on_ready(f"http://{host}:{port}/v1")

    try:
        with _signals_stop():
            Server(config).run()
    finally:
        with _signals_ignored():  # a second signal must not cut the engine's own shutdown
            engine.close()


class _Stopped(BaseException):
    """SIGTERM or SIGINT, re-raised by uvicorn once its graceful shutdown is done."""


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    """SIGTERM and SIGINT end the block (not the process), so the engine is closed after it.
    uvicorn re-raises the signal that stopped it with the handlers it found: with the
    default SIGTERM handler the process died there, leaving vLLM's processes running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise _Stopped

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
