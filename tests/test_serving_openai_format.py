"""The text of a token stream: deltas add up to the whole decode, never split a character,
and stop at the first stop string without ever releasing it."""

from __future__ import annotations

import pytest

from hf_sae_steer.serving.openai_format import TextStream

TEXT = "The patient had a fever — 熱 — and the doctor said: stop here. Then more."


def _pushed(tokenizer, text, stop=(), step=1):
    ids = tokenizer(text)["input_ids"]
    stream = TextStream(tokenizer, stop)
    deltas = [stream.push(ids[i : i + step]) for i in range(0, len(ids), step)]
    deltas.append(stream.finish())
    return stream, deltas


@pytest.mark.parametrize("step", [1, 3])
def test_deltas_add_up_to_the_whole_decode(tokenizer, step):
    stream, deltas = _pushed(tokenizer, TEXT, step=step)
    assert "".join(deltas) == tokenizer.decode(tokenizer(TEXT)["input_ids"]) == TEXT
    assert not any("\ufffd" in d for d in deltas)  # multi-byte characters arrive whole
    assert stream.whole_text() == TEXT and not stream.stopped


@pytest.mark.parametrize("stop", [("stop here",), ("zzz", "said:"), ("熱",)])
def test_text_ends_before_the_first_stop_string(tokenizer, stop):
    stream, deltas = _pushed(tokenizer, TEXT, stop)
    cut = min(TEXT.find(s) for s in stop if s in TEXT)
    assert stream.stopped and "".join(deltas) == TEXT[:cut] == stream.whole_text()
    assert all(s not in "".join(deltas) for s in stop)


def test_text_that_may_begin_a_stop_string_is_held_back(tokenizer):
    stream = TextStream(tokenizer, ("fever!",))
    released = "".join(stream.push([t]) for t in tokenizer("a fever")["input_ids"])
    assert released == "a "  # "fever" could still become "fever!"
    assert stream.push(tokenizer(" x")["input_ids"]) == "fever x"
    assert stream.finish() == "" and not stream.stopped


def test_logprobs_shapes_and_their_floor(tokenizer):
    """Completion logprobs list the token first, then the alternatives; -inf (not JSON)
    becomes vLLM's -9999; the first prompt token has no score."""
    import json
    import math

    from hf_sae_steer.serving.engine import TokenLogprob
    from hf_sae_steer.serving.openai_format import TokenTexts, chat_logprobs, completion_logprobs

    ids = tokenizer("The patient had")["input_ids"]
    texts = TokenTexts(tokenizer)
    entries = [None, TokenLogprob(ids[1], -math.inf, ((ids[0], -0.5), (ids[1], -math.inf)))]
    entries += [TokenLogprob(t, -1.0, ()) for t in ids[2:]]
    out = completion_logprobs(texts, ids, entries, 5)
    json.dumps(out, allow_nan=False)
    assert out["token_logprobs"][:2] == [None, -9999.0] and out["top_logprobs"][0] is None
    assert list(out["top_logprobs"][1].items()) == [(texts(ids[1]), -9999.0),
                                                    (texts(ids[0]), -0.5)]  # fmt: skip
    assert out["text_offset"][0] == 5 and "".join(out["tokens"]) == "The patient had"
    chat = chat_logprobs(texts, entries[1:])
    assert chat["content"][0]["top_logprobs"][1]["logprob"] == -9999.0
    json.dumps(chat, allow_nan=False)


def test_a_choice_counts_tokens_up_to_the_one_that_completed_the_stop_string(tokenizer):
    """Tokens the engine made after it (before the cancellation reached it) are neither
    counted nor scored; a stop token id is counted, its text left out."""
    from hf_sae_steer.serving.choices import Choice
    from hf_sae_steer.serving.engine import Finished, TokenLogprob, Tokens
    from hf_sae_steer.serving.openai_format import TokenTexts
    from hf_sae_steer.serving.requests import parse_completion

    ids = tokenizer("The patient had a fever and a cough")["input_ids"]
    texts = TokenTexts(tokenizer)
    cut = next(i for i, t in enumerate(ids) if texts(t) == " fever")
    parsed = parse_completion({"prompt": "x", "stop": ["fever"], "logprobs": 0})
    choice = Choice(0, parsed, texts, [1], "x")
    for t in ids:
        choice.add(Tokens((t,), (TokenLogprob(t, -1.0),)))
    choice.add(Finished("cancelled", 1, len(ids)))
    assert choice.ended and choice.completion_tokens == cut + 1 == len(choice.tokens)
    assert choice.body()["text"] == "The patient had a "
    assert len(choice.body()["logprobs"]["tokens"]) == cut + 1
    by_id = parse_completion({"prompt": "x", "stop_token_ids": [ids[2]]})
    choice = Choice(0, by_id, texts, [1], "x")
    choice.add(Tokens(tuple(ids)))
    choice.add(Finished("stop", 1, len(ids)))
    assert choice.completion_tokens == 3 and choice.body()["text"] == tokenizer.decode(ids[:2])
