"""The steered model's own ``generate`` while it is steered: the one place where a generate call
begins and ends, so the prompt length can be pinned, the result checked, and what the call
generated remembered with its cache (for a later call that continues it)."""

from __future__ import annotations

import weakref
from typing import Any

from torch import Tensor, nn

from hf_sae_steer.steering import continuation
from hf_sae_steer.steering.positions import PositionTracker


class PinnedGenerate:
    """The steered model's ``generate`` while it is steered (an instance attribute that shadows
    the class's method): it pins the prompt length for the call, per thread, so every decoding
    mode labels positions as greedy decoding does, and it refuses non-finite steered states. A
    call given the cache of an earlier call keeps the positions that call generated.

    A deep copy of the model gets a plain pass-through instead (steering is not copied)."""

    def __init__(self, model: nn.Module, tracker: PositionTracker, previous: Any) -> None:
        self.model = weakref.ref(model)
        self.tracker = tracker
        self.previous = previous  # an instance attribute generate we shadow, if any

    @classmethod
    def install(cls, model: nn.Module, tracker: PositionTracker) -> PinnedGenerate | None:
        if not callable(getattr(model, "generate", None)):
            return None  # a bare decoder (GPT2Model, ...): nothing generates
        patch = cls(model, tracker, model.__dict__.get("generate"))
        model.__dict__["generate"] = patch
        return patch

    def uninstall(self) -> None:
        model = self.model()
        if model is None or model.__dict__.get("generate") is not self:
            return
        if self.previous is None:
            del model.__dict__["generate"]
        else:
            model.__dict__["generate"] = self.previous

    @staticmethod
    def drop(model: nn.Module) -> None:
        """Remove a copied pass-through (after ``copy.deepcopy`` of a steered model)."""
        if isinstance(model.__dict__.get("generate"), PassThroughGenerate):
            del model.__dict__["generate"]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        model = self.model()
        inputs = next(
            (v for v in (kwargs.get("input_ids"), kwargs.get("inputs"), *args[:1],
                         kwargs.get("inputs_embeds")) if isinstance(v, Tensor)),
            None,
        )  # fmt: skip
        original = self.previous or type(model).generate.__get__(model)
        length = None if inputs is None else int(inputs.shape[1])
        cache = continuation.passed_cache(kwargs)
        earlier = continuation.generated_before(cache)
        with self.tracker.prompt(length, earlier):
            with self.tracker.checked():
                out = original(*args, **kwargs)
        if length is not None:
            continuation.remember([cache, continuation.returned_cache(out)], earlier, length)
        return out

    def __deepcopy__(self, memo: dict) -> PassThroughGenerate:
        model = self.model()
        return PassThroughGenerate(memo.get(id(model), model))


class PassThroughGenerate:
    """What a copied :class:`PinnedGenerate` becomes: the copy's own ``generate``, unsteered."""

    def __init__(self, model: nn.Module) -> None:
        self.model = weakref.ref(model)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        model = self.model()
        return type(model).generate(model, *args, **kwargs)
