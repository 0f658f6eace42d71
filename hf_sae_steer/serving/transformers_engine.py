"""The default engine: transformers, in this process, no extra service.

One scheduler thread owns the model and runs every forward pass through a
:class:`~hf_sae_steer.serving.batch_decoder.BatchDecoder`: each iteration it drops finished and
cancelled rows, lets waiting requests join the running batch (continuous batching at step
granularity: a request that arrives while others generate is prefilled and joins at the next
step), and decodes one token for every running row. Each row is steered with its own edits by
:class:`~hf_sae_steer.steering.batched.BatchedSteering`; no SteeredModel is ever mutated.

Bounded resources: at most ``max_batch`` rows run at once and at most ``max_waiting`` requests
wait; :meth:`TransformersEngine.submit` raises :class:`EngineBusy` beyond that (HTTP 429).
Tokens go back to each request's asyncio queue through its event loop
(``call_soon_threadsafe``); cancelling a stream flags its row, which leaves the batch at the
next step. A row that fails (its steering turned NaN, its forward pass raised, its sampling
failed) ends alone with an error event; the decoder keeps the other rows going
(:mod:`.batch_decoder`). Anything else that raises fails the rows running at that moment and
the engine goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from torch import nn

from hf_sae_steer.models import context_length, eos_token_ids, model_id, pad_token_id
from hf_sae_steer.serving.batch_decoder import BatchDecoder, Row
from hf_sae_steer.serving.concepts import ConceptLibrary
from hf_sae_steer.serving.engine import (
    EngineBusy,
    Finished,
    GenerationRequest,
    PromptLogprobs,
    StreamEvent,
    Tokens,
)
from hf_sae_steer.steering.batched import BatchedSteering


class _Job:
    """A submitted request: its row, where its events go, and whether it was cancelled."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.row = Row(request)
        self.loop = loop
        self.queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        self.cancelled = False
        self.finished = False

    def emit(self, event: StreamEvent) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def finish(self, reason: str, error: str | None = None, status: int = 500) -> None:
        if self.finished:
            return
        self.finished = True
        row = self.row
        done = Finished(reason, row.prompt_length, len(row.generated), error, status)  # type: ignore[arg-type]
        self.emit(done)


def _deliver(events: list[tuple[asyncio.Queue, StreamEvent]]) -> None:
    for queue, event in events:
        queue.put_nowait(event)


class _Stream:
    """The :class:`~hf_sae_steer.serving.engine.TokenStream` of one job."""

    def __init__(self, job: _Job, engine: TransformersEngine) -> None:
        self._job, self._engine = job, engine

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        done = False
        try:
            while True:
                event = await self._job.queue.get()
                done = isinstance(event, Finished)
                yield event
                if done:
                    return
        finally:
            if not done:
                self._engine._cancel(self._job)

    async def cancel(self) -> None:
        self._engine._cancel(self._job)


class TransformersEngine:
    """The embedded engine (module docstring). ``library`` says which sites to hook."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        library: ConceptLibrary,
        *,
        name: str | None = None,
        max_batch: int = 32,
        max_waiting: int = 64,
        max_context: int | None = None,
    ) -> None:
        if max_batch < 1 or max_waiting < 0:
            raise ValueError("max_batch must be >= 1 and max_waiting >= 0.")
        self.name = name or model_id(model) or type(model).__name__
        self.tokenizer = tokenizer
        self.library = library
        limit = context_length(model, tokenizer)
        if max_context is not None:
            limit = min(limit, max_context) if limit else max_context
        if not limit:
            raise ValueError(
                "The model's context length is unknown (no max_position_embeddings); "
                "pass --max-context."
            )
        self.context_length = int(limit)
        self.eos_token_ids = frozenset(eos_token_ids(model, tokenizer))
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self._steering = BatchedSteering(model, library.sites, layout=library.layout)
        self._decoder = BatchDecoder(
            model, self._steering, eos_token_ids=self.eos_token_ids,
            pad_token_id=pad_token_id(tokenizer),
        )  # fmt: skip
        self._waiting: deque[_Job] = deque()
        self._running: list[_Job] = []
        self._wake = threading.Condition()
        self._closed = False
        self._counts = {"completed": 0, "cancelled": 0, "errors": 0, "tokens": 0, "steps": 0}
        self._thread = threading.Thread(target=self._loop, name="hf-sae-steer-engine", daemon=True)
        self._thread.start()

    # -- the protocol -----------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> _Stream:
        """Queue ``request``; :class:`EngineBusy` when ``max_waiting`` requests already wait."""
        job = _Job(request, asyncio.get_running_loop())
        with self._wake:
            if self._closed:
                raise EngineBusy("The engine is shutting down.")
            if len(self._waiting) >= self.max_waiting:
                raise EngineBusy(
                    f"The server is busy ({len(self._running)} requests running, "
                    f"{len(self._waiting)} waiting); retry shortly."
                )
            self._waiting.append(job)
            self._wake.notify()
        return _Stream(job, self)

    def stats(self) -> dict[str, Any]:
        with self._wake:
            return {
                "engine": "transformers", "running": len(self._running),
                "waiting": len(self._waiting), "max_batch": self.max_batch,
                "max_waiting": self.max_waiting, "joinable": self._decoder.joinable,
                **self._counts,
            }  # fmt: skip

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)
        self._steering.remove()

    def _cancel(self, job: _Job) -> None:
        with self._wake:
            job.cancelled = True
            self._wake.notify()

    # -- the scheduler thread ---------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not self._running:
                    self._wake.wait()
                if self._closed:
                    break
                admitted = self._take_waiting()
            try:
                self._iterate(admitted)
            except Exception as error:  # noqa: BLE001 - fail these rows, keep serving
                self._fail_all(f"{type(error).__name__}: {error}".splitlines()[0])
        for job in [*self._running, *self._waiting]:
            job.finish("cancelled")

    def _take_waiting(self) -> list[_Job]:
        """Waiting jobs that join now (cancelled ones are answered and dropped)."""
        admitted: list[_Job] = []
        if not self._decoder.can_admit:
            return admitted
        room = self.max_batch - len(self._running)
        while self._waiting and len(admitted) < room:
            job = self._waiting.popleft()
            if job.cancelled:
                job.finish("cancelled")
                self._counts["cancelled"] += 1
            else:
                admitted.append(job)
        return admitted

    def _iterate(self, admitted: list[_Job]) -> None:
        decoder = self._decoder
        if admitted:
            with self._wake:
                self._running += admitted
            decoder.admit([job.row for job in admitted])
            self._publish(admitted, admitted=True)
        self._drop_finished()
        if self._running:
            decoder.step()
            self._counts["steps"] += 1
            self._publish(self._running)
            self._drop_finished()

    def _publish(self, jobs: list[_Job], admitted: bool = False) -> None:
        """Each job's newest token (one per forward pass), after its scored prompt when it was
        just ``admitted`` and asked for one: one wake-up of each event loop per step, not one
        per row (the loop and this thread share the GIL)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, StreamEvent]]] = {}
        for job in jobs:
            row = job.row
            if row.error or job.cancelled:
                continue
            events = by_loop.setdefault(job.loop, [])
            if admitted and row.prompt_logprobs is not None:
                events.append((job.queue, PromptLogprobs(row.prompt_logprobs)))
            if row.generated:
                scored = (row.logprobs[-1],) if row.request.logprobs is not None else None
                events.append((job.queue, Tokens((row.generated[-1],), scored)))
                self._counts["tokens"] += 1
        for loop, events in by_loop.items():
            if not events:
                continue
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                loop.call_soon_threadsafe(_deliver, events)

    def _drop_finished(self) -> None:
        with self._wake:
            leaving = [j for j in self._running if j.row.done or j.cancelled]
            if not leaving:
                return
            self._running = [j for j in self._running if not (j.row.done or j.cancelled)]
        self._decoder.release([j.row for j in leaving])
        for job in leaving:
            reason = "cancelled" if job.cancelled and not job.row.done else job.row.done
            key = {"cancelled": "cancelled", "error": "errors"}.get(reason, "completed")
            self._counts[key] += 1
            job.finish(reason, job.row.error, status=job.row.status)

    def _fail_all(self, message: str) -> None:
        with self._wake:
            jobs, self._running = self._running, []
        self._decoder.reset()
        for job in jobs:
            self._counts["errors"] += 1
            job.finish("error", f"Generation failed: {message}")
