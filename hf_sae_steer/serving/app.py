"""The HTTP app (FastAPI): OpenAI's ``/v1/completions``, ``/v1/chat/completions`` and
``/v1/models``, server-sent-event streaming, and ``/health``, over any
:class:`~hf_sae_steer.serving.engine.Engine`.

Before any route: the Host header, the origin, the content type and the API key
(:mod:`.security`). A request walks: body read with a byte cap (413 beyond it, drained without
being kept) -> JSON, not too deep and valid Unicode (400; :mod:`.body`) -> schema (400) ->
:func:`~hf_sae_steer.serving.prepare.prepare` in a worker thread (tokenize, budget, steering:
400/404) -> ``engine.submit`` of each choice (one per prompt and sample; 429 when the queue is
full, and then none is queued; 503 once shutting down: :mod:`.lifecycle`) -> tokens -> each
choice's text, logprobs and usage (:mod:`.choices`) -> the response. Every error is OpenAI's
error JSON with a one-line message, and the server goes on serving. A client that disconnects
cancels its request (streamed or not), which frees its slot in the batch. Every generation is
counted for ``/metrics`` (:mod:`.metrics`; the other utility routes: :mod:`.utility_routes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from hf_sae_steer.serving import openai_format as fmt
from hf_sae_steer.serving import security
from hf_sae_steer.serving.body import read_json
from hf_sae_steer.serving.choices import Choice, choices_for, merged, usage
from hf_sae_steer.serving.concepts import ConceptLibrary
from hf_sae_steer.serving.engine import (
    Engine,
    EngineBusy,
    Finished,
    GenerationRequest,
    TokenStream,
)
from hf_sae_steer.serving.errors import RequestError
from hf_sae_steer.serving.lifecycle import Lifecycle
from hf_sae_steer.serving.metrics import Metrics
from hf_sae_steer.serving.prepare import Prepared, ServeLimits, prepare
from hf_sae_steer.serving.requests import ParsedRequest, parse_chat, parse_completion
from hf_sae_steer.serving.security import AccessPolicy, redact_paths
from hf_sae_steer.serving.served_models import ServedModels
from hf_sae_steer.serving.utility_routes import add_utility_routes


def build_app(
    engine: Engine,
    library: ConceptLibrary,
    *,
    limits: ServeLimits | None = None,
    served_names: tuple[str, ...] = (),
    steered_models: Sequence[str] = (),
    policy: AccessPolicy | None = None,
    lifecycle: Lifecycle | None = None,
) -> FastAPI:
    """The app serving ``engine`` with ``library``'s concepts; the first served name is the
    model id clients see (default: the engine's name). ``steered_models``: the
    ``--steered-model NAME=CONCEPT[:OPTIONS]`` values, each resolved now (a bad one raises
    here, before serving). ``policy``: who may use it (API key, Host, CORS; :mod:`.security`),
    by default loopback without a key. ``lifecycle``: its requests in flight and its shutdown
    grace (:mod:`.lifecycle`)."""
    limits = limits or ServeLimits()
    names = served_names or (engine.name,)
    served = ServedModels.from_args(names, steered_models)
    for name, items in served.steered.items():
        try:
            library.resolve(items)
        except RequestError as error:
            reason = str(error).removeprefix("steering[0]: ")
            raise ValueError(f"--steered-model {name}: {reason}") from None
    created = int(time.time())
    app = FastAPI(title="hf-sae-steer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.library = engine, library
    security.install(app, policy or AccessPolicy())
    lifecycle = lifecycle or Lifecycle()
    metrics = Metrics(engine)
    app.state.lifecycle, app.state.metrics = lifecycle, metrics
    # 503 once shutting down, streams in flight tracked, every generation counted
    engine = metrics.observe(lifecycle.gate(engine))
    app.add_middleware(_Counted, metrics=metrics)  # outermost: refusals are counted too
    add_utility_routes(app, engine, limits, served, metrics)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        headers = {"Retry-After": "1"} if error.status == 429 else None
        return JSONResponse(error.to_json(), status_code=error.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {error.detail}"
        return JSONResponse(RequestError(message).to_json(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        message = f"Internal error ({type(error).__name__}): {redact_paths(str(error))}"
        message = message.splitlines()[0]
        body = RequestError(message, kind="server_error").to_json()
        return JSONResponse(body, status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": names[0], **engine.stats()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        concepts = library.describe()
        data = served.listing(created, [c["name"] for c in concepts])
        return {"object": "list", "data": data, "concepts": concepts}

    async def handle(request: Request, parse: Callable[..., ParsedRequest]) -> Any:
        parsed = parse(await read_json(request, limits.body_limit), limits)
        ready = await run_in_threadpool(prepare, parsed, engine, library, limits, served)
        streams = submit_all(engine, ready.jobs)
        choices = choices_for(parsed, ready, engine.tokenizer)
        if parsed.stream:
            events = sse(parsed, ready, streams, choices)
            return StreamingResponse(events, media_type="text/event-stream")
        return await whole(request, parsed, ready, streams, choices)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await handle(request, parse_completion)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await handle(request, parse_chat)

    return app


def submit_all(engine: Engine, jobs: Sequence[GenerationRequest]) -> list[TokenStream]:
    """Every choice's stream, or none: a full queue cancels those already queued (429)."""
    streams: list[TokenStream] = []
    try:
        for job in jobs:
            streams.append(engine.submit(job))
    except EngineBusy as error:
        for stream in streams:
            asyncio.ensure_future(stream.cancel())
        raise RequestError(
            str(error), status=429, code="server_busy", kind="rate_limit_error"
        ) from None
    return streams


async def _cancel_all(streams: Sequence[TokenStream]) -> None:
    for stream in streams:
        await stream.cancel()


async def whole(
    request: Request, parsed: ParsedRequest, ready: Prepared, streams: list[TokenStream],
    choices: list[Choice],
) -> JSONResponse:  # fmt: skip
    """Collect a non-streamed response; a client that goes away cancels the generation."""
    watcher = asyncio.create_task(_cancel_on_disconnect(request, streams))
    try:
        async for i, event in merged(streams):
            choices[i].add(event)
            if choices[i].ended:
                await streams[i].cancel()
            if isinstance(event, Finished):
                _raise_failure(event, choices[i].ended)
    finally:
        watcher.cancel()
        await _cancel_all(streams)
    body = fmt.response(
        parsed, fmt.new_id(parsed.kind), ready.model, [c.body() for c in choices],
        usage(ready.prompt_ids, choices), ready.steering.applied,
    )  # fmt: skip
    return JSONResponse(body)


async def sse(
    parsed: ParsedRequest, ready: Prepared, streams: list[TokenStream], choices: list[Choice]
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""
    rid, model, applied = fmt.new_id(parsed.kind), ready.model, ready.steering.applied
    try:
        for c in choices:
            first = c.first_chunk_text()
            yield _event(fmt.chunk(parsed, rid, model, first, index=c.index, first=True,
                                   steering=None if c.index else applied))  # fmt: skip
        async for i, event in merged(streams):
            c = choices[i]
            delta = c.add(event)
            echoed = c.prompt_chunk()
            if echoed is not None:
                yield _event(fmt.chunk(parsed, rid, model, echoed[0], index=i,
                                       logprobs=echoed[1]))  # fmt: skip
            if c.ended:
                await streams[i].cancel()
            if isinstance(event, Finished):
                try:
                    _raise_failure(event, c.ended)
                except RequestError as error:
                    yield _event(error.to_json())
                    break
                yield _event(fmt.chunk(parsed, rid, model, delta, c.finish_reason, index=i,
                                       logprobs=c.chunk_logprobs(), steering=applied))  # fmt: skip
            elif delta:
                yield _event(fmt.chunk(parsed, rid, model, delta, index=i,
                                       logprobs=c.chunk_logprobs()))  # fmt: skip
        else:
            if parsed.include_usage:
                yield _event(fmt.usage_chunk(parsed, rid, model, usage(ready.prompt_ids, choices)))
        yield "data: [DONE]\n\n"
    finally:  # the client went away (the task is cancelled) or we are done: free the slots
        await _cancel_all(streams)


def _raise_failure(done: Finished, stopped: bool) -> None:
    if done.reason == "error":
        kind = "invalid_request_error" if done.status < 500 else "server_error"
        message = done.error or "Generation failed."
        if done.status >= 500:  # the server's own failure: its paths stay in its log
            message = redact_paths(message)
        raise RequestError(message, status=done.status, kind=kind)
    if done.reason == "cancelled" and not stopped:
        raise RequestError(
            "The request was cancelled (the server is shutting down).", status=503,
            kind="server_error",
        )  # fmt: skip


async def _cancel_on_disconnect(request: Request, streams: Sequence[TokenStream]) -> None:
    with contextlib.suppress(Exception):
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                await _cancel_all(streams)
                return


class _Counted:
    """ASGI middleware: :meth:`Metrics.count_http` around the app."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self._app = metrics.count_http(app)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"
