"""How a row's token is chosen and what its logprobs are, against plainly written Python
(lists and math, no torch) of OpenAI's and vLLM's definitions."""

from __future__ import annotations

import math
import random

import pytest
import torch

from hf_sae_steer.serving.engine import GenerationRequest
from hf_sae_steer.serving.requests import parse_completion
from hf_sae_steer.serving.sampling import Sampling
from hf_sae_steer.serving.token_choice import TokenChooser, logprob_entries

VOCAB = 40
EOS = 7


def _logits(seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(0.0, 3.0) for _ in range(VOCAB)]


def plain_log_softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    total = sum(math.exp(x - top) for x in xs)
    return [x - top - math.log(total) for x in xs]


def plain_shape(xs, sampling, prompt, generated, ends):
    """Bias, min_tokens, repetition, presence and frequency penalties, one token at a time."""
    out = list(xs)
    for token, bias in sampling.logit_bias:
        out[token] += bias
    if len(generated) < sampling.min_tokens:
        for token in ends:
            out[token] = -math.inf
    for token in set(prompt) | set(generated):
        p = sampling.repetition_penalty
        out[token] = out[token] / p if out[token] > 0 else out[token] * p
    for token in set(generated):
        count = generated.count(token)
        out[token] -= count * sampling.frequency_penalty + sampling.presence_penalty
    return out


def _chooser(sampling, prompt=(1, 2, 3), ends=frozenset({EOS})):
    return TokenChooser(GenerationRequest(list(prompt), 10, sampling), ends)


def test_logprob_entries_are_the_log_softmax_with_the_most_likely_tokens():
    rows = [_logits(s) for s in range(3)]
    tokens = [5, 0, 39]
    got = logprob_entries(torch.tensor(rows), tokens, 4)
    for row, token, entry in zip(rows, tokens, got, strict=True):
        want = plain_log_softmax(row)
        best = sorted(range(VOCAB), key=lambda t: -want[t])[:4]
        assert entry.token == token and entry.logprob == pytest.approx(want[token], abs=1e-5)
        assert [t for t, _ in entry.top] == best
        assert [v for _, v in entry.top] == pytest.approx([want[t] for t in best], abs=1e-5)
    assert logprob_entries(torch.tensor(rows), tokens, 0)[0].top == ()


@pytest.mark.parametrize(
    "sampling, generated",
    [
        (Sampling(temperature=0, logit_bias=((3, 100.0), (4, -50.5))), [1]),
        (Sampling(temperature=0, min_tokens=3, stop_token_ids=(9,)), [1, 2]),
        (Sampling(temperature=0, min_tokens=2), [1, 2]),  # min_tokens reached: EOS allowed
        (Sampling(temperature=0, repetition_penalty=1.7), [11, 12, 11]),
        (Sampling(temperature=0, repetition_penalty=0.5), [11]),
        (Sampling(temperature=0, presence_penalty=1.5, frequency_penalty=-0.7), [4, 4, 9, 4]),
        (Sampling(temperature=0, repetition_penalty=1.3, presence_penalty=0.4,
                  frequency_penalty=0.9, logit_bias=((2, 5.0),), min_tokens=9), [2, 2, 5]),
    ],
)  # fmt: skip
def test_controls_reshape_the_logits_as_openai_and_vllm_define_them(sampling, generated):
    for seed in range(5):
        xs = _logits(seed)
        chooser = _chooser(sampling)
        want = plain_shape(xs, sampling, [1, 2, 3], generated, {EOS, *sampling.stop_token_ids})
        got = chooser.shape(torch.tensor(xs), generated).tolist()
        assert got == pytest.approx(want, abs=1e-4)
        best = max(range(VOCAB), key=want.__getitem__)
        assert chooser.choose(torch.tensor(xs), generated) == best
        assert not chooser.plain_greedy


def _draws(sampling, xs, n=300):
    return [_chooser(sampling).choose(torch.tensor(xs), []) for _ in range(n)]


def test_top_k_min_p_and_top_p_keep_only_what_they_say():
    xs = [0.0] * VOCAB
    xs[3], xs[8], xs[20], xs[30] = 4.0, 3.8, 3.6, 2.0  # three likely tokens, one less
    probs = [math.exp(v) for v in plain_log_softmax(xs)]
    assert set(_draws(Sampling(temperature=1.0, top_k=3, seed=None), xs)) == {3, 8, 20}
    keep = {t for t in range(VOCAB) if probs[t] >= 0.5 * max(probs)}
    assert set(_draws(Sampling(temperature=1.0, min_p=0.5), xs)) == keep == {3, 8, 20}
    ordered = sorted(range(VOCAB), key=lambda t: -probs[t])
    cumulative, nucleus = 0.0, set()
    for t in ordered:  # the smallest set reaching top_p
        nucleus.add(t)
        cumulative += probs[t]
        if cumulative >= 0.5:
            break
    assert set(_draws(Sampling(temperature=1.0, top_p=0.5), xs)) == nucleus


@pytest.mark.parametrize(
    "sampling",
    [Sampling(top_p=1e-300), Sampling(top_k=1), Sampling(min_p=1.0), Sampling(top_p=5e-324)],
)
def test_extreme_values_leave_the_most_likely_token(sampling):
    """top_p 1e-300 is 0 in float32: every token was dropped, softmax of all -inf was NaN and
    the sampler raised for the whole batch (issue 22). The most likely token always stays."""
    xs = _logits(1)
    assert set(_draws(sampling, xs, 20)) == {max(range(VOCAB), key=xs.__getitem__)}


@pytest.mark.parametrize("temperature", [1e-40, 5e-324, 1e-6])
def test_temperatures_that_would_overflow_are_greedy(temperature):
    """logits / 1e-40 are infinite: such temperatures decode greedily (as vLLM does)."""
    sampling = parse_completion({"prompt": "a", "temperature": temperature}).sampling
    assert sampling.greedy and sampling.temperature == 0.0
    assert Sampling(temperature=temperature).greedy
    assert _chooser(sampling).plain_greedy
    assert not parse_completion({"prompt": "a", "temperature": 1e-4}).sampling.greedy


def test_a_seed_gives_the_same_draws():
    xs = _logits(2)
    flat = [x / 4 for x in xs]
    first = [_chooser(Sampling(seed=11)).choose(torch.tensor(flat), []) for _ in range(8)]
    again = [_chooser(Sampling(seed=11)).choose(torch.tensor(flat), []) for _ in range(8)]
    other = [_chooser(Sampling(seed=12 + i)).choose(torch.tensor(flat), []) for i in range(8)]
    assert first == again and len(set(first)) == 1 and set(other) != set(first)
