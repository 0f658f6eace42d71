"""The topic's words, marked in generated text: in a terminal (ANSI bold colour on a tty,
``[brackets]`` otherwise) and in HTML (``<mark>``).

"The topic's words" are the whole-word tokens the steering raises most
(:meth:`~hf_sae_steer.steering.effect.SteeringEffect.topic_token_ids`: the top of its
next-token effect among tokens that start a word and hold three letters or more; suffixes such
as ``osis`` rank high too but read as nothing alone). Tokens are matched by id, not by spelling,
so a mark says exactly "the model produced a token the steering favours"; the mark covers the
whole word the token starts (`` herb`` + ``s`` reads as ``[herbs]``).
"""

from __future__ import annotations

import html
import os
import sys
from collections.abc import Collection, Sequence
from typing import Any, Literal

Style = Literal["ansi", "brackets", "html"]
ANSI_ON, ANSI_OFF = "\x1b[1;35m", "\x1b[0m"  # bold magenta


def terminal_style() -> Style:
    """ANSI colour when stdout is a terminal (and NO_COLOR is not set), else [brackets]."""
    return "ansi" if sys.stdout.isatty() and not os.environ.get("NO_COLOR") else "brackets"


def token_spans(tokenizer: Any, token_ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text of ``token_ids`` (special tokens skipped, as continuations are) and
    each token's ``(start, end)`` in it; ``(k, k)`` for a token whose text cannot be placed
    (a byte that only makes a character together with the next token; every token when the
    text does not decode piece by piece)."""
    spans: list[tuple[int, int]] = []
    before = ""
    for i in range(len(token_ids)):
        text = tokenizer.decode(list(token_ids[: i + 1]), skip_special_tokens=True)
        if text.startswith(before) and "\ufffd" not in text[len(before) :]:
            spans.append((len(before), len(text)))
            before = text
        else:
            spans.append((len(before), len(before)))
            if not text.endswith("\ufffd"):
                before = text
    whole = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    if whole != before:  # decoding is not piecewise here (clean-up of spaces): mark nothing
        return whole, [(0, 0)] * len(spans)
    return whole, spans


def topic_spans(
    tokenizer: Any, token_ids: Sequence[int], topic_ids: Collection[int]
) -> tuple[str, list[tuple[int, int]]]:
    """The text of ``token_ids`` and the spans of its words that hold a token of
    ``topic_ids`` (each widened to its whole word, overlaps merged)."""
    text, spans = token_spans(tokenizer, token_ids)
    found: list[tuple[int, int]] = []
    for token, (start, end) in zip(token_ids, spans, strict=True):
        if token not in topic_ids or start >= end or end > len(text):
            continue
        while start < end and not text[start].isalnum():  # the space that starts a word
            start += 1
        while start > 0 and text[start - 1].isalnum():
            start -= 1
        while end < len(text) and text[end].isalnum():
            end += 1
        if start < end:
            found.append((start, end))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(found):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return text, merged


def marked(text: str, spans: Sequence[tuple[int, int]], style: Style) -> str:
    """``text`` with ``spans`` marked; newlines and tabs shown as ``\\n``/``\\t`` (one line per
    continuation), and in HTML everything escaped."""
    escape = html.escape if style == "html" else _one_line
    on, off = {"ansi": (ANSI_ON, ANSI_OFF), "brackets": ("[", "]"),
               "html": ("<mark>", "</mark>")}[style]  # fmt: skip
    out, at = [], 0
    for start, end in spans:
        out += [escape(text[at:start]), on, escape(text[start:end]), off]
        at = end
    out.append(escape(text[at:]))
    return "".join(out)


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
