"""Measuring what an additive steering costs in fluency, at any norm fractions, on demand.

A :class:`FluencyProbe` continues fixed neutral prompts with and without the steering and
scores every continuation's perplexity under the unsteered model; a point's ratio is the paired
geometric mean of steered over unsteered perplexity (``docs/method.md`` §6). It is built for a
search that asks for a few points at a time:

- the unsteered continuations are generated and scored once and paired with every point;
- sample ``j`` of prompt ``p`` draws its own random numbers (:mod:`~hf_sae_steer.seeded_sampling`,
  keyed by ``(seed, p, j)``), the same at every strength and in any batch, so a point measured
  with fewer samples is the start of the same point with more, and the pairs share their noise;
- rows of several strengths (and unsteered ones) run in one batched ``generate``, each row with
  its own strength (:class:`~hf_sae_steer.steering.batched.BatchedSteering`); an unsteered row
  is scored while it is generated (the model's own log-probabilities of the tokens it chose),
  the steered rows of a batch right after it, in one pass of the unsteered model;
- under ``torchrun`` / ``accelerate launch`` every process lays out the same batches (their rows
  do not depend on the number of processes) and runs those it is dealt, the least loaded taking
  the next; the perplexities are gathered, so every process holds what one process would, to
  the bit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from hf_sae_steer.distributed import World, all_gather_json
from hf_sae_steer.generation import Generator, perplexity
from hf_sae_steer.models import context_length, eos_token_ids, model_device, pad_token_id
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.seeded_sampling import RowSeededSampler, row_key
from hf_sae_steer.sites.layouts import find_layout
from hf_sae_steer.steering.batched import BatchedSteering, BatchRows, SiteEdit
from hf_sae_steer.steering.interventions import Intervention
from hf_sae_steer.steering.spec import SteeringSpec, resolve_spec
from hf_sae_steer.steering.strength import strength_for

MIN_NEW_TOKENS = 4
PPL_BATCH = 48  # rows per perplexity pass (a generate batch may be larger: its logits are not)
BASE = None  # the point of the unsteered rows

Row = tuple[float | None, int, int]  # (norm fraction or BASE, prompt, sample)


@dataclass(frozen=True)
class FluencyPoint:
    """One measured point: ``ratio`` is ``None`` when no pair had a perplexity, or when the
    steered state overflowed (NaN/inf) on some row."""

    norm_fraction: float
    strength: float
    ratio: float | None
    continuations: int  # pairs averaged
    samples: int  # samples per prompt measured

    def to_json(self) -> dict[str, Any]:
        return {"norm_fraction": self.norm_fraction, "strength": self.strength,
                "perplexity_ratio": self.ratio, "continuations": self.continuations}  # fmt: skip


class FluencyProbe:
    """Measures points ``measure([(norm_fraction, samples), ...])`` of ``scores``' additive
    steering ``method``; use it as a context manager (it hooks the model until the end)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        sae: SAE | None,
        scores: Any,
        *,
        method: str,
        preserve_error: bool,
        mean_norm: float,
        prompts: Sequence[str],
        max_new_tokens: int = 24,
        top_k: int = 50,
        temperature: float = 1.0,
        seed: int = 0,
        batch_size: int = 96,
        world: World | None = None,
    ) -> None:
        self.model, self.tokenizer, self.world = model, tokenizer, world or World()
        self.gen = Generator(tokenizer, list(prompts))  # tokenizes and refuses empty prompts
        self.prompt_ids = self.gen.prompt_ids
        context = context_length(model, tokenizer)
        if context is not None:  # a short context: fewer new tokens, never a truncated prompt
            max_new_tokens = min(max_new_tokens, context - max(map(len, self.prompt_ids)))
        if max_new_tokens < MIN_NEW_TOKENS:
            raise ValueError(
                f"the model's context ({context} tokens) leaves no room to continue the "
                "calibration prompts"
            )
        self.max_new_tokens, self.top_k, self.temperature = max_new_tokens, top_k, temperature
        self.seed, self.batch_size = seed, max(1, batch_size)
        spec = SteeringSpec(sae, method=method, scores=scores, strength=1.0,  # type: ignore[arg-type]
                            preserve_error=preserve_error)  # fmt: skip
        self.site, self.step = resolve_spec(spec, model, find_layout(model))
        added = self.step.added
        if added is None:
            raise ValueError(f"Only additive methods have a fluency curve, not {method!r}.")
        self.added, self.mean_norm = added.double().cpu(), mean_norm
        self.ppl: dict[Row, float] = {}  # every measured row's perplexity (NaN: empty)
        self.load = [0] * self.world.size  # rows dealt to each process so far
        self.tokens = 0  # LM tokens this process passed (generation and perplexity)
        self.eos = eos_token_ids(model, tokenizer)
        self._edits: dict[float, SiteEdit] = {}
        self._steering: BatchedSteering | None = None

    def __enter__(self) -> FluencyProbe:
        self._steering = BatchedSteering(self.model, [self.site])
        return self

    def __exit__(self, *exc: object) -> None:
        if self._steering is not None:
            self._steering.remove()
            self._steering = None

    def strength(self, rho: float) -> float:
        return strength_for(rho, self.added, self.mean_norm)

    # -- measuring ---------------------------------------------------------------------------
    def measure(self, requests: Iterable[tuple[float, int]]) -> list[FluencyPoint]:
        """Measure each ``(norm_fraction, samples)`` (rows measured before are kept, not
        redone) and return the points, in the order asked."""
        requests = list(requests)
        wanted = max((s for _, s in requests), default=0)
        rows: list[Row] = [(BASE, p, j) for j in range(wanted) for p in range(len(self.prompt_ids))]
        for rho, samples in requests:
            rows += [(rho, p, j) for j in range(samples) for p in range(len(self.prompt_ids))]
        todo = list(dict.fromkeys(r for r in rows if r not in self.ppl))
        batches = [todo[i : i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        mine: dict[int, list[float | None]] = {}
        for b, batch in enumerate(batches):
            rank = min(range(self.world.size), key=lambda r: (self.load[r], r))
            self.load[rank] += len(batch)
            if rank == self.world.rank:
                mine[b] = self._run(batch)
        parts = all_gather_json(mine, self.world) if self.world.size > 1 else [mine]
        for part in parts:
            for b, values in part.items():
                for row, value in zip(batches[int(b)], values, strict=True):
                    self.ppl[row] = math.nan if value is None else float(value)
        return [self.point(rho, samples) for rho, samples in requests]

    def point(self, rho: float, samples: int) -> FluencyPoint:
        """The paired ratio at ``rho`` over its first ``samples`` samples per prompt."""
        logs, overflow = [], False
        for p in range(len(self.prompt_ids)):
            for j in range(samples):
                steered, base = self.ppl[(rho, p, j)], self.ppl[(BASE, p, j)]
                overflow |= steered == math.inf
                log = math.log(steered / base) if steered > 0 and base > 0 else math.nan
                if math.isfinite(log):  # an empty continuation has no perplexity
                    logs.append(log)
        ratio = math.exp(math.fsum(logs) / len(logs)) if logs and not overflow else None
        return FluencyPoint(rho, self.strength(rho), ratio, len(logs), samples)

    def _run(self, batch: list[Row]) -> list[float | None]:
        """Generate one batch's rows (each at its own strength) and score them unsteered: their
        perplexities, ``inf`` for a row whose steered state overflowed. An unsteered row is
        scored as it is generated (the model's own log-probabilities of its tokens); the
        steered ones in one pass of the unsteered model afterwards."""
        assert self._steering is not None, "use FluencyProbe as a context manager"
        seqs = [self.prompt_ids[p] for _, p, _ in batch]
        ids, mask = self.gen.left_padded(seqs, model_device(self.model))
        rows = BatchRows(
            [() if rho is BASE else (self._edit(rho),) for rho, _, _ in batch],
            offsets=[len(s) - ids.shape[1] for s in seqs],
            prompt_lengths=[len(s) for s in seqs],
        )
        base = [r for r, (rho, _, _) in enumerate(batch) if rho is BASE]
        sampler = RowSeededSampler(
            [row_key(self.seed, p, j) for _, p, j in batch], steps=self.max_new_tokens,
            top_k=self.top_k, temperature=self.temperature, scored_rows=base,
        )  # fmt: skip
        watching = self.model.register_forward_hook(sampler.observe)
        try:
            with self._steering.rows(rows):
                out = self.model.generate(
                    input_ids=ids, attention_mask=mask, logits_processor=[sampler],
                    max_new_tokens=self.max_new_tokens, do_sample=False,
                    pad_token_id=pad_token_id(self.tokenizer),
                )  # fmt: skip
        finally:
            watching.remove()
        overflowed = set(self._steering.nonfinite_rows())
        new = out[:, ids.shape[1] :].tolist()
        continuations = []
        for tokens in new:
            stop = next((i for i, t in enumerate(tokens) if t in self.eos), len(tokens))
            continuations.append(tokens[:stop])
        ppl = [math.nan] * len(batch)
        log_probs = sampler.log_probs
        if log_probs.shape[1] < len(new[0]):  # the hook saw no logits: score them all again
            base = []
        for k, r in enumerate(base):
            n = len(continuations[r])
            if n:  # an empty continuation has no perplexity
                ppl[r] = math.exp(-float(log_probs[k, :n].mean()))
        steered = [r for r in range(len(batch)) if r not in set(base)]
        if steered:
            scored = perplexity(
                self.model, self.tokenizer, [seqs[r] for r in steered],
                [continuations[r] for r in steered], batch_size=min(len(steered), PPL_BATCH),
            ).tolist()  # fmt: skip
            for r, value in zip(steered, scored, strict=True):
                ppl[r] = value
        # prefill, one token per row and step; then the steered rows again, for perplexity
        self.tokens += int(mask.sum()) + len(batch) * max(len(new[0]) - 1, 0)
        self.tokens += sum(len(seqs[r]) + len(continuations[r]) for r in steered)
        return [
            math.inf if r in overflowed else (None if math.isnan(v) else v)
            for r, v in enumerate(ppl)
        ]

    def _edit(self, rho: float) -> SiteEdit:
        """The steering of ``rho``'s rows: the intervention at that point's strength."""
        if rho not in self._edits:
            step = copy.copy(self.step)  # shares the placed SAE and vectors: read only
            step.strength = Intervention.check_strength(self.strength(rho))
            self._edits[rho] = SiteEdit(self.site, step)
        return self._edits[rho]
