"""The HTTP app (FastAPI): OpenAI's ``/v1/completions``, ``/v1/chat/completions`` and
``/v1/models``, server-sent-event streaming, and ``/health``, over any
:class:`~hf_sae_steer.serving.engine.Engine`.

A request walks: body read with a byte cap (413 beyond it, drained without being kept) ->
JSON, not too deep and valid Unicode (400; :mod:`.body`) -> schema (400) ->
:func:`~hf_sae_steer.serving.prepare.prepare` in a worker thread (tokenize, budget, steering:
400/404) -> ``engine.submit`` (429 when the queue is full) -> tokens -> text (stop strings) ->
the response. Every error is OpenAI's error JSON with a one-line message, and the server goes on
serving. A client that disconnects cancels its request (streamed or not), which frees its slot
in the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from hf_sae_steer.serving import openai_format as fmt
from hf_sae_steer.serving import security
from hf_sae_steer.serving.body import read_json
from hf_sae_steer.serving.concepts import ConceptLibrary
from hf_sae_steer.serving.engine import Engine, EngineBusy, Finished, Tokens, TokenStream
from hf_sae_steer.serving.errors import RequestError
from hf_sae_steer.serving.lifecycle import Lifecycle
from hf_sae_steer.serving.metrics import Metrics
from hf_sae_steer.serving.prepare import ServeLimits, prepare
from hf_sae_steer.serving.requests import ParsedRequest, parse_chat, parse_completion
from hf_sae_steer.serving.security import AccessPolicy, redact_paths
from hf_sae_steer.serving.utility_routes import add_utility_routes


def build_app(
    engine: Engine,
    library: ConceptLibrary,
    *,
    limits: ServeLimits | None = None,
    served_names: tuple[str, ...] = (),
    policy: AccessPolicy | None = None,
    lifecycle: Lifecycle | None = None,
) -> FastAPI:
    """The app serving ``engine`` with ``library``'s concepts; the first served name is the
    model id clients see (default: the engine's name). ``policy``: who may use it (API key,
    Host, CORS; :mod:`.security`), by default loopback without a key. ``lifecycle``: its
    requests in flight and its shutdown grace (:mod:`.lifecycle`)."""
    limits = limits or ServeLimits()
    names = served_names or (engine.name,)
    created = int(time.time())
    app = FastAPI(title="hf-sae-steer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.library = engine, library
    security.install(app, policy or AccessPolicy())
    lifecycle = lifecycle or Lifecycle()
    app.state.lifecycle = lifecycle
    metrics = Metrics(engine)
    app.state.metrics = metrics
    # 503 once shutting down, streams in flight tracked, every generation counted
    engine = metrics.observe(lifecycle.gate(engine))
    app.add_middleware(_Counted, metrics=metrics)  # outermost: refusals are counted too
    add_utility_routes(app, engine, limits, names, metrics)

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
        entry = {
            "id": names[0], "object": "model", "created": created, "owned_by": "hf-sae-steer",
            "concepts": [c["name"] for c in concepts],
        }  # fmt: skip
        return {"object": "list", "data": [entry], "concepts": concepts}

    async def handle(request: Request, parse: Callable[..., ParsedRequest]) -> Any:
        parsed = parse(await read_json(request, limits.body_limit), limits)
        job = await run_in_threadpool(prepare, parsed, engine, library, limits, names)
        try:
            stream = engine.submit(job)
        except EngineBusy as error:
            raise RequestError(
                str(error), status=429, code="server_busy", kind="rate_limit_error"
            ) from None
        applied = job.steering.applied
        if parsed.stream:
            events = sse(parsed, stream, engine.tokenizer, names[0], applied)
            return StreamingResponse(events, media_type="text/event-stream")
        return await whole(request, parsed, stream, engine.tokenizer, names[0], applied)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await handle(request, parse_completion)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await handle(request, parse_chat)

    return app


async def whole(
    request: Request, parsed: ParsedRequest, stream: TokenStream, tokenizer: Any, model: str,
    applied: tuple[dict[str, Any], ...],
) -> JSONResponse:  # fmt: skip
    """Collect a non-streamed response; a client that goes away cancels the generation."""
    text = fmt.TextStream(tokenizer, parsed.stop)
    watcher = asyncio.create_task(_cancel_on_disconnect(request, stream))
    done: Finished | None = None
    try:
        async for event in stream:
            if isinstance(event, Tokens):
                text.push(event.ids)
                if text.stopped:
                    await stream.cancel()
            else:
                done = event
    finally:
        watcher.cancel()
        await stream.cancel()
    assert done is not None
    _raise_failure(done, text.stopped)
    reason = fmt.finish_reason(done, text.stopped)
    body = fmt.response(parsed, fmt.new_id(parsed.kind), model, text.whole_text(), reason, done,
                        applied)  # fmt: skip
    return JSONResponse(body)


async def sse(
    parsed: ParsedRequest, stream: TokenStream, tokenizer: Any, model: str,
    applied: tuple[dict[str, Any], ...],
) -> AsyncIterator[str]:  # fmt: skip
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""
    rid = fmt.new_id(parsed.kind)
    text = fmt.TextStream(tokenizer, parsed.stop)
    done: Finished | None = None
    try:
        yield _event(fmt.chunk(parsed, rid, model, None, steering=applied, first=True))
        async for event in stream:
            if isinstance(event, Tokens):
                delta = text.push(event.ids)
                if delta:
                    yield _event(fmt.chunk(parsed, rid, model, delta))
                if text.stopped:
                    await stream.cancel()
            else:
                done = event
        assert done is not None
        try:
            _raise_failure(done, text.stopped)
        except RequestError as error:
            yield _event(error.to_json())
        else:
            reason = fmt.finish_reason(done, text.stopped)
            yield _event(fmt.chunk(parsed, rid, model, text.finish(), reason, steering=applied))
            if parsed.include_usage:
                yield _event(fmt.usage_chunk(parsed, rid, model, done))
        yield "data: [DONE]\n\n"
    finally:  # the client went away (the task is cancelled) or we are done: free the slot
        await stream.cancel()


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


async def _cancel_on_disconnect(request: Request, stream: TokenStream) -> None:
    with contextlib.suppress(Exception):
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                await stream.cancel()
                return


class _Counted:
    """ASGI middleware: :meth:`Metrics.count_http` around the app."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self._app = metrics.count_http(app)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"
