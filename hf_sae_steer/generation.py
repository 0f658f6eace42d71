"""Batched continuations with one seeding scheme, shared by the CLI, the demo, the evaluation
and strength calibration, and their perplexity under a model.

Batch ``b`` of a run is seeded with ``seed * 1_000_003 + b`` inside a forked RNG, so the base
model and every steering see the same random numbers for the same rows (common random numbers),
and the caller's RNG state is left as it was.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hf_sae_steer.models import (
    context_length,
    eos_token_ids,
    max_prompt_chars,
    model_device,
    pad_token_id,
)

SEED_STRIDE = 1_000_003
TokenIds = Sequence[int]


@dataclass
class Continuation:
    """One generated continuation: the new tokens up to (not including) the first EOS."""

    prompt_index: int
    sample: int
    seed: int
    token_ids: list[int]
    text: str
    steps: int  # decoding steps it cost (a generated EOS counts)


def sampling_options(
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
) -> dict[str, Any]:
    """``generate`` keyword arguments; sampling settings only when sampling, repetition control
    (``repetition_penalty`` > 1 lowers tokens already in the text; ``no_repeat_ngram_size`` N
    forbids any N-gram twice) only when asked for."""
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
    if do_sample:
        options.update(temperature=temperature, top_k=top_k, top_p=top_p)
    if not (math.isfinite(repetition_penalty) and repetition_penalty > 0):
        raise ValueError(
            f"repetition_penalty must be a positive number (1: none; 1.3 discourages repeats), "
            f"got {repetition_penalty}."
        )
    if isinstance(no_repeat_ngram_size, bool) or not (
        isinstance(no_repeat_ngram_size, int) and no_repeat_ngram_size >= 0
    ):
        raise ValueError(
            f"no_repeat_ngram_size must be a whole number >= 0 (0: none; 3 forbids repeating "
            f"any three tokens), got {no_repeat_ngram_size!r}."
        )
    if repetition_penalty != 1.0:
        options["repetition_penalty"] = float(repetition_penalty)
    if no_repeat_ngram_size:
        options["no_repeat_ngram_size"] = no_repeat_ngram_size
    return options


class Generator:
    """Continuations of fixed prompts, ``samples`` per prompt, seeded by batch position."""

    def __init__(
        self,
        tokenizer: Any,
        prompts: Sequence[str],
        *,
        samples: int = 1,
        seed: int = 0,
        batch_size: int = 8,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.tokenizer, self.prompts, self.seed = tokenizer, list(prompts), seed
        self.prompt_ids = [list(t) for t in tokenizer(self.prompts)["input_ids"]]
        empty = [i for i, ids in enumerate(self.prompt_ids) if not ids]
        if empty:
            raise ValueError(f"Prompt {empty[0]} is empty (no tokens): give every prompt text.")
        self.items = [(p, j) for p in range(len(self.prompts)) for j in range(samples)]
        self.batch_size = max(1, batch_size)
        self.options = options if options is not None else sampling_options()

    def run(
        self, model: nn.Module, *, progress: bool = False, shard: tuple[int, int] = (0, 1)
    ) -> tuple[list[Continuation], float]:
        """Every item's continuation under ``model`` (plain or steered), and the seconds spent
        inside ``generate`` (synchronised on CUDA).

        ``shard=(i, n)`` runs only the batches ``b`` with ``b mod n == i``: seeded by their
        position, they come out exactly as in a run of all of them (n processes share a run).
        """
        device = model_device(model)
        self.check_length(model)
        kwargs = {**self.options, "pad_token_id": pad_token_id(self.tokenizer)}
        eos = eos_token_ids(model, self.tokenizer)
        out: list[Continuation] = []
        seconds = 0.0
        starts = range(0, len(self.items), self.batch_size)
        for b, start in enumerate(tqdm(starts, desc="generate", disable=not progress, leave=False)):
            if b % shard[1] != shard[0]:
                continue
            batch = self.items[start : start + self.batch_size]
            ids, mask = self.left_padded([self.prompt_ids[p] for p, _ in batch], device)
            batch_seed = self.seed * SEED_STRIDE + b
            with torch.random.fork_rng(devices=_cuda_devices(device)):  # caller's RNG kept
                torch.manual_seed(batch_seed)
                t0 = time.perf_counter()
                generated = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds += time.perf_counter() - t0
            for row, (p, j) in enumerate(batch):
                new = generated[row, ids.shape[1] :].tolist()
                stop = next((i for i, t in enumerate(new) if t in eos), len(new))
                text = self.tokenizer.decode(new[:stop], skip_special_tokens=True)
                steps = min(stop + 1, len(new))
                out.append(Continuation(p, j, batch_seed, new[:stop], text, steps))
        return out, seconds

    def check_length(self, model: nn.Module) -> None:
        """Refuse prompts that leave no room in the model's context for the new tokens (rather
        than truncating them silently): one error naming the limit."""
        limit = context_length(model, self.tokenizer)
        wanted = int(self.options.get("max_new_tokens", 0))
        longest = max((len(ids) for ids in self.prompt_ids), default=0)
        if limit is not None and longest + wanted > limit:
            raise ValueError(
                f"A prompt has {longest} tokens; with {wanted} new tokens that exceeds the "
                f"model's context of {limit} tokens. Shorten the prompt to at most "
                f"{max(limit - wanted, 0)} tokens or ask for fewer new tokens."
            )

    def warm_up(self, model: nn.Module) -> None:
        """One short untimed generation, so the first timed run pays no one-time start-up costs
        (allocator, kernels, lazy imports)."""
        device = model_device(model)
        ids, mask = self.left_padded([self.prompt_ids[p] for p, _ in self.items[:2]], device)
        kwargs = {**self.options, "max_new_tokens": 2, "pad_token_id": pad_token_id(self.tokenizer)}
        with torch.random.fork_rng(devices=_cuda_devices(device)):
            model.generate(input_ids=ids, attention_mask=mask, **kwargs)

    def left_padded(self, seqs: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
        """Left padding whatever the tokenizer's side: generation continues at the right edge."""
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad_token_id(self.tokenizer), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s) :] = 1
        return ids.to(device), mask.to(device)


def check_prompt_chars(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int
) -> None:
    """Refuse, before tokenizing, a prompt too long in characters to fit the model's context
    with ``max_new_tokens`` new tokens (tokenizing a huge text costs memory in proportion)."""
    bound = max_prompt_chars(model, tokenizer, max_new_tokens)
    longest = max((len(p) for p in prompts if isinstance(p, str)), default=0)
    if bound is not None and longest > bound:
        raise ValueError(
            f"The prompt is {longest} characters long: more than the model's context of "
            f"{context_length(model, tokenizer)} tokens can hold with {max_new_tokens} new tokens "
            f"(at most {bound} characters). Shorten the prompt or ask for fewer new tokens."
        )


def continue_prompts(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
) -> list[str]:
    """Continuations (new text only) of ``prompts``; ``model`` may be a :class:`SteeredModel`."""
    options = sampling_options(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    check_prompt_chars(model, tokenizer, prompts, max_new_tokens)
    gen = Generator(tokenizer, prompts, seed=seed, batch_size=batch_size, options=options)
    continuations, _ = gen.run(model, progress=progress)
    return [c.text for c in continuations]


def _cuda_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


@torch.no_grad()
def perplexity(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str | TokenIds],
    continuations: Sequence[str | TokenIds],
    *,
    batch_size: int = 16,
    shard: tuple[int, int] = (0, 1),
) -> Tensor:
    """``exp(mean NLL)`` of each continuation's tokens given its prompt, under ``model`` as is.

    Call it on the unsteered model (no live SteeredModel, or inside ``steered.disabled()``).
    Strings are tokenised (prompts with the tokenizer's special tokens, continuations without);
    token ids are used as given. Sequences are right-padded and masked, so padding changes no
    score. An empty continuation has no perplexity: NaN. Returns float64 ``[n]``.

    ``shard=(i, n)`` computes only batches ``b`` with ``b mod n == i`` (the others stay NaN):
    the batches are those of the whole run, so n processes' shares merge into exactly its values.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations.")
    pairs = [
        (_ids(tokenizer, p, True), _ids(tokenizer, c, False))
        for p, c in zip(prompts, continuations, strict=True)
    ]
    out = torch.full((len(pairs),), math.nan, dtype=torch.float64)
    device = model_device(model)
    pad = pad_token_id(tokenizer)
    todo = sorted(
        (i for i, (_, c) in enumerate(pairs) if c), key=lambda i: -sum(map(len, pairs[i]))
    )
    for b, start in enumerate(range(0, len(todo), max(1, batch_size))):
        if b % shard[1] != shard[0]:
            continue
        rows = todo[start : start + batch_size]
        seqs = [pairs[i][0] + pairs[i][1] for i in rows]
        width = max(map(len, seqs))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        scored = torch.zeros(len(rows), width - 1, dtype=torch.bool)  # targets 1..width-1
        for r, i in enumerate(rows):
            p, c = pairs[i]
            ids[r, : len(p) + len(c)] = torch.tensor(p + c)
            mask[r, : len(p) + len(c)] = 1
            # A continuation token at position j is predicted from position j - 1; with an
            # empty prompt the first one has no context and is not scored.
            scored[r, max(len(p), 1) - 1 : len(p) + len(c) - 1] = True
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        # -log softmax at the target, without writing the whole log-softmax out
        picked = logits.gather(-1, ids[:, 1:, None]).squeeze(-1)
        nll = (logits.logsumexp(-1) - picked).double().cpu()
        total = (nll * scored).sum(dim=1)
        count = scored.sum(dim=1)
        out[rows] = torch.where(count > 0, (total / count.clamp_min(1)).exp(), math.nan)
    return out


def _ids(tokenizer: Any, value: str | TokenIds, special: bool) -> list[int]:
    if isinstance(value, str):
        return list(tokenizer(value, add_special_tokens=special)["input_ids"])
    return [int(t) for t in value]
