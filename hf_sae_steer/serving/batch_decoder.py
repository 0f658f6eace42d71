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

**One row cannot fail another.** A row whose logits are NaN, or whose token choice raises,
ends alone with an error (its steering turning the hidden states NaN/inf: 400, else 500). A
forward pass that raises is undone (the KV cache cut back to its width before the pass) and
retried in halves until the row that raises is alone: it ends with an error and every other row
decodes what it decodes alone.
"""

from __future__ import annotations

import copy
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
    status: int = 400  # with ``error``: 400 when the row's own steering broke, else 500

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
        """Prefill ``rows`` together, sample each one's first token, join the running batch.
        A prefill that raises is retried in halves: only the row that raises fails."""
        if not rows:
            return
        try:
            cache, mask = self._prefill(rows)
        except Exception as error:  # noqa: BLE001 - find the row that raises, fail it alone
            if len(rows) == 1:
                _fail(rows[0], error)
                return
            half = len(rows) // 2
            self.admit(rows[:half])
            self.admit(rows[half:])
            return
        self._join(rows, cache, mask)

    def _prefill(self, rows: list[Row]) -> tuple[object, Tensor]:
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
        return cache, mask

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
        """Feed every running row its last token and sample the next one. A pass that raises
        is undone and retried in halves: only the row that raises fails (module docstring)."""
        rows = self.rows
        if not rows:
            return
        width = self._mask.shape[1]
        mask = F.pad(self._mask, (0, 1), value=1)
        try:
            self._step_rows(rows, self._cache, mask)
        except Exception as error:  # noqa: BLE001 - find the row that raises, fail it alone
            if not self.joinable:  # a cache that cannot be split: the rows fail together
                raise
            _cut(self._cache, width)  # the layers the pass reached hold one column more
            self._isolate(error, mask)
            return
        self._mask = mask

    def _step_rows(self, rows: list[Row], cache: object, mask: Tensor) -> None:
        ids = torch.tensor([[r.generated[-1]] for r in rows], device=self.device)
        positions = torch.tensor([[r.fed_index] for r in rows], device=self.device)
        batch = BatchRows(
            [r.request.steering.edits for r in rows],
            offsets=[r.fed_index for r in rows],
            prompt_lengths=[r.prompt_length for r in rows],
        )
        logits = self._forward(ids, mask, positions, cache, batch)
        self._sample(rows, logits)

    def _isolate(self, error: Exception, mask: Tensor) -> None:
        """Step the rows again in halves, each half on its own copy of its cache rows; the
        halves that pass make the new batch, a lone row that raises fails."""
        passed: list[tuple[list[int], object]] = []

        def attempt(index: list[int], failure: Exception | None) -> None:
            if failure is None:
                cache = _select(self._cache, index)
                try:
                    self._step_rows([self.rows[i] for i in index], cache, mask[index])
                except Exception as raised:  # noqa: BLE001
                    failure = raised
                else:
                    passed.append((index, cache))
                    return
            if len(index) == 1:
                _fail(self.rows[index[0]], failure)
                return
            half = len(index) // 2
            attempt(index[:half], None)
            attempt(index[half:], None)

        attempt(list(range(len(self.rows))), error)
        if not passed:
            self.reset()
            return
        order = [i for index, _ in passed for i in index]
        for at, layer in enumerate(_layers(self._cache)):
            parts = [_layers(cache)[at] for _, cache in passed]
            layer.keys = torch.cat([p.keys for p in parts])
            layer.values = torch.cat([p.values for p in parts])
        self.rows = [self.rows[i] for i in order]
        self._mask = mask[order]

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
        sample_rows(rows, logits, set(self.steering.nonfinite_rows()), self.eos)

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


def sample_rows(rows: list[Row], logits: Tensor, bad: set[int], eos: frozenset[int]) -> None:
    """Each admitted row's next token from its row of ``logits`` (``[rows, vocab]``, float32).
    Rows in ``bad`` (their steering turned the hidden states NaN/inf), rows with NaN logits and
    rows whose choice raises end with an error; the other rows never notice."""
    greedy = logits.argmax(-1).tolist()
    broken = torch.isnan(logits).any(-1).tolist()
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
        try:
            if broken[i]:
                raise ValueError("the model's logits for this request are NaN")
            token = greedy[i] if chooser.plain_greedy else chooser.choose(logits[i], row.generated)
        except Exception as error:  # noqa: BLE001 - this row only
            _fail(row, error)
            continue
        if request.logprobs is not None:
            scored.append((i, token))
        row.generated.append(int(token))
        if (token in eos and not request.ignore_eos) or token in request.sampling.stop_token_ids:
            row.done = "stop"
        elif len(row.generated) >= request.max_tokens:
            row.done = "length"
    for i, token in scored:
        (entry,) = logprob_entries(logits[i : i + 1], [token], rows[i].request.logprobs or 0)
        rows[i].logprobs.append(entry)


def _fail(row: Row, error: BaseException) -> None:
    row.done, row.status = "error", 500
    row.error = f"Generation failed: {type(error).__name__}: {error}".splitlines()[0]


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


def _cut(cache: object, width: int) -> None:
    """Undo a forward pass that raised: cut every layer back to ``width`` columns."""
    for layer in _layers(cache):
        if isinstance(getattr(layer, "keys", None), Tensor) and layer.keys.shape[2] > width:
            layer.keys, layer.values = layer.keys[:, :, :width], layer.values[:, :, :width]


def _select(cache: object, index: list[int]) -> object:
    """A copy of ``cache`` holding only the batch rows ``index`` (the original is unchanged)."""
    chosen = copy.copy(cache)
    layers = []
    for layer in _layers(cache):
        part = copy.copy(layer)
        at = torch.tensor(index, device=layer.keys.device)
        part.keys, part.values = layer.keys.index_select(0, at), layer.values.index_select(0, at)
        layers.append(part)
    chosen.layers = layers  # type: ignore[attr-defined]
    return chosen


def _pad_left(states: Tensor, width: int) -> Tensor:
    """``[batch, heads, seq, dim]`` padded with zeros on the left of ``seq`` to ``width``."""
    return F.pad(states, (0, 0, width - states.shape[2], 0))
