"""What a steered ``generate()`` leaves with its KV cache, so that a later call can continue it.

A call that receives the cache of an earlier call (a chat that keeps its cache; 3 + 1 tokens
instead of 4) must label positions as one uninterrupted call would: the tokens the model
generated earlier come back as input, but they stay "generated". So each call records, with the
cache object it filled, which positions were generated and how long the cache was; a call that
starts from that cache takes the spans over, clipped to what the cache still holds (a cropped or
reset cache drops them). Tokens appended after them, such as a new user turn, are prompt.

Keyed weakly by the cache object (a ``Cache``, or the first tensor of a legacy tuple cache), so
nothing outlives the cache. Shared by every steered model: a cache belongs to one model anyway.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

from torch import Tensor

Spans = tuple[tuple[int, int], ...]  # half-open [start, end) position ranges, in order


@dataclass(frozen=True)
class _History:
    generated: Spans
    cache_length: int  # what the cache held when the call ended


_HISTORY: weakref.WeakKeyDictionary[Any, _History] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def passed_cache(kwargs: dict[str, Any]) -> Any:
    """The cache a generate() call was given (transformers 5 calls it ``cache``)."""
    for name in ("cache", "past_key_values"):
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def returned_cache(output: Any) -> Any:
    """The cache in a generate() result (``return_dict_in_generate=True``), if any."""
    for name in ("cache", "past_key_values"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None


def _key(cache: Any) -> Any:
    if isinstance(cache, tuple | list):  # legacy tuple-of-tuples: tuples take no weak refs
        first = cache[0][0] if cache and isinstance(cache[0], tuple | list) and cache[0] else None
        return first if isinstance(first, Tensor) else None
    return cache


def cache_length(cache: Any) -> int | None:
    """Positions the cache holds, or None when it is not a cache we can read."""
    get = getattr(cache, "get_seq_length", None)
    if callable(get):
        return int(get())
    key = _key(cache)
    return int(key.shape[-2]) if isinstance(key, Tensor) else None


def generated_before(cache: Any) -> Spans:
    """The generated positions of the earlier calls that filled ``cache``, still valid now."""
    key = _key(cache) if cache is not None else None
    if key is None:
        return ()
    with _LOCK:
        history = _HISTORY.get(key)
    now = cache_length(cache)
    if history is None or not now:
        return ()
    # Untouched, the cache lacks only the last generated token, which comes back as input; a
    # cropped cache keeps only the spans below its length (what follows is new input).
    limit = history.cache_length + 1 if now >= history.cache_length else now
    return tuple((s, min(e, limit)) for s, e in history.generated if s < min(e, limit))


def remember(caches: list[Any], earlier: Spans, prompt_length: int) -> None:
    """Record, with each cache a call filled, its generated spans: ``earlier`` and from
    ``prompt_length`` to the end of the sequence (the cache plus the last, unfed token)."""
    for cache in caches:
        key = _key(cache) if cache is not None else None
        length = cache_length(cache) if key is not None else None
        if length is None:
            continue
        spans = earlier + (((prompt_length, length + 1),) if length + 1 > prompt_length else ())
        try:
            with _LOCK:
                _HISTORY[key] = _History(spans, length)
        except TypeError:  # an object that takes no weak reference: it cannot be continued
            continue
