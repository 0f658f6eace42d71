"""Decoding options of a request (:class:`Sampling`) and their validation from a body.
Pure Python (no torch, no HTTP).

Ranges follow OpenAI's API (``temperature`` 0..2, ``top_p`` (0, 1], penalties -2..2,
``logit_bias`` -100..100) and vLLM's extensions (``top_k``, ``min_p``, ``repetition_penalty``,
``min_tokens``, ``stop_token_ids``). A value whose arithmetic would overflow is never passed on:
a ``temperature`` below :data:`GREEDY_BELOW` is greedy decoding (as vLLM does; dividing logits by
1e-40 gives infinities), ``repetition_penalty`` is bounded, and the sampler always keeps the most
likely token however small ``top_p`` / large ``min_p`` is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hf_sae_steer.serving.errors import RequestError

GREEDY_BELOW = 1e-5  # vLLM's _SAMPLING_EPS: temperatures below it decode greedily
MAX_LOGIT_BIAS = 300  # entries; OpenAI's own limit is of this order
MAX_STOP_TOKEN_IDS = 64
_TOKEN_ID = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class Sampling:
    """Decoding options; ``temperature == 0`` is greedy decoding. ``top_k`` 0 and ``min_p`` 0
    are off; penalties at their neutral values are off; ``logit_bias`` is ``((token, bias),
    ...)``; ``min_tokens`` holds back end-of-sequence and ``stop_token_ids`` until that many
    tokens were generated; a token of ``stop_token_ids`` ends the generation (its text is not
    returned)."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def shapes_logits(self) -> bool:
        """Whether anything but the plain argmax / temperature / top-p picks the token."""
        return bool(
            self.repetition_penalty != 1.0
            or self.presence_penalty
            or self.frequency_penalty
            or self.logit_bias
            or self.min_tokens
        )


def parse_sampling(body: Mapping[str, Any]) -> Sampling:
    """The decoding options of a completion or chat body (module docstring)."""
    temperature = number(body.get("temperature"), "temperature", 0.0, 2.0)
    top_p = number(body.get("top_p"), "top_p", 0.0, 1.0)
    if top_p == 0.0:
        raise RequestError("top_p must be above 0 (at most 1).", param="top_p")
    seed = body.get("seed")
    if seed is not None and (not is_whole(seed) or abs(seed) >= 2**63):
        raise RequestError("seed must be a whole number.", param="seed")
    top_k = body.get("top_k")
    if top_k is not None and (not is_whole(top_k) or top_k < -1):
        raise RequestError("top_k must be a whole number >= 1 (0 or -1: off).", param="top_k")
    repetition = number(body.get("repetition_penalty"), "repetition_penalty", 0.01, 100.0)
    return Sampling(
        temperature=0.0 if temperature < GREEDY_BELOW else temperature,
        top_p=top_p,
        seed=seed,
        top_k=max(0, top_k or 0),
        min_p=number(body.get("min_p"), "min_p", 0.0, 1.0, default=0.0),
        repetition_penalty=repetition,
        presence_penalty=number(body.get("presence_penalty"), "presence_penalty", -2, 2, 0.0),
        frequency_penalty=number(body.get("frequency_penalty"), "frequency_penalty", -2, 2, 0.0),
        min_tokens=_min_tokens(body.get("min_tokens"), body.get("max_tokens")),
        stop_token_ids=_stop_token_ids(body.get("stop_token_ids")),
        logit_bias=_logit_bias(body.get("logit_bias")),
    )


def number(value: Any, name: str, low: float, high: float, default: float = 1.0) -> float:
    """A finite number in ``[low, high]`` (``None``: ``default``)."""
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and low <= value <= high)
    ):
        raise RequestError(f"{name} must be a number from {low:g} to {high:g}.", param=name)
    return float(value)


def is_whole(value: Any) -> bool:
    """A JSON integer (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _min_tokens(value: Any, max_tokens: Any) -> int:
    if value is None:
        return 0
    if not is_whole(value) or value < 0:
        raise RequestError("min_tokens must be a whole number >= 0.", param="min_tokens")
    if is_whole(max_tokens) and value > max_tokens:
        raise RequestError(
            f"min_tokens={value} is more than max_tokens={max_tokens}.", param="min_tokens"
        )
    return int(value)


def _stop_token_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if (
        not isinstance(value, list)
        or len(value) > MAX_STOP_TOKEN_IDS
        or not all(is_whole(t) and t >= 0 for t in value)
    ):
        raise RequestError(
            f"stop_token_ids must be a list of at most {MAX_STOP_TOKEN_IDS} token ids.",
            param="stop_token_ids",
        )
    return tuple(dict.fromkeys(int(t) for t in value))


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """``{"token id": bias}`` (OpenAI's form: keys are token ids as strings)."""
    if value is None:
        return ()
    if not isinstance(value, Mapping) or len(value) > MAX_LOGIT_BIAS:
        raise RequestError(
            f'logit_bias must be an object {{"token id": bias}} with at most {MAX_LOGIT_BIAS} '
            "entries.",
            param="logit_bias",
        )
    out = []
    for key, bias in value.items():
        if not isinstance(key, str) or not _TOKEN_ID.fullmatch(key):
            raise RequestError(
                f"logit_bias: {key!r} is not a token id (a whole number >= 0).",
                param="logit_bias",
            )
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            raise RequestError(
                f"logit_bias[{key}] must be a number from -100 to 100.", param="logit_bias"
            )
        out.append((int(key), float(bias)))
    return tuple(out)
