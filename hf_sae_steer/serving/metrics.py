"""``GET /metrics``: the server's counters in Prometheus' text format (``prometheus-client``).

Each app has its own registry (several apps in one process never share counters):

- ``hf_sae_steer_requests_total{steering, finish_reason}``: generations that ended, ``steering``
  ``base`` or ``steered`` (any steering, from the body or a steered model name);
  ``finish_reason`` ``stop``, ``length``, ``cancelled`` (the client left, a stop string, the
  shutdown) or ``error``;
- ``hf_sae_steer_prompt_tokens_total{steering}`` and
  ``hf_sae_steer_generation_tokens_total{steering}``;
- ``hf_sae_steer_request_latency_seconds{steering}`` (submission to the last event) and
  ``hf_sae_steer_time_to_first_token_seconds{steering}``: histograms;
- ``hf_sae_steer_requests_running`` and ``hf_sae_steer_requests_waiting``: the engine's queue at
  scrape time (vLLM: every request it holds counts as running);
- ``hf_sae_steer_http_requests_total{path, status}``: every HTTP answer, refusals included
  (paths outside the API count as ``other``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from hf_sae_steer.serving.engine import (
    Engine,
    Finished,
    GenerationRequest,
    StreamEvent,
    Tokens,
    TokenStream,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models", "/health",
                   "/metrics", "/tokenize", "/detokenize", "/version"})  # fmt: skip
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The counters of one app over ``engine`` (module docstring)."""

    def __init__(self, engine: Engine) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        kind = ["steering"]
        self.requests = Counter("hf_sae_steer_requests", "Generations that ended.",
                                [*kind, "finish_reason"], registry=self.registry)  # fmt: skip
        self.prompt_tokens = Counter("hf_sae_steer_prompt_tokens", "Prompt tokens of ended "
                                     "generations.", kind, registry=self.registry)  # fmt: skip
        self.generation_tokens = Counter("hf_sae_steer_generation_tokens", "Tokens generated.",
                                         kind, registry=self.registry)  # fmt: skip
        self.latency = Histogram("hf_sae_steer_request_latency_seconds", "Submission to the "
                                 "last event.", kind, buckets=LATENCY_BUCKETS,
                                 registry=self.registry)  # fmt: skip
        self.first_token = Histogram("hf_sae_steer_time_to_first_token_seconds", "Submission "
                                     "to the first token.", kind, buckets=LATENCY_BUCKETS,
                                     registry=self.registry)  # fmt: skip
        self.http = Counter("hf_sae_steer_http_requests", "HTTP answers.", ["path", "status"],
                            registry=self.registry)  # fmt: skip
        self.registry.register(_Queue(engine))

    def observe(self, engine: Engine) -> Engine:
        """``engine`` whose streams are counted (everything else is the engine's own)."""
        return _Observed(engine, self)  # type: ignore[return-value]

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def count_http(self, app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        """ASGI middleware (outermost) counting every answer by path and status."""

        async def counted(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            path = scope["path"] if scope["path"] in PATHS else "other"

            async def sending(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    self.http.labels(path, str(message["status"])).inc()
                await send(message)

            await app(scope, receive, sending)

        return counted


class _Queue:
    """The engine's running and waiting requests, read at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        stats = self._engine.stats()
        running = stats.get("running", stats.get("active", 0))
        yield GaugeMetricFamily("hf_sae_steer_requests_running", "Requests decoding now.",
                                value=running)  # fmt: skip
        yield GaugeMetricFamily("hf_sae_steer_requests_waiting", "Requests queued.",
                                value=stats.get("waiting", 0))  # fmt: skip

    def describe(self) -> Iterator[Any]:
        return iter(())


class _Observed:
    def __init__(self, engine: Engine, metrics: Metrics) -> None:
        self._engine, self._metrics = engine, metrics

    def submit(self, request: GenerationRequest) -> TokenStream:
        kind = "base" if request.steering.is_base else "steered"
        stream = self._engine.submit(request)
        return _ObservedStream(stream, self._metrics, kind, len(request.prompt_ids))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class _ObservedStream:
    def __init__(self, stream: TokenStream, metrics: Metrics, kind: str, prompt: int) -> None:
        self._stream, self._metrics, self._kind, self._prompt = stream, metrics, kind, prompt
        self._start = time.perf_counter()

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        metrics, kind = self._metrics, self._kind
        first, done = True, None
        made = 0
        try:
            async for event in self._stream:
                if isinstance(event, Tokens):
                    made += len(event.ids)
                    if first:
                        metrics.first_token.labels(kind).observe(time.perf_counter() - self._start)
                        first = False
                elif isinstance(event, Finished):
                    done = event
                yield event
        finally:
            reason = done.reason if done is not None else "cancelled"
            metrics.requests.labels(kind, reason).inc()
            metrics.prompt_tokens.labels(kind).inc(self._prompt)
            metrics.generation_tokens.labels(kind).inc(made)
            metrics.latency.labels(kind).observe(time.perf_counter() - self._start)

    async def cancel(self) -> None:
        await self._stream.cancel()
