"""Which token positions a hook steers: decided from the KV cache, never from call-local indices.

With a KV cache each decode step sees one token, so "is this a prompt token?" can only be
answered from the absolute position: ``past_length + i`` against the prompt length. A pre-hook
on the decoder reads the cache once per forward pass; the per-site hooks only read the result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

Positions = Literal["all", "prompt", "generated"]
POSITIONS: tuple[Positions, ...] = get_args(Positions)


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


class PositionTracker:
    """Per-forward position state shared by the hooks of one SteeredModel."""

    def __init__(self) -> None:
        self.enabled = True
        self.past_length = 0
        self.input_length = 0
        self.prompt_length = 0
        self.attention_mask: Tensor | None = None
        self._pinned: int | None = None

    def attach(self, decoder: nn.Module) -> RemovableHandle:
        return decoder.register_forward_pre_hook(self._observe, with_kwargs=True)

    def _observe(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self.past_length = _past_length(args, kwargs)
        self.input_length = _input_length(args, kwargs) or 0
        mask = kwargs.get("attention_mask")
        self.attention_mask = mask if isinstance(mask, Tensor) else None
        if self._pinned is not None:
            self.prompt_length = self._pinned
        elif self.past_length == 0:
            self.prompt_length = self.input_length  # a fresh sequence: all of it is prompt

    @contextlib.contextmanager
    def prompt(self, length: int | None) -> Iterator[None]:
        """Fix the prompt length for a generate() call (also right without a KV cache)."""
        previous = self._pinned
        self._pinned = length
        try:
            yield
        finally:
            self._pinned = previous

    @contextlib.contextmanager
    def steering(self, enabled: bool) -> Iterator[None]:
        previous = self.enabled
        self.enabled = enabled
        try:
            yield
        finally:
            self.enabled = previous

    def generated_mask(self, seq_len: int, device: torch.device) -> Tensor | bool:
        """Which of this forward's positions were generated: a bool when uniform, else [seq]."""
        start, boundary = self.past_length, self.prompt_length
        if start >= boundary:
            return True
        if start + seq_len <= boundary:
            return False
        return torch.arange(start, start + seq_len, device=device) >= boundary

    def edit(
        self, step: Callable[[Tensor], Tensor], positions: Positions
    ) -> Callable[[Tensor], Tensor]:
        """Wrap an intervention into the function a site hook applies to ``[batch, seq, d]``."""
        if positions not in POSITIONS:
            raise ValueError(f"Unknown positions {positions!r}; use one of {', '.join(POSITIONS)}.")

        def apply(x: Tensor) -> Tensor:
            if not self.enabled:
                return x
            if positions == "all":
                return step(x)
            generated = self.generated_mask(x.shape[-2], x.device)
            if isinstance(generated, bool):
                return step(x) if generated == (positions == "generated") else x
            keep = generated if positions == "generated" else ~generated
            return torch.where(keep.unsqueeze(-1), step(x), x)

        return apply
