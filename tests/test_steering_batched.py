"""Per-row steering (steering/batched.py): each row of a left-padded batch gets its own edits,
exactly as that row alone would, with positions counted in the row's own sequence."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_topk_sae

from hf_sae_steer.sae.base import SparseCode
from hf_sae_steer.sites.hooks import steering_hooks
from hf_sae_steer.sites.names import Site
from hf_sae_steer.steering.batched import BatchedSteering, BatchRows, SiteEdit
from hf_sae_steer.steering.interventions import Intervention
from hf_sae_steer.steering.steered import SteeredModel

SITE = Site(1, "resid_post")
PROMPTS = ["The patient was treated", "A doctor", "The river flows through the valley towards"]


def _batch(tokenizer, prompts):
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    mask = enc["attention_mask"]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    lengths = mask.sum(-1).tolist()
    return enc["input_ids"], mask, positions, lengths


def _alone(model, tokenizer, prompt):
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    return model(ids).logits[0]


@pytest.fixture
def sae():
    return tiny_topk_sae(d=32, n=48, layer=1)


@torch.no_grad()
def test_each_row_gets_what_it_gets_alone(gpt2, tokenizer, sae):
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(48, generator=g)
    vector = torch.randn(32, generator=g)
    latents = {3: 2.0, 7: -1.0}
    options = [
        {"method": "swap", "scores": scores},
        {"method": "vector", "vector": vector, "strength": 2.5},
        {"method": "add", "latents": latents, "strength": 3.0, "preserve_error": True},
    ]
    edits = [
        SiteEdit(SITE, Intervention(sae, o["method"], o.get("scores"), **_kw(o))) for o in options
    ]
    ids, mask, positions, lengths = _batch(tokenizer, PROMPTS)
    width = ids.shape[1]
    # rows: swap, vector, base; then the same prompts again as add, swap, vector
    steer = [(edits[0],), (edits[1],), (), (edits[2],), (edits[0],), (edits[1],)]
    big = lambda t: torch.cat([t, t])  # noqa: E731
    rows = BatchRows(steer, [n - width for n in lengths * 2], lengths * 2)
    with BatchedSteering(gpt2, [SITE]) as batched, batched.rows(rows):
        logits = gpt2(big(ids), attention_mask=big(mask), position_ids=big(positions)).logits
    assert not steering_hooks(gpt2)
    for r, prompt in enumerate(PROMPTS * 2):
        choice = [0, 1, None, 2, 0, 1][r]
        if choice is None:
            expected = _alone(gpt2, tokenizer, prompt)
        else:
            with SteeredModel(gpt2, sae, layer=1, **options[choice]) as steered:
                expected = _alone(steered, tokenizer, prompt)
        got = logits[r, width - lengths[r % 3] :]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _kw(options):
    kw = {k: v for k, v in options.items() if k not in ("method", "scores")}
    if "latents" in kw:
        kw["latents"] = SparseCode(torch.tensor(list(kw["latents"])),
                                   torch.tensor(list(kw["latents"].values())))  # fmt: skip
    return kw


@torch.no_grad()
def test_positions_are_counted_in_each_rows_own_sequence(gpt2, tokenizer):
    """A vector at "generated" positions, with each row's own prompt length: checked against a
    plain forward hook that adds it at exactly those tokens of the row run alone."""
    v = torch.randn(32, generator=torch.Generator().manual_seed(3))
    ids, mask, positions, lengths = _batch(tokenizer, PROMPTS)
    width = ids.shape[1]
    prompt_lengths = [2, 1, 5]  # the rest of each row counts as generated
    for where in ("generated", "prompt"):
        edit = SiteEdit(SITE, Intervention(None, "vector", vector=v, strength=1.5), where)
        rows = BatchRows([(edit,)] * 3, [n - width for n in lengths], prompt_lengths)
        with BatchedSteering(gpt2, [SITE]) as batched, batched.rows(rows):
            logits = gpt2(ids, attention_mask=mask, position_ids=positions).logits
        for r, prompt in enumerate(PROMPTS):
            alone = tokenizer(prompt, return_tensors="pt")["input_ids"]
            index = torch.arange(alone.shape[1])
            generated = index >= prompt_lengths[r]
            steer = generated if where == "generated" else ~generated

            def plain(module, args, output, steer=steer):
                hidden = output[0] if isinstance(output, tuple) else output
                new = hidden + 1.5 * v * steer.unsqueeze(-1).to(hidden.dtype)
                return (new, *output[1:]) if isinstance(output, tuple) else new

            handle = gpt2.transformer.h[1].register_forward_hook(plain)
            try:
                expected = gpt2(alone).logits[0]
            finally:
                handle.remove()
            torch.testing.assert_close(logits[r, width - lengths[r] :], expected, atol=1e-5,
                                       rtol=1e-5)  # fmt: skip


class Counting:
    """A step that records how often it runs and on how many rows."""

    def __init__(self, shift: float) -> None:
        self.calls: list[int] = []
        self.shift = shift

    def __call__(self, x):
        self.calls.append(x.shape[0])
        return x + self.shift


@torch.no_grad()
def test_rows_with_the_same_edits_run_as_one_group(gpt2, tokenizer):
    a, b = Counting(0.5), Counting(-0.5)
    ea, eb = SiteEdit(SITE, a), SiteEdit(SITE, b)
    ids, mask, positions, lengths = _batch(tokenizer, PROMPTS + ["Steel"])
    width = ids.shape[1]
    rows = BatchRows([(ea,), (eb,), (ea,), (ea, eb)], [n - width for n in lengths], lengths)
    with BatchedSteering(gpt2, [SITE]) as batched, batched.rows(rows):
        gpt2(ids, attention_mask=mask, position_ids=positions)
    assert sorted(a.calls) == [1, 2] and sorted(b.calls) == [1, 1]


@torch.no_grad()
def test_outside_rows_and_after_remove_the_model_is_unchanged(gpt2, tokenizer):
    ids = tokenizer("The patient was", return_tensors="pt")["input_ids"]
    base = gpt2(ids).logits
    batched = BatchedSteering(gpt2, [SITE])
    torch.testing.assert_close(gpt2(ids).logits, base, rtol=0, atol=0)  # no batch set: no edit
    with pytest.raises(RuntimeError, match="already steered"):
        SteeredModel(gpt2, None, layer=1, method="vector", vector=torch.ones(32))
    batched.remove()
    assert not steering_hooks(gpt2)
    with SteeredModel(gpt2, None, layer=1, method="vector", vector=torch.ones(32)):
        with pytest.raises(RuntimeError, match="already steered"):
            BatchedSteering(gpt2, [SITE])


@torch.no_grad()
def test_a_row_that_turns_nonfinite_is_reported_and_others_are_untouched(gpt2, tokenizer):
    bad = SiteEdit(SITE, lambda x: x * float("inf"))
    ids, mask, positions, lengths = _batch(tokenizer, PROMPTS)
    width = ids.shape[1]
    rows = BatchRows([(), (bad,), ()], [n - width for n in lengths], lengths)
    with BatchedSteering(gpt2, [SITE]) as batched:
        with batched.rows(rows):
            logits = gpt2(ids, attention_mask=mask, position_ids=positions).logits
        assert batched.nonfinite_rows() == [1]
    for r in (0, 2):
        expected = _alone(gpt2, tokenizer, PROMPTS[r])
        torch.testing.assert_close(logits[r, width - lengths[r] :], expected, atol=1e-5, rtol=1e-5)


def test_edits_at_an_unhooked_site_and_bad_rows_are_refused(gpt2):
    with BatchedSteering(gpt2, [SITE]) as batched:
        elsewhere = SiteEdit(Site(0, "resid_post"), lambda x: x)
        with pytest.raises(ValueError, match="No steering hook at blocks.0.hook_resid_post"):
            with batched.rows(BatchRows([(elsewhere,)], [0], [1])):
                pass
    with pytest.raises(ValueError, match="one offset and one prompt length per row"):
        BatchRows([(), ()], [0], [1, 1])
    with pytest.raises(ValueError, match="Unknown positions"):
        SiteEdit(SITE, lambda x: x, "middle")  # type: ignore[arg-type]
