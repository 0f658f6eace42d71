"""What ``hf-sae-steer serve`` sets up: the model, its SAEs and the concept library (the shipped
demo when no model is given), an engine, the app, and uvicorn.

Defaults: no ``--model`` serves the demo (its model and SAE) with the concepts given, or with
``medical`` (the demo's scores) when none is given; a ``--model`` needs its ``--sae``. Engines
are looked up by name in :data:`ENGINES` (``module:function`` taking a :class:`ServeSetup`
and returning the engine and its concept library), so an optional engine is imported only
when chosen.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_sae_steer.serving.concepts import ConceptLibrary, load_library
from hf_sae_steer.serving.engine import Engine
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
    log_level: str = "warning",
    on_ready: Callable[[str], None] | None = None,
    policy: AccessPolicy | None = None,
) -> None:
    """Run the app with uvicorn until interrupted, then close the engine. ``policy``: who may
    use it (default: no API key, loopback names; a warning when ``host`` is beyond loopback
    without a key)."""
    import uvicorn

    from hf_sae_steer.serving.app import build_app

    policy = policy or AccessPolicy(bind=host)
    warning = exposure_warning(policy)
    if warning:
        print(f"hf-sae-steer serve: {warning}", file=sys.stderr, flush=True)
    app = build_app(engine, library, limits=limits, served_names=served_names, policy=policy)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=5)  # fmt: skip
    server = uvicorn.Server(config)
    if on_ready is not None:
        startup = server.startup

        async def announce(*args: Any, **kwargs: Any) -> None:
            await startup(*args, **kwargs)
            if server.started:
                on_ready(f"http://{host}:{port}/v1")

        server.startup = announce  # type: ignore[method-assign]
    try:
        server.run()
    finally:
        engine.close()
