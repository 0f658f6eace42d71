"""Long prompts in bounded memory: tokenized a piece of text at a time and cut into windows as
the tokens come, so a prompt of any length (one 100 MB line of a reference file) costs memory
in proportion to a piece and a window, not to the prompt (``docs/method.md`` §3).

A prompt longer than :data:`PIECE_CHARS` characters is cut into pieces of at most that many
characters, each cut just before a space that follows a non-space character (a piece without
such a space is cut at its size). Each piece is tokenized without special tokens, preceded by
the last word before the cut, whose tokens are then dropped (so a tokenizer that marks the start
of a text, as SentencePiece's prefix space does, sees the piece as it sees it in the whole
prompt); the tokenizer's special tokens (a BOS) are added once, around the whole. For the
tokenizers of causal LMs (byte-level BPE: GPT-2, Llama 3, Qwen, Mistral; SentencePiece: Llama
2, Gemma) the tokens are exactly those of the whole prompt, tokenized at once. Only a cut inside
a word (a piece with no space in it) can tokenize differently, at that cut.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

PIECE_CHARS = 1 << 15  # characters tokenized at a time: a few MB of tokenizer memory
ANCHOR_CHARS = 64  # at most this much of the word before a cut is tokenized again


def needs_pieces(text: str) -> bool:
    """Whether ``text`` is longer than a piece (:data:`PIECE_CHARS`)."""
    return len(text) > PIECE_CHARS


def special_ids(tokenizer: Any) -> tuple[list[int], list[int]] | None:
    """The special tokens the tokenizer adds before and after a text (``([bos], [])``), or None
    when they do not simply surround it."""
    full = _encode(tokenizer, "a", specials=True)
    bare = _encode(tokenizer, "a", specials=False)
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    return None


def text_pieces(text: str, size: int | None = None) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive pieces of ``text``, each at most ``size`` characters
    (default :data:`PIECE_CHARS`), cut just before a space that follows a non-space character
    where there is one."""
    size = size or PIECE_CHARS
    start = 0
    while start < len(text):
        stop = min(start + size, len(text))
        if stop < len(text):
            space = text.rfind(" ", start + 1, stop + 1)
            if space > start:
                kept = len(text[start:space].rstrip())  # back over the whitespace before it
                stop = start + kept if kept else stop
        yield start, stop
        start = stop


def content_ids(tokenizer: Any, text: str, budget: int | None = None) -> Iterator[list[int]]:
    """The token ids of ``text`` without special tokens, a piece at a time; at most ``budget``
    of them when given."""
    left = budget
    for start, stop in text_pieces(text):
        if left is not None and left <= 0:
            return
        piece = text[start:stop]
        if start == 0:
            ids = _encode(tokenizer, piece, specials=False)
        else:
            words = text[max(start - ANCHOR_CHARS, 0) : start].split()
            anchor = words[-1] if words else ""
            head = _encode(tokenizer, anchor, specials=False) if anchor else []
            ids = _encode(tokenizer, anchor + piece, specials=False)
            if ids[: len(head)] == head:
                ids = ids[len(head) :]
            else:  # the word and the piece merged into other tokens: the piece alone
                ids = _encode(tokenizer, piece, specials=False)
        if left is not None:
            ids, left = ids[:left], left - len(ids)
        yield ids


def prompt_windows(
    tokenizer: Any, text: str, size: int, specials: tuple[list[int], list[int]],
    limit: int | None = None,
) -> Iterator[list[int]]:  # fmt: skip
    """The windows of ``size`` tokens of ``text`` (specials included, as the tokenizer adds
    them), truncated to ``limit`` tokens as ``tokenizer(text, truncation=True,
    max_length=limit)`` truncates: the content, keeping the specials."""
    before, after = specials
    budget = None if limit is None else max(limit - len(before) - len(after), 0)
    buffer: list[int] = list(before)
    for ids in content_ids(tokenizer, text, budget):
        buffer.extend(ids)
        used = 0
        while len(buffer) - used >= size:
            yield buffer[used : used + size]
            used += size
        del buffer[:used]
    buffer.extend(after)
    for used in range(0, len(buffer), size):
        yield buffer[used : used + size]


def _encode(tokenizer: Any, text: str, specials: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=specials, verbose=False)["input_ids"])
