"""The commands that keep running until stopped: ``chat`` (a terminal loop), ``app`` (the web
playground) and ``serve`` (the OpenAI-compatible server). Parsing and printing only; the
playground, the web app and the server hold the logic."""

from __future__ import annotations

import argparse
from typing import Any

from hf_sae_steer.cli.chat import run_chat
from hf_sae_steer.cli.demo import find_assets
from hf_sae_steer.cli.playground import Playground
from hf_sae_steer.cli.settings import Settings, parse_direction, parse_method


def _playground(args: argparse.Namespace) -> Playground:
    settings = Settings(
        method=parse_method(args.method),
        strength=args.strength,
        positions=args.positions,
        direction=parse_direction(args.direction),
        preserve_error=args.preserve_error,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    return Playground.load(
        assets=args.assets,
        model=args.model,
        sae=args.sae,
        scores=args.scores,
        compare_model=args.compare_model,
        latent_prompts=args.latent_prompts,
        reference=args.reference,
        reference_scores=args.reference_scores,
        device=args.device,
        dtype=args.dtype,
        layer=args.layer,
        site=args.site,
        clamp_value=args.clamp_value,
        settings=settings,
    )


def cmd_chat(args: argparse.Namespace) -> None:
    run_chat(_playground(args), debug=args.debug)


def cmd_app(args: argparse.Namespace) -> None:
    try:  # before loading the model: without Gradio there is nothing to serve
        from hf_sae_steer.cli import webapp
    except ImportError as error:
        if (error.name or "gradio").split(".")[0] != "gradio":
            raise
        raise ImportError(
            "The web app needs Gradio, which is not installed: pip install 'hf_sae_steer[app]'"
        ) from error
    webapp.check_address(args.host, args.port)
    webapp.serve(_playground(args), host=args.host, port=args.port, share=args.share)


def cmd_serve(args: argparse.Namespace) -> None:
    try:  # before loading the model: without FastAPI and uvicorn there is nothing to serve
        from hf_sae_steer.serving import server
        from hf_sae_steer.serving.concepts import concepts_in, parse_concept_args
        from hf_sae_steer.serving.lifecycle import Lifecycle
        from hf_sae_steer.serving.prepare import ServeLimits
        from hf_sae_steer.serving.security import AccessPolicy
        from hf_sae_steer.serving.served_models import ServedModels
    except ImportError as error:
        if (error.name or "").split(".")[0] not in ("fastapi", "uvicorn", "starlette"):
            raise
        raise ImportError(
            f"hf-sae-steer serve needs {error.name}: pip install 'hf_sae_steer[serve]'"
        ) from error
    Lifecycle(args.shutdown_grace)  # before loading the model: a bad grace fails fast
    policy = AccessPolicy.from_options(  # before loading the model: bad values fail fast
        api_key=args.api_key, allowed_origins=args.allowed_origins,
        allowed_hosts=args.allowed_hosts, bind=args.host,
    )  # fmt: skip
    concepts = concepts_in(args.concepts_dir) if args.concepts_dir else {}
    for name, source in parse_concept_args(args.concept).items():
        if name in concepts:
            raise ValueError(f"Concept {name!r} is in --concepts-dir and given by --concept.")
        concepts[name] = source
    setup = server.setup_from(
        model=args.model, saes=args.sae, concepts=concepts,
        demo=None if args.model else find_assets(args.assets),
        served_name=args.served_model_name, device=args.device, dtype=args.dtype,
        max_batch=args.max_batch, max_waiting=args.max_waiting, max_context=args.max_context,
        options=_engine_options(args),
    )  # fmt: skip
    ServedModels.from_args([setup.served_name], args.steered_model)  # bad names: before loading
    engine, library = server.start_engine(args.engine, setup)
    names = ", ".join(library.concepts) or "none"

    def ready(url: str) -> None:
        if not args.quiet:
            print(f"hf-sae-steer serve: {setup.served_name} on {url} (engine {args.engine}; "
                  f"concepts: {names})", flush=True)  # fmt: skip

    server.serve(
        engine, library, host=args.host, port=args.port,
        limits=ServeLimits(max_prompt_chars=args.max_prompt_chars),
        served_names=(setup.served_name,), steered_models=args.steered_model, on_ready=ready,
        policy=policy, shutdown_grace=args.shutdown_grace,
    )  # fmt: skip


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.tensor_parallel_size == 1:
        return {}
    if args.engine != "vllm":
        raise ValueError("--tensor-parallel-size needs --engine vllm.")
    return {"tensor_parallel_size": args.tensor_parallel_size}
