"""The server's requests in flight and its shutdown: a grace in which running requests finish,
then a clean end for the rest.

On SIGTERM or Ctrl-C the server stops listening and :meth:`Lifecycle.begin_shutdown` starts the
grace (``--shutdown-grace`` seconds). A request that arrives meanwhile on an open connection
gets 503. Running and queued requests go on; when the grace ends, each one still in flight is
cancelled in its engine, so a whole response becomes OpenAI's 503 error and a stream ends with
an error event and ``data: [DONE]``. Every request thus ends through the app's own code, before
uvicorn's backstop (the grace plus :data:`BACKSTOP` seconds) would cancel its task: no plain
500s and no tracebacks for cancellations that are expected.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

from hf_sae_steer.serving.engine import Engine, GenerationRequest, StreamEvent, TokenStream
from hf_sae_steer.serving.errors import RequestError

BACKSTOP = 10.0  # seconds after the grace before uvicorn cancels what is left (never needed)
SHUTTING_DOWN = "The server is shutting down; retry the request on another server or later."


class Lifecycle:
    """The streams in flight of one app, and whether it is shutting down."""

    def __init__(self, grace: float = 30.0) -> None:
        if not (math.isfinite(grace) and grace >= 0):
            raise ValueError(f"--shutdown-grace must be a number of seconds >= 0, got {grace}.")
        self.grace = float(grace)
        self.draining = False  # the grace has begun: new requests get 503
        self.cut = False  # the grace is over: requests in flight were cancelled
        self._streams: set[TokenStream] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the app serves on (set at start-up)."""
        self._loop = loop

    @contextlib.contextmanager
    def tracking(self, stream: TokenStream) -> Any:
        """Count ``stream`` as in flight inside the block; a stream that begins after the grace
        ended is cancelled at once."""
        self._streams.add(stream)
        if self.cut:
            asyncio.ensure_future(stream.cancel())
        try:
            yield
        finally:
            self._streams.discard(stream)

    def track(self, stream: TokenStream) -> TokenStream:
        """``stream``, counted as in flight while it is read (see :meth:`tracking`)."""
        return _Tracked(stream, self)

    def gate(self, engine: Engine) -> Engine:
        """``engine`` whose :meth:`submit` refuses with 503 once the grace has begun and
        tracks every stream it returns (everything else is the engine's own)."""
        return _Gated(engine, self)  # type: ignore[return-value]

    def begin_shutdown(self) -> None:
        """Start the grace. Safe from a signal handler or another thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.draining = True
            return
        with contextlib.suppress(RuntimeError):  # the loop stopped: nothing is in flight
            loop.call_soon_threadsafe(self._start_grace)

    def _start_grace(self) -> None:
        if self.draining:
            return
        self.draining = True
        assert self._loop is not None
        self._loop.call_later(self.grace, self._cut)

    def _cut(self) -> None:
        self.cut = True
        for stream in list(self._streams):
            asyncio.ensure_future(stream.cancel())


class _Gated:
    """An engine seen through a :class:`Lifecycle` (see :meth:`Lifecycle.gate`)."""

    def __init__(self, engine: Engine, lifecycle: Lifecycle) -> None:
        self._engine, self._lifecycle = engine, lifecycle

    def submit(self, request: GenerationRequest) -> TokenStream:
        lifecycle = self._lifecycle
        if lifecycle.draining:
            raise RequestError(SHUTTING_DOWN, status=503, code="server_shutting_down",
                               kind="server_error")  # fmt: skip
        with contextlib.suppress(RuntimeError):  # called off the loop: bound elsewhere
            lifecycle.bind(asyncio.get_running_loop())
        return lifecycle.track(self._engine.submit(request))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class _Tracked:
    """A token stream that counts itself in flight while it is read."""

    def __init__(self, stream: TokenStream, lifecycle: Lifecycle) -> None:
        self._stream, self._lifecycle = stream, lifecycle

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        with self._lifecycle.tracking(self._stream):
            async for event in self._stream:
                yield event

    async def cancel(self) -> None:
        await self._stream.cancel()
