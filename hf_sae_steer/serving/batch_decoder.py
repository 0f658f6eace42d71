"""The transformers engine's decoding loop, one token per step for a batch of requests that
changes between steps (continuous batching at step granularity). Synchronous: one thread (the
engine's scheduler) owns it and runs every forward pass of the model.

- **Admit**: new requests are prefilled together (left padding, their own fresh KV cache,
  position ids from the attention mask as ``generate`` makes them), sample their first token,
  and join the running batch: both caches are left-padded to one length and concatenated along
  the batch. Padding is masked out of attention, so a row never sees another row.
- **Step**: every running row feeds its last token; ``position_ids`` and the steering's
  positions come from each row's own length, never from the padded width.
- **Release**: finished or cancelled rows leave the cache; columns that are padding for every
  remaining row are cut off, so the cache never grows with dead columns.

Joining a running batch needs a cache whose layers are plain ``DynamicLayer`` key/value
tensors (most decoder-only models). Otherwise (sliding-window or linear-attention caches) new
requests wait until the running batch drains: batching then happens per arrival window.

Each row is steered with its own :class:`~hf_sae_steer.steering.batched.RowSteering` through
:class:`~hf_sae_steer.steering.batched.BatchedSteering`. Greedy rows take the argmax of their
float32 logits (no generation-config processors); every other choice (sampling, penalties,
bias) is its row's :class:`~hf_sae_steer.serving.token_choice.TokenChooser`. Rows that asked for
logprobs get the log-softmax of their logits per token; rows that asked for prompt logprobs are
prefilled with every position's logits kept (only then: they cost memory).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hf_sae_steer.serving.engine import FinishReason, GenerationRequest, TokenLogprob
from hf_sae_steer.serving.token_choice import TokenChooser, logprob_entries
from hf_sae_steer.steering.batched import BatchedSteering, BatchRows

NONFINITE = (
    "Steering made the hidden states NaN or infinite: the strength is too large for this model. "
    "Lower it."
)


@dataclass(eq=False)
class Row:
    """One request in the batch: its prompt length and the tokens generated so far."""

    request: GenerationRequest
    chooser: TokenChooser | None = None  # set when the row is admitted
    generated: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # when the request asks
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    done: FinishReason | None = None
    error: str | None = None

    @property
    def prompt_length(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def fed_index(self) -> int:
        """The index, in this row's own sequence, of the token the next step feeds."""
        return self.prompt_length + len(self.generated) - 1


class BatchDecoder:
    """The running batch: its rows, their KV cache and attention mask (module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        steering: BatchedSteering,
        *,
        eos_token_ids: frozenset[int],
        pad_token_id: int,
    ) -> None:
        self.model = model
        self.steering = steering
        self.eos = eos_token_ids
        self.pad = pad_token_id
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_logits = "logits_to_keep" in params
        self.device = next(model.parameters()).device
        self.rows: list[Row] = []
        self._cache: object | None = None
        self._mask: Tensor | None = None
        self.joinable: bool | None = None  # decided by the first cache built

    @property
    def can_admit(self) -> bool:
        """Whether new requests may join now (always, when the cache can be merged)."""
        return not self.rows or self.joinable is not False

    # -- admit ------------------------------------------------------------------------------
    @torch.no_grad()
    def admit(self, rows: list[Row]) -> None:
        """Prefill ``rows`` together, sample each one's first token, join the running batch."""
        if not rows:
            return
        width = max(r.prompt_length for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - row.prompt_length :] = torch.tensor(row.request.prompt_ids)
            mask[i, width - row.prompt_length :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = _new_cache(self.model)
        batch = BatchRows(
            [r.request.steering.edits for r in rows],
            offsets=[r.prompt_length - width for r in rows],
            prompt_lengths=[r.prompt_length for r in rows],
        )
        keep_all = any(r.request.prompt_logprobs is not None for r in rows)
        logits = self._forward(ids, mask, positions, cache, batch, keep_all=keep_all)
        if self.joinable is None:
            self.joinable = _joinable(cache)
        for i, row in enumerate(rows):
            ends = frozenset() if row.request.ignore_eos else self.eos
            row.chooser = TokenChooser(row.request, ends)
            k = row.request.prompt_logprobs
            if k is not None:  # position j's logits score the token at j + 1
                prompt = row.request.prompt_ids
                scored = logits[i, width - row.prompt_length : width - 1]
                row.prompt_logprobs = (None, *logprob_entries(scored, prompt[1:], k))
        self._sample(rows, logits[:, -1, :].float() if keep_all else logits)
        self._join(rows, cache, mask)

    def _join(self, rows: list[Row], cache: object, mask: Tensor) -> None:
        if not self.rows:
            self.rows, self._cache, self._mask = list(rows), cache, mask
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        for old, new in zip(_layers(self._cache), _layers(cache), strict=True):
            old.keys = torch.cat([_pad_left(old.keys, width), _pad_left(new.keys, width)])
            old.values = torch.cat([_pad_left(old.values, width), _pad_left(new.values, width)])
        self._mask = torch.cat(
            [F.pad(self._mask, (width - old_len, 0)), F.pad(mask, (width - new_len, 0))]
        )
        self.rows += rows

    # -- step -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> None:
        """Feed every running row its last token and sample the next one."""
        rows = self.rows
        if not rows:
            return
        ids = torch.tensor([[r.generated[-1]] for r in rows], device=self.device)
        self._mask = F.pad(self._mask, (0, 1), value=1)
        positions = torch.tensor([[r.fed_index] for r in rows], device=self.device)
        batch = BatchRows(
            [r.request.steering.edits for r in rows],
            offsets=[r.fed_index for r in rows],
            prompt_lengths=[r.prompt_length for r in rows],
        )
        logits = self._forward(ids, self._mask, positions, self._cache, batch)
        self._sample(rows, logits)

    def _forward(
        self, ids: Tensor, mask: Tensor, positions: Tensor, cache: object, batch: BatchRows,
        keep_all: bool = False,
    ) -> Tensor:  # fmt: skip
        """The last position's float32 logits ``[batch, vocab]``; with ``keep_all`` every
        position's, as the model computed them ``[batch, seq, vocab]``."""
        kwargs = {self._cache_arg: cache, "use_cache": True}
        if self._keep_logits:
            kwargs["logits_to_keep"] = 0 if keep_all else 1
        with self.steering.rows(batch):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        if keep_all:
            return out.logits
        return out.logits[:, -1, :].to(dtype=torch.float32)

    def _sample(self, rows: list[Row], logits: Tensor) -> None:
        bad = set(self.steering.nonfinite_rows())
        greedy = logits.argmax(-1).tolist()
        scored: list[tuple[int, int]] = []  # (row index, token) of rows that report logprobs
        for i, row in enumerate(rows):
            if i in bad:
                row.done, row.error = "error", NONFINITE
                continue
            request = row.request
            if request.max_tokens == 0:  # the prompt scored (echo), nothing generated
                row.done = "length"
                continue
            chooser = row.chooser
            assert chooser is not None
            token = greedy[i] if chooser.plain_greedy else chooser.choose(logits[i], row.generated)
            if request.logprobs is not None:
                scored.append((i, token))
            row.generated.append(int(token))
            if (token in self.eos and not request.ignore_eos) or (
                token in request.sampling.stop_token_ids
            ):
                row.done = "stop"
            elif len(row.generated) >= request.max_tokens:
                row.done = "length"
        for i, token in scored:
            (entry,) = logprob_entries(logits[i : i + 1], [token], rows[i].request.logprobs or 0)
            rows[i].logprobs.append(entry)

    # -- release ----------------------------------------------------------------------------
    def release(self, leaving: list[Row]) -> None:
        """Drop ``leaving`` from the batch and its cache; cut columns padded in every row."""
        if not leaving:
            return
        gone = {id(r) for r in leaving}
        keep = [i for i, r in enumerate(self.rows) if id(r) not in gone]
        if not keep:
            self.rows, self._cache, self._mask = [], None, None
            return
        self.rows = [self.rows[i] for i in keep]
        index = torch.tensor(keep, device=self.device)
        mask = self._mask.index_select(0, index)
        start = int(mask.argmax(-1).min())  # the first column any remaining row uses
        self._mask = mask[:, start:]
        for layer in _layers(self._cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    def reset(self) -> None:
        """Forget every row (after a failed forward pass)."""
        self.rows, self._cache, self._mask = [], None, None


def _new_cache(model: nn.Module) -> object:
    from transformers import DynamicCache

    config = getattr(model, "config", None)
    text = config.get_text_config(decoder=True) if config is not None else None
    try:
        return DynamicCache(config=text)
    except TypeError:  # older transformers: layers are created as they fill
        return DynamicCache()


def _layers(cache: object) -> list:
    return list(getattr(cache, "layers", []))


def _joinable(cache: object) -> bool:
    """Only plain key/value layers can be padded and concatenated across requests."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return False
    layers = _layers(cache)
    return bool(layers) and all(
        type(layer) is DynamicLayer and isinstance(getattr(layer, "keys", None), Tensor)
        for layer in layers
    )


def _pad_left(states: Tensor, width: int) -> Tensor:
    """``[batch, heads, seq, dim]`` padded with zeros on the left of ``seq`` to ``width``."""
    return F.pad(states, (0, 0, width - states.shape[2], 0))
