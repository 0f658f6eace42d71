"""docs/method.md §6's fluency calibration written out plainly: one continuation at a time,
no cache, no batching, the whole grid.

Shares no code with hf_sae_steer's calibration (it steers through the public SteeredModel, whose
arithmetic tests/method_reference.py checks): it is the yardstick the search is measured against.
The sampling rule is the documented one: sample ``j`` of prompt ``p`` in a run seeded ``seed``
draws uniforms ``U[steps, top_k]`` from ``torch.Generator().manual_seed(key)`` with
``key = (seed * 1_000_003 + p) * 1_000_003 + j`` (float64), and at step ``t`` takes, among the
``top_k`` largest logits (largest first), the one maximising ``log_softmax(top logits) +
(-log(-log U[t]))``.
"""

from __future__ import annotations

import math

import torch

GRID = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5)


def gumbel(seed: int, prompt: int, sample: int, steps: int, top_k: int) -> torch.Tensor:
    key = (seed * 1_000_003 + prompt) * 1_000_003 + sample
    u = torch.rand(steps, top_k, generator=torch.Generator().manual_seed(key), dtype=torch.float64)
    return -torch.log(-torch.log(u))


@torch.no_grad()
def continue_one(model, prompt_ids, noise, steps, top_k, eos):
    ids = list(prompt_ids)
    new = []
    for t in range(steps):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        values, tokens = torch.topk(logits, min(top_k, logits.numel()))
        choice = int(torch.argmax(torch.log_softmax(values, -1) + noise[t, : len(values)].float()))
        token = int(tokens[choice])
        if token == eos:
            break
        new.append(token)
        ids.append(token)
    return new


@torch.no_grad()
def perplexity_one(model, prompt_ids, continuation):
    if not continuation:
        return math.nan
    ids = torch.tensor([list(prompt_ids) + list(continuation)])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    start = len(prompt_ids)
    nll = [-float(logp[start - 1 + i, tok]) for i, tok in enumerate(continuation)]
    return math.exp(sum(nll) / len(nll))


def grid_curve(model, tokenizer, steered_at, prompts, *, samples, steps, seed=0, top_k=50):
    """``{ρ: ratio}`` over the grid. ``steered_at(ρ)`` is a context manager giving the model
    steered at the strength of norm fraction ``ρ``."""
    eos = tokenizer.eos_token_id
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    rows = [(p, j) for p in range(len(prompts)) for j in range(samples)]
    noise = {(p, j): gumbel(seed, p, j, steps, top_k) for p, j in rows}
    base = {}
    for p, j in rows:
        cont = continue_one(model, prompt_ids[p], noise[(p, j)], steps, top_k, eos)
        base[(p, j)] = perplexity_one(model, prompt_ids[p], cont)
    curve = {}
    for rho in GRID:
        continuations = {}
        with steered_at(rho) as steered:
            for p, j in rows:
                continuations[(p, j)] = continue_one(steered, prompt_ids[p], noise[(p, j)],
                                                     steps, top_k, eos)  # fmt: skip
        logs = []
        for p, j in rows:
            ppl = perplexity_one(model, prompt_ids[p], continuations[(p, j)])
            if not math.isnan(ppl) and not math.isnan(base[(p, j)]):
                logs.append(math.log(ppl / base[(p, j)]))
        curve[rho] = math.exp(sum(logs) / len(logs))
    return curve


def grid_answer(curve, target):
    """The largest ρ at or under ``target``, read as docs/method.md §6 says."""
    previous_rho, previous_log, highest = 0.0, 0.0, 0.0
    for rho in sorted(curve):
        log = max(math.log(curve[rho]), highest)
        if log > math.log(target):
            return previous_rho + (math.log(target) - previous_log) / (log - previous_log) * (
                rho - previous_rho
            )
        previous_rho, previous_log, highest = rho, log, log
    return previous_rho
