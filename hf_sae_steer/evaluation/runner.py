"""Running the points of an evaluation, alone or shared between processes.

Generation seeds each batch by its position (:mod:`~hf_sae_steer.generation`), so processes
can share a point's batches (batch ``b`` to rank ``b mod world_size``) and gather the
continuations: they are exactly those of one process with the same seed. Perplexity is shared
the same way, by its own batches. Continuations travel as JSON; nothing is pickled.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from hf_sae_steer.distributed import World, all_gather_json, all_gather_tensor
from hf_sae_steer.evaluation.conditions import Condition
from hf_sae_steer.evaluation.metrics import perplexity, repeated_ngram_share
from hf_sae_steer.generation import Continuation, Generator


class PointRunner:
    """Runs one point of a condition (this process's share of it) and records every
    continuation of the point, gathered from all processes, in the order of one process."""

    def __init__(self, gen: Generator, prompts: list[str], world: World | None = None) -> None:
        self.gen, self.prompts, self.world = gen, prompts, world or World()
        self.records: list[dict[str, Any]] = []
        # (condition, strength, norm fraction) -> (decoding steps, seconds in generate), summed
        # over processes: tokens/s is per process, as in a run of one.
        self.timing: dict[tuple, tuple[int, float]] = {}

    def __call__(
        self,
        target: nn.Module,
        cond: Condition,
        strength: float | None,
        norm_fraction: float | None,
        *,
        generator: Generator | None = None,
        train_seconds: float | None = None,
    ) -> None:
        shard = (self.world.rank, self.world.size)
        continuations, seconds = (generator or self.gen).run(target, shard=shard)
        steps = sum(c.steps for c in continuations)
        if self.world.size > 1:
            mine = [[asdict(c) for c in continuations], steps, seconds]
            parts = all_gather_json(mine, self.world)
            continuations = sorted(
                (Continuation(**c) for part in parts for c in part[0]),
                key=lambda c: (c.prompt_index, c.sample),  # one process's order
            )
            steps, seconds = sum(p[1] for p in parts), sum(p[2] for p in parts)
        key = (cond.name, strength, norm_fraction)
        self.timing[key] = (steps, seconds)
        for c in continuations:
            self.records.append(self._record(cond, strength, norm_fraction, c, train_seconds))

    def perplexity(
        self, model: nn.Module, tokenizer: Any, prompt_ids: list[list[int]],
        ids: list[list[int]], batch_size: int,
    ) -> Tensor:  # fmt: skip
        """Perplexities of the records' continuations, each process computing its batches."""
        shard = (self.world.rank, self.world.size)
        mine = perplexity(model, tokenizer, prompt_ids, ids, batch_size=batch_size, shard=shard)
        if self.world.size == 1:
            return mine
        merged = torch.full_like(mine, math.nan)
        for part in all_gather_tensor(mine, self.world):  # NaN: not computed there (or empty)
            merged = torch.where(part.isnan(), merged, part)
        return merged

    def _record(
        self,
        cond: Condition,
        strength: float | None,
        norm_fraction: float | None,
        c: Continuation,
        train_seconds: float | None,
    ) -> dict[str, Any]:
        return {
            "label": cond.name,
            "kind": cond.kind,
            "method": cond.method or cond.baseline or "orig",
            "preserve_error": cond.preserve_error if cond.method else None,
            "strength": strength,
            "norm_fraction": norm_fraction,
            "train_seconds": train_seconds,
            "prompt_index": c.prompt_index,
            "sample": c.sample,
            "seed": c.seed,
            "prompt": self.prompts[c.prompt_index],
            "continuation": c.text,
            "n_tokens": len(c.token_ids),
            "repetition": repeated_ngram_share(c.token_ids, 3),
            "_ids": c.token_ids,
        }
