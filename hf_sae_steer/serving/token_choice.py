"""How one row's next token is chosen from its logits, and the log-probabilities reported.

:class:`TokenChooser` applies a request's :class:`~hf_sae_steer.serving.sampling.Sampling` to
one row's float32 logits, in vLLM's order:

1. ``logit_bias`` is added; until ``min_tokens`` tokens exist, the tokens that would end the
   generation (end-of-sequence, ``stop_token_ids``) are ruled out;
2. ``repetition_penalty`` ``p`` on every token of the prompt and the output (a positive logit
   divided by ``p``, a negative one multiplied: Keskar et al., as transformers and vLLM do);
   ``presence_penalty`` and ``frequency_penalty`` on the output's tokens (OpenAI's
   ``logit - count * frequency - (count > 0) * presence``);
3. greedy rows take the argmax; sampled rows divide by ``temperature``, keep the ``top_k`` most
   likely tokens, those with probability >= ``min_p`` times the most likely one's, and the
   smallest set reaching ``top_p`` (the most likely token is always kept, so no setting empties
   the distribution), then draw with the row's own seeded ``torch.Generator``.

:func:`logprob_entries` is what ``logprobs`` reports: the log-softmax of the model's logits
before any of the above (vLLM's ``raw_logprobs``), the chosen token's value and the ``k`` most
likely tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hf_sae_steer.serving.engine import GenerationRequest, TokenLogprob


def logprob_entries(logits: Tensor, tokens: Sequence[int], k: int) -> list[TokenLogprob]:
    """``tokens[i]``'s log-probability under ``logits[i]`` (``[n, vocab]``) and the ``k`` most
    likely tokens there, best first."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    index = torch.tensor(list(tokens), device=logprobs.device).unsqueeze(-1)
    chosen = logprobs.gather(-1, index).squeeze(-1).tolist()
    if k > 0:
        values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
        tops = [tuple(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(),
                                                                 strict=True)]  # fmt: skip
    else:
        tops = [()] * len(chosen)
    return [
        TokenLogprob(int(t), float(c), top) for t, c, top in zip(tokens, chosen, tops, strict=True)
    ]


class TokenChooser:
    """One request's token choice (module docstring); ``ends`` are the ids that end it."""

    def __init__(self, request: GenerationRequest, ends: frozenset[int]) -> None:
        self.request = request
        self.sampling = request.sampling
        self.ends = sorted(ends | set(self.sampling.stop_token_ids))
        self.generator: torch.Generator | None = None
        self._counts: Tensor | None = None  # output token counts, for the penalties
        self._counted = 0

    @property
    def plain_greedy(self) -> bool:
        """The argmax of the raw logits is the answer (nothing reshapes them)."""
        return self.sampling.greedy and not self.sampling.shapes_logits

    def choose(self, logits: Tensor, generated: Sequence[int]) -> int:
        """The next token after ``generated``, from this row's float32 ``logits`` ``[vocab]``."""
        scores = self.shape(logits, generated)
        if self.sampling.greedy:
            return int(scores.argmax())
        return self._draw(scores)

    def shape(self, logits: Tensor, generated: Sequence[int]) -> Tensor:
        """Steps 1 and 2 of the module docstring (a new tensor; ``logits`` is not changed)."""
        s = self.sampling
        scores = logits.float().clone()
        vocab = scores.shape[-1]
        if s.logit_bias:
            ids = torch.tensor([t for t, _ in s.logit_bias if t < vocab], device=scores.device)
            bias = torch.tensor([b for t, b in s.logit_bias if t < vocab], device=scores.device)
            scores.index_add_(0, ids, bias)
        if len(generated) < s.min_tokens and self.ends:
            ends = [t for t in self.ends if t < vocab]
            scores[ends] = float("-inf")
        if s.repetition_penalty != 1.0:
            seen = torch.tensor(
                sorted(set(self.request.prompt_ids) | set(generated)), device=scores.device
            )
            picked = scores[seen]
            scores[seen] = torch.where(
                picked > 0, picked / s.repetition_penalty, picked * s.repetition_penalty
            )
        if s.presence_penalty or s.frequency_penalty:
            counts = self._output_counts(generated, vocab, scores.device)
            scores -= counts * s.frequency_penalty + (counts > 0).float() * s.presence_penalty
        return scores

    def _output_counts(self, generated: Sequence[int], vocab: int, device: torch.device) -> Tensor:
        if self._counts is None:
            self._counts = torch.zeros(vocab, device=device)
        new = list(generated[self._counted :])
        if new:
            self._counts.index_add_(
                0, torch.tensor(new, device=device), torch.ones(len(new), device=device)
            )
            self._counted = len(generated)
        return self._counts

    def _draw(self, scores: Tensor) -> int:
        s = self.sampling
        # Shifted by the maximum, every score is <= 0 before the temperature divides it: no
        # temperature can overflow the best to +inf (NaN after softmax). +inf logits become the
        # largest float first, so only they can be drawn.
        scores = scores.clamp(max=torch.finfo(scores.dtype).max)
        scores = (scores - scores.max()) / s.temperature
        keep = torch.ones_like(scores, dtype=torch.bool)
        best = int(scores.argmax())
        if 0 < s.top_k < scores.shape[-1]:
            kth = scores.topk(s.top_k).values[-1]
            keep &= scores >= kth
        if s.min_p > 0.0:
            probs = scores.softmax(-1)
            keep &= probs >= s.min_p * probs[best]
        if s.top_p < 1.0:  # the smallest set of tokens with probability >= top_p
            ordered, order = torch.sort(scores, descending=True)
            probs = ordered.softmax(-1)
            drop = probs.cumsum(-1) - probs >= s.top_p
            keep[order[drop]] = False
        keep[best] = True  # however extreme the settings, the most likely token stays
        scores = scores.masked_fill(~keep, float("-inf"))
        if self.generator is None:
            self.generator = torch.Generator(device=scores.device)
            seed = s.seed
            self.generator.manual_seed(seed if seed is not None else torch.seed())
        return int(torch.multinomial(scores.softmax(-1), 1, generator=self.generator))
