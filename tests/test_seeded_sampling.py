"""Per-row seeded sampling: an exact top-k sample whose draws belong to the row, not its batch."""

from __future__ import annotations

import pytest
import torch
from calibration_reference import gumbel

from hf_sae_steer.seeded_sampling import RowSeededSampler, gumbel_noise, row_key


def test_the_noise_is_the_documented_one():
    # tests/calibration_reference.py writes the rule out independently
    for item, sample in [(0, 0), (3, 1), (23, 0)]:
        want = gumbel(5, item, sample, 4, 7)
        assert torch.equal(gumbel_noise(row_key(5, item, sample), 4, 7), want)
    assert row_key(0, 1, 0) != row_key(0, 0, 1) != row_key(1, 0, 0)


def test_each_row_samples_its_top_k_distribution():
    logits = torch.tensor([3.0, 2.5, 2.0, 1.0, 0.0, -1.0, 5.0, -3.0])
    top_k, temperature, n = 4, 0.7, 20_000
    sampler = RowSeededSampler(list(range(n)), steps=1, top_k=top_k, temperature=temperature)
    out = sampler(torch.zeros(n, 1, dtype=torch.long), logits.expand(n, -1).clone())
    assert ((out == 0).sum(dim=1) == 1).all() and torch.isinf(out).sum() == n * (len(logits) - 1)
    chosen = out.argmax(dim=1)
    # the top-k distribution, plainly: softmax over the 4 largest logits at this temperature
    kept = [6, 0, 1, 2]
    weights = torch.tensor([float(logits[i]) / temperature for i in kept]).exp()
    want = weights / weights.sum()
    counts = torch.bincount(chosen, minlength=len(logits)).double()
    assert counts.sum() == counts[kept].sum()  # never outside the top k
    got = counts[kept] / n
    spread = (want * (1 - want) / n).sqrt()
    assert ((got - want).abs() <= 4 * spread + 1e-12).all(), (got, want)


def test_a_row_samples_the_same_tokens_in_any_batch(gpt2, tokenizer):
    prompts = ["The river", "A farmer planted wheat", "In", "The orchestra played a symphony"]
    steps = 8

    def generate(rows: list[tuple[int, int]]) -> list[list[int]]:
        seqs = [tokenizer(prompts[p])["input_ids"] for p, _ in rows]
        width = max(map(len, seqs))
        ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
        sampler = RowSeededSampler([row_key(0, p, j) for p, j in rows], steps=steps)
        out = gpt2.generate(input_ids=ids, attention_mask=mask, logits_processor=[sampler],
                            do_sample=False, max_new_tokens=steps, pad_token_id=0)  # fmt: skip
        return out[:, width:].tolist()

    rows = [(p, j) for p in range(len(prompts)) for j in range(2)]
    together = generate(rows)
    for r, row in enumerate(rows):
        alone = generate([row])[0]
        n = next((i for i, t in enumerate(alone) if t == 0), steps)  # to the first EOS
        assert together[r][:n] == alone[:n], row
    reversed_batch = generate(rows[::-1])[::-1]
    assert reversed_batch == together
    assert together[0] != together[1]  # two samples of one prompt draw different numbers


def test_it_refuses_more_steps_than_it_was_built_for():
    sampler = RowSeededSampler([1], steps=1, top_k=2)
    sampler(torch.zeros(1, 1, dtype=torch.long), torch.randn(1, 5))
    with pytest.raises(RuntimeError, match="more steps"):
        sampler(torch.zeros(1, 1, dtype=torch.long), torch.randn(1, 5))
    with pytest.raises(ValueError, match="temperature"):
        RowSeededSampler([1], steps=1, temperature=0)


def test_scored_rows_keep_the_models_log_probabilities_of_their_tokens(gpt2, tokenizer):
    ids = torch.tensor([tokenizer(text)["input_ids"][:3] for text in ("The river", "A doctor")])
    steps = 5
    sampler = RowSeededSampler([3, 4], steps=steps, scored_rows=[1])
    hook = gpt2.register_forward_hook(sampler.observe)
    try:
        out = gpt2.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                            logits_processor=[sampler], max_new_tokens=steps,
                            pad_token_id=0, eos_token_id=None)  # fmt: skip
    finally:
        hook.remove()
    assert sampler.log_probs.shape == (1, steps)
    # plainly: the whole sequence once, log-softmax at each chosen token
    with torch.no_grad():
        logp = torch.log_softmax(gpt2(out[1:]).logits[0].double(), -1)
    width = ids.shape[1]
    want = [float(logp[width - 1 + t, out[1, width + t]]) for t in range(steps)]
    torch.testing.assert_close(sampler.log_probs[0], torch.tensor(want, dtype=torch.float64),
                               rtol=0, atol=1e-5)  # fmt: skip
