"""Decoding options of a request (:class:`Sampling`) and their validation from a body.
Pure Python (no torch, no HTTP)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hf_sae_steer.serving.errors import RequestError


@dataclass(frozen=True)
class Sampling:
    """Decoding options; ``temperature == 0`` is greedy decoding."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def parse_sampling(body: Mapping[str, Any]) -> Sampling:
    """``temperature``, ``top_p`` and ``seed`` of a completion or chat body."""
    temperature = number(body.get("temperature", 1.0), "temperature", 0.0, 2.0)
    top_p = number(body.get("top_p", 1.0), "top_p", 0.0, 1.0)
    if top_p == 0.0:
        raise RequestError("top_p must be above 0 (at most 1).", param="top_p")
    seed = body.get("seed")
    if seed is not None and (not is_whole(seed) or abs(seed) >= 2**63):
        raise RequestError("seed must be a whole number.", param="seed")
    return Sampling(temperature=temperature, top_p=top_p, seed=seed)


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
