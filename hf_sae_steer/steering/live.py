"""Which models are steered right now: the live-steering registry.

A ``SteeredModel`` registers itself here while its hooks are on a model, so that a second one
on the same model is refused instead of stacking hooks, and so that code that must see the base
model (scoring, perplexity) can suspend whatever steering is live. This module knows nothing
about SteeredModel itself: only that a live steering can be switched off and removed.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Protocol

from torch import nn

from hf_sae_steer.sites.hooks import remove_hooks
from hf_sae_steer.steering.pinned_generate import PinnedGenerate


class LiveSteering(Protocol):
    """What the registry needs of a steering: a switch and a way to remove its hooks."""

    def suspended(self) -> contextlib.AbstractContextManager[object]: ...

    def remove(self) -> None: ...


_ACTIVE: weakref.WeakKeyDictionary[nn.Module, list[LiveSteering]] = weakref.WeakKeyDictionary()


def live_steerings(model: nn.Module) -> list[LiveSteering]:
    """The steerings whose hooks are on ``model`` now."""
    return list(_ACTIVE.get(model, []))


def register(model: nn.Module, steering: LiveSteering) -> None:
    _ACTIVE.setdefault(model, []).append(steering)


def unregister(model: nn.Module, steering: LiveSteering) -> None:
    if model in _ACTIVE:
        _ACTIVE[model] = [s for s in _ACTIVE[model] if s is not steering]


@contextlib.contextmanager
def steering_suspended(model: nn.Module) -> Iterator[None]:
    """Run ``model`` unsteered inside this block (e.g. to score while a SteeredModel is live)."""
    with contextlib.ExitStack() as stack:
        for steering in live_steerings(model):
            stack.enter_context(steering.suspended())
        yield


def remove_steering(model: nn.Module) -> int:
    """Remove every SteeredModel's hooks from ``model``; returns how many were removed.

    Also clears what a ``copy.deepcopy`` of a steered model carries over (inert hooks, a
    pass-through ``generate``), so the copy is exactly a plain model again.
    """
    live = live_steerings(model)
    for steering in live:
        steering.remove()
    remove_hooks(model)
    PinnedGenerate.drop(model)
    return len(live)
