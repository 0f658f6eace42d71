"""generation.py: seeded continuations, with repetition control passed to ``generate``."""

from __future__ import annotations

import pytest
import torch

from hf_sae_steer.generation import continue_prompts, sampling_options

PROMPTS = ["The patient was", "A river"]


def plain(model, tokenizer, prompt: str, **options) -> str:
    """One prompt alone, straight through ``model.generate``."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                         do_sample=False, pad_token_id=0, **options)  # fmt: skip
    new = out[0, ids.shape[1] :].tolist()
    new = new[: new.index(0)] if 0 in new else new
    return tokenizer.decode(new, skip_special_tokens=True)


def test_repetition_control_reaches_generate(gpt2, tokenizer):
    options = {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2}
    got = continue_prompts(gpt2, tokenizer, PROMPTS, max_new_tokens=16, **options)
    assert got == [plain(gpt2, tokenizer, p, **options) for p in PROMPTS]
    loose = continue_prompts(gpt2, tokenizer, PROMPTS, max_new_tokens=16)
    assert loose == [plain(gpt2, tokenizer, p) for p in PROMPTS]
    assert got != loose  # a random tiny model repeats itself; the control changes that


def test_sampling_options_leave_out_what_is_off():
    assert sampling_options() == {"max_new_tokens": 32, "do_sample": False}
    on = sampling_options(repetition_penalty=1.3, no_repeat_ngram_size=3)
    assert on["repetition_penalty"] == 1.3 and on["no_repeat_ngram_size"] == 3


@pytest.mark.parametrize(
    "options, message",
    [
        ({"repetition_penalty": 0.0}, "repetition_penalty must be a positive number"),
        ({"repetition_penalty": float("nan")}, "repetition_penalty must be a positive number"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size must be a whole number"),
        ({"no_repeat_ngram_size": 2.5}, "no_repeat_ngram_size must be a whole number"),
    ],
)
def test_bad_repetition_options(options, message):
    with pytest.raises(ValueError, match=message):
        sampling_options(**options)
