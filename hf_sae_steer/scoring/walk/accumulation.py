"""The scoring walk: every sum of a scoring run, from one process or several, streamed,
checkpointed and resumable.

Each process embeds the (small) alignment set, since every reference prompt needs its distance
to it, and passes its share of the alignment texts through the model. Then every process reads
the whole reference stream (cheap: text), so they all hash it and agree on its order, and takes
its own prompts: prompt ``i`` belongs to rank ``i mod world_size``. A chunk at a time it embeds
them, takes their squared distances to the alignment set, runs them to the site and adds them
to its sums, then drops them: memory is bounded by a chunk and ``d_sae``. At the end the sums
are added up across processes. Since every statistic is a sum (float64 / int64), the result
equals one process's up to float rounding, in any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from hf_sae_steer.data.embedders import embed_prompts
from hf_sae_steer.data.prompts import PromptHash
from hf_sae_steer.data.sources import PromptSource
from hf_sae_steer.distributed import World, all_gather_json, all_reduce_sum, broadcast_json
from hf_sae_steer.scoring.walk.checkpoint import (
    CheckpointError,
    CheckpointState,
    check_same_run,
    check_sums,
    existing_checkpoint,
    read_checkpoint,
    remove_stale_temporaries,
    write_checkpoint,
)
from hf_sae_steer.scoring.walk.passes import ProgressCallback, PromptPasses, ScoringSums, Summary
from hf_sae_steer.scoring.walk.run_lock import RunLock

CHUNK = 1024  # reference prompts read, embedded and passed at a time (over all processes)


@dataclass
class Checkpointing:
    """Write the sums to ``path`` every ``every`` reference prompts; ``resume`` continues from
    the checkpoint there, if there is one."""

    path: Path
    every: int
    resume: bool = False


@dataclass
class Accumulated:
    """The sums of a finished walk (over all processes) and what the record says about it."""

    sums: ScoringSums
    reference_hash: str
    resumed_at: int  # reference prompts that came from a checkpoint (0: none)
    per_process: list[list[int]] | None  # [reference, alignment] prompts each rank passed


@dataclass
class ScoringWalk:
    passes: PromptPasses
    embedder: Any
    summary: Summary
    world: World
    run: dict[str, Any]  # what identifies the run in a checkpoint
    embed_max_seq_length: int | None = None
    report_max_tokens: int | None = None
    checkpoint: Checkpointing | None = None
    progress: bool | ProgressCallback = True  # a callable: reported to it, no bar
    chunk: int = CHUNK
    _lock: RunLock | None = field(default=None, init=False, repr=False)

    def __call__(self, reference: PromptSource, alignment: list[str]) -> Accumulated:
        try:
            return self._walk(reference, alignment)
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _walk(self, reference: PromptSource, alignment: list[str]) -> Accumulated:
        sums = ScoringSums(self.passes.sae.d_in, self.passes.sae.d_sae)
        saved = self._resume(sums, reference)
        start = saved.consumed if saved is not None else 0
        (align_emb,), _ = embed_prompts(
            self.embedder, [alignment], self.passes.device, self.embed_max_seq_length,
            progress=False,
        )  # fmt: skip
        counted = [0, 0]  # [reference, alignment] prompts this process passes in this run
        if saved is None:  # a checkpoint's sums hold the whole alignment set already
            mine = [p for i, p in enumerate(alignment) if self.world.owns(i)]
            if mine:
                self.passes.add_alignment(mine, sums, self.report_max_tokens)
                self._check_finite(sums, alone=True)
            counted[1] = len(mine)
        self._report("alignment", len(alignment), len(alignment))
        hasher, pending = PromptHash(), []
        every = self.checkpoint.every if self.checkpoint is not None else None
        size = min(self.chunk, every) if every else self.chunk
        saved_at = start
        show = self.progress is True and self.world.is_main
        bar = tqdm(total=reference.known_size, initial=start, desc="reference", unit=" prompts",
                   disable=not show)  # fmt: skip
        try:
            for index, prompt in enumerate(reference):
                hasher.update(prompt)
                if index < start:  # counted in the checkpoint; check they are the same prompts
                    if index + 1 == start and saved is not None:
                        self._check_prefix(saved, hasher)
                    continue
                pending.append((index, prompt))
                if len(pending) < size:
                    continue
                counted[0] += self._add(pending, align_emb, sums)
                self._check_finite(sums, alone=True)
                bar.update(len(pending))
                self._report("reference", index + 1, reference.known_size)
                pending = []
                if every and index + 1 - saved_at >= every:
                    self._save(sums, hasher, index + 1, reference, finished=False)
                    saved_at = index + 1
            counted[0] += self._add(pending, align_emb, sums)
            bar.update(len(pending))
            self._report("reference", hasher.count, reference.known_size)
        finally:
            bar.close()
        if hasher.count < start:
            raise ValueError(
                f"The checkpoint counted {start} reference prompts, but {reference.where} has "
                f"only {hasher.count}: it belongs to another reference set."
            )
        per_process = self._agree(counted, hasher.hexdigest())
        all_reduce_sum(sums.tensors(), self.world)
        self._check_finite(sums)
        if self.checkpoint is not None:  # the finished sums: a later resume only re-scores
            self._write(sums.tensors(), hasher, hasher.count, reference, finished=True)
        return Accumulated(sums, hasher.hexdigest(), start, per_process)

    def _report(self, phase: str, done: int, total: int | None) -> None:
        if callable(self.progress):
            self.progress(phase, done, total)

    def _agree(self, counted: list[int], reference_hash: str) -> list[list[int]] | None:
        """Each process's counts, after checking that all read the same prompt sets (on several
        nodes each reads its own copy of the files)."""
        if self.world.size == 1:
            return None
        mine = {"counted": counted, "reference": reference_hash,
                "alignment": self.run.get("alignment_hash")}  # fmt: skip
        everyone = all_gather_json(mine, self.world)
        for which in ("reference", "alignment"):
            seen = [part[which] for part in everyone]
            if len(set(seen)) > 1:
                raise ValueError(
                    f"The processes read different {which} sets (hashes {seen} by rank): every "
                    "process needs the same prompts in the same order (one shared file, or "
                    "identical copies on every node)."
                )
        return [part["counted"] for part in everyone]

    def _add(self, pending: list[tuple[int, str]], align_emb: Tensor, sums: ScoringSums) -> int:
        """Pass this process's prompts of a chunk; returns how many."""
        mine = [prompt for index, prompt in pending if self.world.owns(index)]
        if mine:
            d2 = squared_distances(
                self.embedder, mine, align_emb, self.passes.device, self.embed_max_seq_length
            )
            self.passes.add_reference(mine, d2, self.summary, sums)
        return len(mine)

    # -- checkpoints -----------------------------------------------------------------------
    def _resume(self, sums: ScoringSums, reference: PromptSource) -> CheckpointState | None:
        """Rank 0 locks the checkpoint for the run and reads it (if resuming one) into its
        sums; every rank learns where it stood. A bad checkpoint is one clear error on every
        rank, not a hang."""
        if self.checkpoint is None:
            return None
        found: dict[str, Any] | None = None
        if self.world.is_main:
            try:
                self._lock = RunLock(self.checkpoint.path).acquire()
                remove_stale_temporaries(self.checkpoint.path)  # of a write that was killed
                found = self._read(sums)
            except (ValueError, OSError) as error:
                found = {"error": str(error), "checkpoint": isinstance(error, CheckpointError)}
        found = broadcast_json(found, self.world)
        if found is not None and "error" in found:
            raise (CheckpointError if found["checkpoint"] else ValueError)(found["error"])
        return CheckpointState.from_json(found) if found is not None else None

    def _read(self, sums: ScoringSums) -> dict[str, Any] | None:
        assert self.checkpoint is not None
        path = self.checkpoint.path
        if not existing_checkpoint(path, self.checkpoint.resume):
            return None
        tensors, state = read_checkpoint(path)
        check_same_run(path, state.run, self.run)
        check_sums(path, tensors, sums.tensors(), state)
        sums.load(tensors)
        return state.to_json()

    def _check_prefix(self, saved: CheckpointState, hasher: PromptHash) -> None:
        if hasher.prefix() != saved.prefix:
            raise ValueError(
                f"The first {saved.consumed} reference prompts differ from those the checkpoint "
                f"counted (from {saved.source}): resume with the same reference set, in the "
                "same order, or use another checkpoint path."
            )

    def _save(
        self, sums: ScoringSums, hasher: PromptHash, consumed: int, source: PromptSource,
        finished: bool,
    ) -> None:  # fmt: skip
        """Sum the processes' partial sums (a copy: each keeps its own) and write them."""
        if self.world.size > 1:
            total = ScoringSums(sums.d_in, sums.d_sae).load(sums.tensors())  # a copy
            all_reduce_sum(total.tensors(), self.world)
            self._check_finite(total)
            sums_to_write = total.tensors()
        else:
            sums_to_write = sums.tensors()
        self._write(sums_to_write, hasher, consumed, source, finished)

    def _check_finite(self, sums: ScoringSums, alone: bool = False) -> None:
        """Refuse NaN/inf before they reach a checkpoint or the scores. ``alone``: a process's
        own sums, checked only when it is the only one (others would wait for it forever)."""
        if alone and self.world.size > 1:
            return
        name = sums.non_finite()
        if name is not None:
            site = self.passes.site
            raise ValueError(
                f"The scoring sums are not finite ({name} holds NaN or inf): the model's hidden "
                f"states at {site.kind} of layer {site.layer} overflow. Score the model in "
                "float32 (or bfloat16 rather than float16)."
            )

    def _write(
        self, tensors: dict[str, Tensor], hasher: PromptHash, consumed: int,
        source: PromptSource, finished: bool,
    ) -> None:  # fmt: skip
        if self.checkpoint is None or not self.world.is_main:
            return
        state = CheckpointState(self.run, consumed, hasher.prefix(), source.where, finished)
        write_checkpoint(self.checkpoint.path, tensors, state)


def squared_distances(
    embedder: Any,
    prompts: list[str],
    align_emb: Tensor,
    device: torch.device | None = None,
    max_seq_length: int | None = None,
) -> Tensor:
    """``d_i²``: each prompt's squared distance to its nearest alignment text (§3, step 3)."""
    (emb,), _ = embed_prompts(embedder, [list(prompts)], device, max_seq_length, progress=False)
    return torch.cdist(emb, align_emb).min(dim=1).values.pow(2)
