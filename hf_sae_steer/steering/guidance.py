"""SteeringLogitsProcessor: steering as a guidance mix inside a plain ``model.generate``."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import Tensor
from transformers import LogitsProcessor

from hf_sae_steer.steering.steered import SteeredModel


class SteeringLogitsProcessor(LogitsProcessor):
    r"""[`LogitsProcessor`] mixing base and steered logits: ``base + g * (steered - base)``.

    ``g = 0`` is the base model, ``g = 1`` plain steering, ``g > 1`` extrapolates past it (like
    classifier-free guidance). The processor runs the *other* variant itself, with its own KV
    cache: steered logits when the generating forward pass was unsteered (inside
    ``steered.disabled()``), base logits when it was steered. Put it first in the list, before
    sampling warpers.

    Args:
        steered (`SteeredModel`): the steering to mix in.
        guidance_scale (`float`): ``g`` above.

    Examples:

    ```python
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> from hf_sae_steer import SteeredModel, SteeringLogitsProcessor, load_sae

    >>> model = AutoModelForCausalLM.from_pretrained("gpt2")
    >>> tok = AutoTokenizer.from_pretrained("gpt2")
    >>> steered = SteeredModel(model, load_sae("openai:v5_32k/resid_post_mlp/9"), scores=scores)
    >>> guidance = SteeringLogitsProcessor(steered, guidance_scale=1.5)
    >>> inputs = tok("The patient", return_tensors="pt")
    >>> with steered.disabled():
    ...     out = model.generate(**inputs, logits_processor=[guidance])
    ```
    """

    def __init__(self, steered: SteeredModel, guidance_scale: float = 1.0) -> None:
        if not isinstance(steered, SteeredModel):
            raise TypeError(f"steered must be a SteeredModel, got {type(steered).__name__}.")
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale}.")
        self.steered = steered
        self.guidance_scale = float(guidance_scale)
        self._ids: Tensor | None = None
        self._cache: Any = None
        self._prompt: Tensor | None = None
        self._cache_argument = _cache_argument(steered.model)

    def reset(self) -> None:
        """Forget the running sequence (done automatically when a new one starts)."""
        self._ids = self._cache = self._prompt = None

    @torch.no_grad()
    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        tracker = self.steered.tracker
        main_was_steered = tracker.enabled
        mask = tracker.attention_mask
        if mask is not None and mask.shape != input_ids.shape:
            mask = None  # recorded from another call; generate() keeps it full-length
        other = self._other_logits(input_ids, mask, steer=not main_was_steered)
        # Mix log-probabilities: beam search hands processors log-softmaxed scores, greedy and
        # sampling raw logits; a per-row constant changes neither argmax nor softmax, and
        # normalising keeps beam scores true log-probabilities.
        mine = scores.float().log_softmax(dim=-1)
        other = other.float().log_softmax(dim=-1)
        base, steered = (other, mine) if main_was_steered else (mine, other)
        mixed = base + self.guidance_scale * (steered - base)
        return mixed.log_softmax(dim=-1).to(scores.dtype)

    def _other_logits(self, input_ids: Tensor, mask: Tensor | None, steer: bool) -> Tensor:
        tracker = self.steered.tracker
        model = self.steered.model
        extends = (
            self._ids is not None
            and self._cache is not None
            and input_ids.shape[0] == self._ids.shape[0]
            and input_ids.shape[1] == self._ids.shape[1] + 1
            and torch.equal(input_ids[:, :-1], self._ids)
        )
        if not extends:
            # Beams were reordered (same prompt: keep its length), or a new sequence started.
            same_prompt = (
                self._prompt is not None
                and self._prompt.shape[0] == input_ids.shape[0]
                and input_ids.shape[1] > self._prompt.shape[1]
                and torch.equal(input_ids[:, : self._prompt.shape[1]], self._prompt)
            )  # fmt: skip
            self._ids = self._cache = None
            if not same_prompt:
                self._prompt = input_ids
        feed = input_ids[:, -1:] if extends else input_ids
        kwargs: dict[str, Any] = {"input_ids": feed, "use_cache": True}
        if mask is not None:
            # As generate() does for left padding: positions count real tokens only.
            positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
            kwargs.update(attention_mask=mask, position_ids=positions[:, -feed.shape[1] :])
        if self._cache is not None:
            kwargs[self._cache_argument] = self._cache
        with tracker.steering(steer), tracker.prompt(self._prompt.shape[1], keep_outer=True):
            out = model(**kwargs)
        self._cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        self._ids = input_ids
        return out.logits[:, -1, :]


def _cache_argument(model: Any) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; accept either."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
