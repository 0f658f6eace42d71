"""The topic's words marked in generated text (cli/highlight.py), on the real test tokenizer."""

from __future__ import annotations

import pytest

from hf_sae_steer.cli.highlight import ANSI_OFF, ANSI_ON, marked, token_spans, topic_spans


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_token_spans_cover_the_text_piece_by_piece(tokenizer):
    ids = ids_of(tokenizer, "The patient was treated for a fever.")
    text, spans = token_spans(tokenizer, ids)
    assert text == "The patient was treated for a fever."
    pieces = [tokenizer.decode([i]) for i in ids]
    assert [text[a:b] for a, b in spans] == pieces


def test_a_topic_token_marks_its_whole_word(tokenizer):
    text = "The patient was treated for a fever."
    ids = ids_of(tokenizer, text)
    pieces = [tokenizer.decode([i]) for i in ids]
    # the first piece of a word split in several (the test tokenizer splits rare words)
    split = next(j for j in range(len(ids) - 1)
                 if pieces[j].startswith(" ") and pieces[j + 1][:1].isalpha())  # fmt: skip
    word = (pieces[split] + pieces[split + 1]).strip()
    topic = {ids[split], ids_of(tokenizer, " fever")[0]}
    got, spans = topic_spans(tokenizer, ids, topic)
    marks = [got[a:b] for a, b in spans]
    assert word in text and marks[0].startswith(word)
    assert marks[0] in text.split() or marks[0] + "." in text.split()
    assert "fever" in marks
    assert topic_spans(tokenizer, ids, set()) == (text, [])


@pytest.mark.parametrize(
    "style, want",
    [
        ("brackets", "a [<b>] & [c]\\nd"),
        ("ansi", f"a {ANSI_ON}<b>{ANSI_OFF} & {ANSI_ON}c{ANSI_OFF}\\nd"),
        ("html", "a <mark>&lt;b&gt;</mark> &amp; <mark>c</mark>\nd"),
    ],
)
def test_marked_styles(style, want):
    text = "a <b> & c\nd"
    assert marked(text, [(2, 5), (8, 9)], style) == want


def test_terminal_style_colours_a_terminal_unless_no_color(monkeypatch):
    import io
    import sys

    from hf_sae_steer.cli.highlight import terminal_style

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert terminal_style() == "brackets"  # a pipe or a file
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert terminal_style() == "ansi"
    monkeypatch.setenv("NO_COLOR", "1")
    assert terminal_style() == "brackets"
