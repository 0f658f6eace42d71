"""Which token positions a hook steers, and the per-call state of a steering.

With a KV cache each decode step sees one token, so "is this a prompt token?" can only be
answered from the absolute position: ``past_length + i`` against the prompt length. A pre-hook
on the decoder reads the cache once per forward pass; the per-site hooks only read the result.
The prompt length is pinned for a whole ``generate()`` call (SteeredModel wraps the model's
``generate``), so cache-less, assisted and prompt-lookup decoding, whose forward passes mix
prompt and candidate tokens, label positions exactly as greedy decoding does. A call that
continues the cache of an earlier call also keeps the positions that call generated
(steering/continuation.py), so 3 + 1 tokens are steered as 4.

All of this state is per thread: one thread inside ``steered.disabled()`` or generating with
its own prompt length never changes what another thread's forward passes see.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hf_sae_steer.sites.hooks import register
from hf_sae_steer.steering.continuation import Spans
from hf_sae_steer.steering.names import POSITIONS, Positions


def _past_length(args: tuple, kwargs: dict) -> int:
    for value in (*kwargs.values(), *args):
        get = getattr(value, "get_seq_length", None)
        if callable(get):
            return int(get())
        if isinstance(value, tuple) and value and isinstance(value[0], tuple | list):
            return int(value[0][0].shape[-2])  # legacy tuple-of-tuples cache
    return 0


def _input_length(args: tuple, kwargs: dict) -> int | None:
    for name in ("input_ids", "inputs_embeds"):
        value = kwargs.get(name)
        if isinstance(value, Tensor):
            return value.shape[1]
    if args and isinstance(args[0], Tensor) and args[0].ndim >= 2:
        return args[0].shape[1]
    return None


class _CallState(threading.local):
    """What one thread's current call sees (``threading.local``: a fresh copy per thread)."""

    def __init__(self) -> None:
        self.enabled = True
        self.past_length = 0
        self.input_length = 0
        self.prompt_length = 0
        self.earlier: Spans = ()  # positions an earlier call on the same cache generated
        self.attention_mask: Tensor | None = None
        self.pinned: tuple[int, Spans] | None = None
        # Device-side flags, checked once per call (no host sync per token): a steered hidden
        # state, or logits after steering wrote something in this call, was NaN or infinite.
        self.nonfinite: Tensor | None = None
        self.nonfinite_logits: Tensor | None = None
        self.steered = False


class PositionTracker:
    """Per-forward position state shared by the hooks of one SteeredModel, kept per thread.

    ``advice`` names the settings to lower when steering overflows (e.g. "strength=4")."""

    def __init__(self, advice: Callable[[], str] = lambda: "the strength") -> None:
        self._state = _CallState()
        self.advice = advice

    @property
    def enabled(self) -> bool:
        return self._state.enabled

    @property
    def past_length(self) -> int:
        return self._state.past_length

    @property
    def prompt_length(self) -> int:
        return self._state.prompt_length

    @property
    def attention_mask(self) -> Tensor | None:
        return self._state.attention_mask

    def attach(self, decoder: nn.Module) -> RemovableHandle:
        return register(decoder, "pre", self._observe, with_kwargs=True)

    def attach_output(self, model: nn.Module) -> RemovableHandle:
        """Watch the model's logits: a steered state can be finite where it is written and
        overflow in the blocks after it (huge clamp values, latent weights, edits)."""
        return register(model, "forward", self._watch_logits)

    def _watch_logits(self, module: nn.Module, args: tuple, output: Any) -> None:
        state = self._state
        logits = getattr(output, "logits", None)
        if state.enabled and state.steered and isinstance(logits, Tensor):
            bad = ~torch.isfinite(logits).all()
            flag = state.nonfinite_logits
            state.nonfinite_logits = bad if flag is None else flag | bad

    def _observe(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        state = self._state
        state.past_length = _past_length(args, kwargs)
        state.input_length = _input_length(args, kwargs) or 0
        mask = kwargs.get("attention_mask")
        state.attention_mask = mask if isinstance(mask, Tensor) else None
        if state.pinned is not None:
            state.prompt_length, state.earlier = state.pinned
        elif state.past_length == 0:
            state.prompt_length = state.input_length  # a fresh sequence: all of it is prompt
            state.earlier = ()

    @contextlib.contextmanager
    def checked(self) -> Iterator[None]:
        """Raise, at the end of the block, if a steered hidden state, or the logits after
        steering, were NaN or infinite (one host sync for the whole block)."""
        state = self._state
        outer = state.nonfinite, state.nonfinite_logits, state.steered
        state.nonfinite, state.nonfinite_logits, state.steered = None, None, False
        try:
            yield
            hidden = state.nonfinite is not None and bool(state.nonfinite)
            logits = not hidden and state.nonfinite_logits is not None
            logits = logits and bool(state.nonfinite_logits)
        finally:
            state.nonfinite, state.nonfinite_logits, state.steered = outer
        if hidden or logits:
            where = "hidden states" if hidden else "logits (the blocks after the hook overflow)"
            raise ValueError(
                f"Steering produced NaN or infinite {where}: the steering is too large for this "
                f"model's dtype. Lower {self.advice()}."
            )

    @contextlib.contextmanager
    def prompt(
        self, length: int | None, earlier: Spans = (), *, keep_outer: bool = False
    ) -> Iterator[None]:
        """Fix the prompt length for a generate() call (also right without a KV cache), with
        the positions earlier calls on its cache generated; ``keep_outer`` keeps the pin of an
        enclosing call (a guidance pass inside a generate() labels positions as that call)."""
        state = self._state
        previous = state.pinned
        if not (keep_outer and previous is not None):
            state.pinned = None if length is None else (length, earlier)
        try:
            yield
        finally:
            state.pinned = previous

    @contextlib.contextmanager
    def steering(self, enabled: bool) -> Iterator[None]:
        """Switch steering on or off for this thread's calls inside the block."""
        state = self._state
        previous = state.enabled
        state.enabled = enabled
        try:
            yield
        finally:
            state.enabled = previous

    def generated_mask(self, seq_len: int, device: torch.device) -> Tensor | bool:
        """Which of this forward's positions were generated: a bool when uniform, else [seq]."""
        state = self._state
        start, boundary, end = state.past_length, state.prompt_length, state.past_length + seq_len
        if start >= boundary:
            return True  # a decoding step: the hot path
        spans = [(max(s, start), min(e, end)) for s, e in state.earlier if s < end and e > start]
        if boundary < end:
            spans.append((boundary, end))
        if not spans:
            return False
        if _covers(spans, start, end):
            return True
        where = torch.arange(start, end, device=device)
        mask = torch.zeros(seq_len, dtype=torch.bool, device=device)
        for s, e in spans:
            mask |= (where >= s) & (where < e)
        return mask

    def edit(
        self, step: Callable[[Tensor], Tensor], positions: Positions
    ) -> Callable[[Tensor], Tensor]:
        """Wrap an intervention into the function a site hook applies to ``[batch, seq, d]``."""
        if positions not in POSITIONS:
            raise ValueError(f"Unknown positions {positions!r}; use one of {', '.join(POSITIONS)}.")

        def apply(x: Tensor) -> Tensor:
            state = self._state
            if not state.enabled:
                return x
            if positions == "all":
                out = step(x)
            else:
                generated = self.generated_mask(x.shape[-2], x.device)
                if isinstance(generated, bool):
                    out = step(x) if generated == (positions == "generated") else x
                else:
                    keep = generated if positions == "generated" else ~generated
                    out = torch.where(keep.unsqueeze(-1), step(x), x)
            if out is not x:  # a device-side flag: no host sync on the hot path
                state.steered = True
                bad = ~torch.isfinite(out).all()
                state.nonfinite = bad if state.nonfinite is None else state.nonfinite | bad
            return out

        return apply


def _covers(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether the spans (each inside [start, end)) cover all of [start, end)."""
    reached = start
    for s, e in sorted(spans):
        if s > reached:
            return False
        reached = max(reached, e)
    return reached >= end
