"""``hf-sae-steer generate``'s table: base and steered continuations side by side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from hf_sae_steer.generation import continue_prompts
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.steering.names import Direction, Method, Positions
from hf_sae_steer.steering.steered import Scores, SteeredModel


def compare_methods(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    scores: Scores,
    prompts: Sequence[str],
    methods: Sequence[Method | None] = (None,),
    *,
    layer: int | None = None,
    site: str | None = None,
    strength: float | None = None,
    preserve_error: bool | None = None,
    clamp_value: float | None = None,
    positions: Positions = "all",
    direction: Direction = "toward",
    allow_score_mismatch: bool = False,
    include_base: bool = True,
    **generation: Any,
) -> list[dict[str, str]]:
    """Base and steered continuations side by side: one row per prompt, one key per method
    (``"base"`` too unless ``include_base=False``); every run draws the same random numbers.
    A method of ``None`` is the scores' recommended steering, under the key ``"recommended"``;
    ``strength``/``preserve_error`` left as ``None`` follow SteeredModel's defaults."""
    rows: list[dict[str, str]] = [{"prompt": p} for p in prompts]
    if include_base:
        texts = continue_prompts(model, tokenizer, prompts, **generation)
        for row, text in zip(rows, texts, strict=True):
            row["base"] = text
    for method in methods:
        with SteeredModel(
            model,
            sae,
            layer=layer,
            site=site,  # type: ignore[arg-type]
            method=method,
            scores=scores,
            strength=strength,
            preserve_error=preserve_error,
            clamp_value=clamp_value,
            positions=positions,
            direction=direction,
            allow_score_mismatch=allow_score_mismatch,
        ) as steered:
            texts = continue_prompts(steered, tokenizer, prompts, **generation)
        for row, text in zip(rows, texts, strict=True):
            row[method or "recommended"] = text
    return rows
