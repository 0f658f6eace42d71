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
