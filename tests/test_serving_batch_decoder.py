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
from hf_sae_steer.scoring.record import FeatureScores, load_scores
from hf_sae_steer.serving.batch_decoder import NONFINITE, BatchDecoder, Row
from hf_sae_steer.serving.concepts import ConceptLibrary, ResolvedSteering
from hf_sae_steer.serving.engine import GenerationRequest
from hf_sae_steer.serving.sampling import Sampling
from hf_sae_steer.serving.steering_items import parse_steering
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
