"""The engine protocol: what the HTTP front end needs from whatever generates tokens.

The front end (:mod:`hf_sae_steer.serving.app`) parses and validates a request
(:mod:`.schema`), renders chat messages, tokenizes, checks the prompt against the context,
resolves the steering through the concept library (:mod:`.concepts`), and only then hands the
engine a :class:`GenerationRequest`: token ids, a token budget, sampling options and the
resolved steering. Engines never parse HTTP and never see an invalid request.

``engine.submit(request)`` returns a :class:`TokenStream` at once, or raises
:class:`EngineBusy` when its bounded queue is full (the front end answers 429). The stream is an
async iterator of :class:`Tokens` chunks (new token ids, in order, each with its
:class:`TokenLogprob` when the request asked for ``logprobs``) that ends after exactly one
:class:`Finished` event (``finish_reason``: ``"stop"`` at an end-of-sequence token, ``"length"``
at ``max_tokens``, ``"cancelled"``, or ``"error"`` with a message, e.g. a steering that turned
the hidden states NaN). ``await stream.cancel()`` (or closing the iterator) stops that request's
generation and frees its slot; other requests are unaffected. Stop strings are the front end's:
it cancels the stream when one appears.

Log-probabilities are the (steered) model's own: the log-softmax of its float32 logits before
any sampling control (temperature, penalties, bias) touches them, as vLLM reports them. With
``prompt_logprobs`` the stream starts with one :class:`PromptLogprobs` event (the first prompt
token has none: nothing precedes it); ``max_tokens=0`` then scores the prompt and generates
nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from hf_sae_steer.serving.concepts import BASE, ResolvedSteering
from hf_sae_steer.serving.sampling import Sampling

FinishReason = Literal["stop", "length", "cancelled", "error"]
_ids = itertools.count()


class EngineBusy(RuntimeError):
    """The engine's queue is full: try again later (HTTP 429)."""


@dataclass
class GenerationRequest:
    """What an engine generates: ``prompt_ids`` continued by at most ``max_tokens`` tokens
    (exactly ``max_tokens`` with ``ignore_eos``). ``logprobs`` / ``prompt_logprobs``: report
    each generated / prompt token's log-probability with that many most likely alternatives
    (``None``: don't)."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    steering: ResolvedSteering = BASE
    request_id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """``token``'s log-probability under the (steered) model at its position, and the ``top``
    most likely tokens there, best first: ``((token, logprob), ...)``."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Tokens:
    """New token ids of one request, in order (``logprobs``: one entry per id, when asked)."""

    ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class PromptLogprobs:
    """The prompt's tokens scored (``None`` for the first: nothing precedes it)."""

    entries: tuple[TokenLogprob | None, ...]


@dataclass(frozen=True)
class Finished:
    """The last event of a stream. With ``reason="error"``, ``status`` says whose fault it
    was: 400 when the request itself failed (its steering turned the hidden states NaN), 500
    when the engine did."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    status: int = 500


StreamEvent = Tokens | PromptLogprobs | Finished


@runtime_checkable
class TokenStream(Protocol):
    """One request's output: ``async for event in stream`` (see the module docstring)."""

    def __aiter__(self) -> AsyncIterator[StreamEvent]: ...

    async def cancel(self) -> None: ...


@runtime_checkable
class Engine(Protocol):
    """A generator of tokens for validated requests (see the module docstring).

    ``tokenizer`` is the model's (the front end tokenizes and renders chat templates with it),
    ``context_length`` the most tokens a sequence may hold (prompt plus new tokens),
    ``eos_token_ids`` the ids that end a generation.
    """

    name: str
    tokenizer: Any
    context_length: int
    eos_token_ids: frozenset[int]

    def submit(self, request: GenerationRequest) -> TokenStream: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
