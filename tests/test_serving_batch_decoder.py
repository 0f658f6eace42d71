"""The transformers engine's decoding loop: every request, alone or inside a batch that others
join and leave at every step, gives token for token (greedy, float32) what
``SteeredModel(model, sae, scores=artifact, ...).generate`` gives for it alone."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from arch_models import hf, random_scores, tiny_sae, vector

from hf_sae_steer.models import load_model
from hf_sae_steer.sae.loading import load_sae
from hf_sae_steer.scores.record import FeatureScores, load_scores
from hf_sae_steer.serving.batch_decoder import NONFINITE, BatchDecoder, Row, sample_rows
from hf_sae_steer.serving.concepts import ConceptLibrary, ResolvedSteering
from hf_sae_steer.serving.engine import GenerationRequest
from hf_sae_steer.serving.sampling import Sampling
from hf_sae_steer.serving.steering_items import parse_steering
from hf_sae_steer.serving.token_choice import TokenChooser
from hf_sae_steer.sites.names import Site
from hf_sae_steer.steering.batched import BatchedSteering, SiteEdit
from hf_sae_steer.steering.steered import SteeredModel

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"
GREEDY = Sampling(temperature=0.0)
# Request steering items and the SteeredModel options that mean the same.
STEERINGS = [
    ([], None),
    ([{"concept": "c"}], {}),
    ([{"concept": "c", "method": "swap"}], {"method": "swap"}),
    ([{"vector": "c"}], {"method": "vector"}),
    ([{"concept": "c", "strength": 8, "positions": "generated"}], {"strength": 8.0,
                                                                  "positions": "generated"}),
    ([{"concept": "c", "method": "clamp", "positions": "prompt"}], {"method": "clamp",
                                                                   "positions": "prompt"}),
]  # fmt: skip


def reference(model, sae, artifact, ids, options, n):
    """SteeredModel.generate (or the base model's) on one unpadded prompt."""
    prompt = torch.tensor([ids])
    kwargs = {"attention_mask": torch.ones_like(prompt), "max_new_tokens": n, "do_sample": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if options is None:
            out = model.generate(prompt, **kwargs)
        else:
            with SteeredModel(model, sae, scores=artifact, **options) as steered:
                out = steered.generate(prompt, **kwargs)
    return out[0, len(ids) :].tolist()


def run(decoder, rows, join_every):
    """Admit ``join_every`` rows per step while the others decode; until all are done."""
    waiting = list(rows)
    while waiting or decoder.rows:
        if waiting:
            decoder.admit(waiting[:join_every])
            waiting = waiting[join_every:]
        decoder.release([r for r in decoder.rows if r.done])
        decoder.step()
        decoder.release([r for r in decoder.rows if r.done])


def check(model, sae, artifact, prompts, n, eos, pad, joins):
    library = ConceptLibrary(model, [sae], {"c": artifact})
    cases = [(p, s) for p in prompts for s in STEERINGS]
    cases = cases[::2] + cases[1::2]  # neighbours in the batch steer differently
    expected = [reference(model, sae, artifact, p, s[1], n) for p, s in cases]
    assert len({tuple(e) for e in expected}) > len(prompts) + 2  # steering changes the tokens
    with BatchedSteering(model, library.sites) as batched:
        decoder = BatchDecoder(model, batched, eos_token_ids=frozenset(eos), pad_token_id=pad)
        for join_every in (len(cases), joins, 1):
            rows = [
                Row(GenerationRequest(p, n, GREEDY, library.resolve(parse_steering(s[0]))))
                for p, s in cases
            ]
            run(decoder, rows, join_every)
            assert decoder.joinable is True
            for row, want, case in zip(rows, expected, cases, strict=True):
                assert row.generated == want, (join_every, case)


def test_demo_requests_equal_steered_model_alone_and_in_changing_batches():
    model, tokenizer = load_model(str(DEMO / "model"))
    sae, artifact = load_sae(str(DEMO / "sae")), load_scores(DEMO / "scores")
    texts = ["The children went", "A doctor", "She opened the door and looked at the old",
             "In the spring the farmers"]  # fmt: skip
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    check(model, sae, artifact, prompts, 12, {0}, 0, joins=5)


def test_llama_requests_equal_steered_model_alone_and_in_changing_batches():
    """RoPE positions: each row's position ids come from its own length, not the padding."""
    torch.manual_seed(0)
    model = hf("LlamaConfig", "LlamaForCausalLM", 2)().eval()
    sae = tiny_sae(layer=1, site="resid_post")
    artifact = FeatureScores(
        scores=random_scores(), coverage=0.5, layer=1, site="resid_post",
        stats={"delta_raw": vector(), "latents": torch.tensor([3, 7]),
               "weights": torch.tensor([2.0, -1.0])},
        recommended={"method": "add", "strength": 3.0, "preserve_error": True},
        calibration={"mean_norm": 5.0, "mean_norm_raw": 6.0},
    )  # fmt: skip
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (3, 9, 1, 14)]
    check(model, sae, artifact, prompts, 10, {2}, 0, joins=3)


def test_a_row_that_breaks_down_fails_alone(gpt2, tokenizer):
    site = Site(1, "resid_post")
    broken = ResolvedSteering((), (SiteEdit(site, lambda x: x * float("inf")),), ())
    prompts = [tokenizer(t)["input_ids"] for t in ("The patient", "A doctor examined the")]
    with BatchedSteering(gpt2, [site]) as batched:
        decoder = BatchDecoder(gpt2, batched, eos_token_ids=frozenset(), pad_token_id=0)
        rows = [Row(GenerationRequest(prompts[0], 4, GREEDY, broken)),
                Row(GenerationRequest(prompts[1], 4, GREEDY))]  # fmt: skip
        run(decoder, rows, 2)
    assert rows[0].done == "error" and rows[0].error == NONFINITE and rows[0].generated == []
    assert rows[1].done == "length"
    assert rows[1].generated == reference(gpt2, None, None, prompts[1], None, 4)


def test_sampling_is_seeded_per_request(gpt2, tokenizer):
    sae = tiny_sae(layer=1, site="resid_post")
    library = ConceptLibrary(gpt2, [sae], {})
    ids = tokenizer("The patient")["input_ids"]
    outs = []
    with BatchedSteering(gpt2, library.sites) as batched:
        decoder = BatchDecoder(gpt2, batched, eos_token_ids=frozenset(), pad_token_id=0)
        for seed in (1, 1, 2):
            rows = [Row(GenerationRequest(ids, 12, Sampling(temperature=1.0, top_p=0.9,
                                                            seed=seed)))]  # fmt: skip
            run(decoder, rows, 1)
            outs.append(rows[0].generated)
    assert outs[0] == outs[1] and outs[0] != outs[2]


@pytest.mark.parametrize("max_tokens", [1, 3])
def test_max_tokens_and_ignore_eos(gpt2, tokenizer, max_tokens):
    library = ConceptLibrary(gpt2, [tiny_sae(layer=1, site="resid_post")], {})
    ids = tokenizer("The river")["input_ids"]
    with BatchedSteering(gpt2, library.sites) as batched:
        first = int(gpt2(torch.tensor([ids])).logits[0, -1].argmax())
        decoder = BatchDecoder(gpt2, batched, eos_token_ids=frozenset({first}), pad_token_id=0)
        stops = Row(GenerationRequest(ids, max_tokens, GREEDY))
        goes_on = Row(GenerationRequest(ids, max_tokens, GREEDY, ignore_eos=True))
        run(decoder, [stops, goes_on], 2)
    assert stops.generated == [first] and stops.done == "stop"
    assert len(goes_on.generated) == max_tokens and goes_on.done in ("length", "stop")
    assert goes_on.done == "length"


def _reference_logprobs(model, sae, artifact, ids, options, n):
    """SteeredModel's own log-softmax: of its forward pass over the prompt (what each prompt
    token got) and of the raw logits ``generate`` saw at each new token, with the tokens."""
    prompt = torch.tensor([ids])
    kwargs = {"attention_mask": torch.ones_like(prompt), "max_new_tokens": n, "do_sample": False,
              "output_logits": True, "return_dict_in_generate": True}  # fmt: skip
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if options is None:
            scored, out = model(prompt).logits, model.generate(prompt, **kwargs)
        else:
            with SteeredModel(model, sae, scores=artifact, **options) as steered:
                scored = steered(prompt).logits
            with SteeredModel(model, sae, scores=artifact, **options) as steered:
                out = steered.generate(prompt, **kwargs)
    prompt_lp = scored[0].float().log_softmax(-1)
    generated = torch.cat(out.logits).float().log_softmax(-1)
    return prompt_lp, generated, out.sequences[0, len(ids) :].tolist()


def test_logprobs_are_the_steered_models_log_softmax_alone_and_in_batches():
    """Prompt and generated tokens' logprobs (and the top alternatives) of rows that join a
    running batch at every step equal SteeredModel's own forward pass and generate logits."""
    model, tokenizer = load_model(str(DEMO / "model"))
    sae, artifact = load_sae(str(DEMO / "sae")), load_scores(DEMO / "scores")
    library = ConceptLibrary(model, [sae], {"c": artifact})
    texts = ["The children went", "A doctor", "She opened the door and looked at the old"]
    cases = [(tokenizer(t)["input_ids"], s) for t in texts for s in STEERINGS]
    n, k = 6, 3
    expected = [_reference_logprobs(model, sae, artifact, p, s[1], n) for p, s in cases]
    with BatchedSteering(model, library.sites) as batched:
        decoder = BatchDecoder(model, batched, eos_token_ids=frozenset({0}), pad_token_id=0)
        for join_every in (len(cases), 4, 1):
            rows = [
                Row(GenerationRequest(p, n, GREEDY, library.resolve(parse_steering(s[0])),
                                      logprobs=k, prompt_logprobs=k if i % 2 else None))
                for i, (p, s) in enumerate(cases)
            ]  # fmt: skip
            run(decoder, rows, join_every)
            for i, (row, (prompt_lp, gen_lp, tokens)) in enumerate(zip(rows, expected,
                                                                      strict=True)):  # fmt: skip
                assert row.generated == tokens[: len(row.generated)] and row.done
                assert [e.token for e in row.logprobs] == row.generated
                for e, lp in zip(row.logprobs, gen_lp, strict=False):
                    assert e.logprob == pytest.approx(float(lp[e.token]), abs=1e-4)
                    top = lp.topk(k)
                    assert [t for t, _ in e.top] == top.indices.tolist()
                    assert [v for _, v in e.top] == pytest.approx(top.values.tolist(), abs=1e-4)
                if i % 2 == 0:
                    assert row.prompt_logprobs is None
                    continue
                ids = cases[i][0]
                assert row.prompt_logprobs[0] is None and len(row.prompt_logprobs) == len(ids)
                for j, e in enumerate(row.prompt_logprobs[1:], start=1):
                    assert e.token == ids[j]
                    assert e.logprob == pytest.approx(float(prompt_lp[j - 1, ids[j]]), abs=1e-4)


def test_max_tokens_0_scores_the_prompt_and_generates_nothing(gpt2, tokenizer):
    library = ConceptLibrary(gpt2, [tiny_sae(layer=1, site="resid_post")], {})
    ids = tokenizer("The river flows")["input_ids"]
    with torch.no_grad():
        want = gpt2(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    with BatchedSteering(gpt2, library.sites) as batched:
        decoder = BatchDecoder(gpt2, batched, eos_token_ids=frozenset(), pad_token_id=0)
        scored = Row(GenerationRequest(ids, 0, GREEDY, prompt_logprobs=0))
        other = Row(GenerationRequest(ids, 2, GREEDY))
        run(decoder, [scored, other], 2)
    assert scored.done == "length" and scored.generated == [] and scored.logprobs == []
    assert [e.logprob for e in scored.prompt_logprobs[1:]] == pytest.approx(
        [float(want[j - 1, ids[j]]) for j in range(1, len(ids))], abs=1e-5
    )
    assert len(other.generated) == 2 and other.prompt_logprobs is None


def test_sampling_values_that_overflow_decode_as_greedy_and_hurt_no_other_row(gpt2, tokenizer):
    """The issue's reproducer at the decoder: temperature 1e-40 (logits / T overflow to inf,
    softmax NaN) and top_p 1e-300 (0 in float32: every token dropped) beside greedy rows. Both
    limits are greedy decoding: the rows get the argmax tokens, the others their own."""
    library = ConceptLibrary(gpt2, [tiny_sae(layer=1, site="resid_post")], {})
    prompts = [tokenizer(t)["input_ids"] for t in ("The patient", "A doctor examined the",
                                                    "The river flows")]  # fmt: skip
    greedy = [reference(gpt2, None, None, p, None, 6) for p in prompts]
    tiny_t = Row(GenerationRequest(prompts[0], 6, Sampling(temperature=1e-40, seed=1)))
    tiny_p = Row(GenerationRequest(prompts[1], 6, Sampling(temperature=1.0, top_p=1e-300)))
    innocent = Row(GenerationRequest(prompts[2], 6, GREEDY))
    with BatchedSteering(gpt2, library.sites) as batched:
        decoder = BatchDecoder(gpt2, batched, eos_token_ids=frozenset(), pad_token_id=0)
        run(decoder, [tiny_t, innocent, tiny_p], 3)
    for row, want in zip((tiny_t, tiny_p, innocent), (greedy[0], greedy[1], greedy[2]),
                         strict=True):  # fmt: skip
        assert (row.done, row.error, row.generated) == ("length", None, want)


def test_logits_that_are_nan_fail_only_their_row():
    """A NaN logit (a broken model output, not a steering) ends that row with an error; the
    sampler of the other rows never sees it."""
    logits = torch.tensor([[0.5, float("nan"), 0.1], [0.2, 3.0, float("inf")], [0.0, 1.0, 2.0]])
    rows = [Row(GenerationRequest([1], 4, Sampling(temperature=0.7, seed=3))) for _ in range(3)]
    rows[2] = Row(GenerationRequest([1], 4, GREEDY))
    for row in rows:
        row.chooser = TokenChooser(row.request, frozenset())
    sample_rows(rows, logits, bad=set(), eos=frozenset())
    assert rows[0].done == "error" and "NaN" in rows[0].error and rows[0].generated == []
    assert rows[1].generated == [2] and rows[2].generated == [2]  # +inf: that token, surely


class PoisonAt:
    """A real fault in a real forward pass: raise when a position at or past ``position`` is
    fed (only the longest row ever gets there), or when ``token`` is in the input."""

    def __init__(self, model, position=None, token=None):
        self.position, self.token = position, token
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids, positions = kwargs["input_ids"], kwargs.get("position_ids")
        if self.token is not None and bool((ids == self.token).any()):
            raise ValueError("poisoned token")
        if self.position is not None and int(positions.max()) >= self.position:
            raise ValueError("poisoned position")


@pytest.mark.parametrize("where", ["prefill", "step"])
def test_a_forward_pass_that_raises_fails_only_the_row_that_caused_it(gpt2, tokenizer, where):
    """Bisection: the batch is retried in halves until the one row that raises is alone; it
    ends with an error, every other row decodes exactly what it decodes alone (KV cache
    restored after the failed pass)."""
    library = ConceptLibrary(gpt2, [tiny_sae(layer=1, site="resid_post")], {})
    texts = ("The patient", "A doctor", "The river flows", "Engineers built",
             "A farmer planted wheat and barley in the spring and")  # fmt: skip
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    poison_len = len(prompts[-1])
    assert poison_len >= max(len(p) for p in prompts[:-1]) + 6
    innocent = [reference(gpt2, None, None, p, None, 5) for p in prompts[:-1]]
    if where == "prefill":
        poison = PoisonAt(gpt2, token=prompts[-1][-1])
        assert all(prompts[-1][-1] not in p + g for p, g in zip(prompts, innocent, strict=False))
    else:
        poison = PoisonAt(gpt2, position=poison_len + 2)  # its third step: 3 tokens made
    try:
        with BatchedSteering(gpt2, library.sites) as batched:
            decoder = BatchDecoder(gpt2, batched, eos_token_ids=frozenset(), pad_token_id=0)
            rows = [Row(GenerationRequest(p, 5, GREEDY)) for p in prompts]
            order = [rows[4], rows[0], rows[1], rows[2], rows[3]]
            run(decoder, order, 5)
            assert decoder.rows == []
            # the decoder goes on serving: a new batch, the poison gone
            poison.handle.remove()
            again = [Row(GenerationRequest(p, 5, GREEDY)) for p in prompts[:2]]
            run(decoder, again, 2)
    finally:
        poison.handle.remove()
    bad = rows[4]
    assert bad.done == "error" and "poisoned" in bad.error and bad.status == 500
    assert len(bad.generated) == (0 if where == "prefill" else 3)
    for row, want in zip(rows[:4], innocent, strict=True):
        assert (row.done, row.generated) == ("length", want)
    assert [r.generated for r in again] == innocent[:2]
