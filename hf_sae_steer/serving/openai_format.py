"""OpenAI's response shapes for completions and chats (whole and as stream chunks), and the text
of a token stream: incremental detokenization and stop strings. No HTTP here.

Every response and the first and last chunk of a stream carry ``steering``: per item, the
method, strength, positions, preserve_error, direction and site that were applied (``[]``: the
base model). Logprobs take OpenAI's two shapes: the completion one (``tokens``,
``token_logprobs``, ``top_logprobs``, ``text_offset``) and the chat one (``content``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from hf_sae_steer.serving.engine import Finished, TokenLogprob
from hf_sae_steer.serving.requests import ParsedRequest

REPLACEMENT = "\ufffd"  # an incomplete UTF-8 sequence decodes to this: wait for more tokens


class TextStream:
    """The text of generated tokens as it grows, cut at the first stop string.

    Tokens are decoded in a sliding window (the last decoded token and the new ones), so each
    step costs the same however long the text; a delta is released once it does not end in
    an incomplete character, and text that could begin a stop string is held back until it
    cannot. ``stopped`` is True once a stop string appeared (the text ends before it).
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.text = ""  # decoded so far (stop strings not yet cut)
        self.sent = 0  # characters of ``text`` already released
        self.stopped = False
        self._prefix = self._read = 0

    def push(self, ids: Sequence[int]) -> str:
        """Add tokens; return the text that may be released now."""
        if self.stopped:
            return ""
        self.ids += ids
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The rest of the text at the end of the stream."""
        if not self.stopped:
            tail = self._decode(self.ids[self._prefix :])
            before = self._decode(self.ids[self._prefix : self._read])
            self.text += tail[len(before) :]
            self._read = self._prefix = len(self.ids)
        return self._release(final=True)

    def whole_text(self) -> str:
        """All the text at the end, decoded in one piece (what ``tokenizer.decode`` gives for
        the generated ids), cut at the first stop string."""
        if self.stopped:
            return self.text
        text = self._decode(self.ids)
        cut = _first_stop(text, self.stop, 0)
        return text if cut is None else text[:cut]

    def _release(self, final: bool) -> str:
        if not self.stopped:
            cut = _first_stop(self.text, self.stop, max(0, self.sent - _longest(self.stop)))
            if cut is not None:
                self.text, self.stopped = self.text[:cut], True
        end = len(self.text)
        if not self.stopped and not final:
            end -= _held_back(self.text, self.stop)
        out = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True) if ids else ""


def _longest(stop: Sequence[str]) -> int:
    return max((len(s) for s in stop), default=0)


def _first_stop(text: str, stop: Sequence[str], start: int) -> int | None:
    hits = [i for s in stop if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


# -- logprobs ---------------------------------------------------------------------------
LOGPROB_FLOOR = -9999.0  # -inf is not JSON; vLLM reports this instead


class TokenTexts:
    """Each token's own text (``tokenizer.decode([id])``, special tokens included), cached."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        text = self._cache.get(token)
        if text is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            text = self._cache[token] = self.tokenizer.decode([token])
        return text


def _lp(value: float) -> float:
    return max(value, LOGPROB_FLOOR)


def completion_logprobs(
    texts: TokenTexts, tokens: Sequence[int], entries: Sequence[TokenLogprob | None],
    offset: int = 0,
) -> dict[str, list[Any]]:  # fmt: skip
    """OpenAI's completion ``logprobs``: per token its text, logprob, the most likely tokens
    (``{text: logprob}``, the token itself first, as vLLM lists them) and its offset in the
    returned text; ``None`` where a token has no logprob (the first prompt token)."""
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                 "text_offset": []}  # fmt: skip
    for token, entry in zip(tokens, entries, strict=True):
        text = texts(token)
        out["tokens"].append(text)
        out["text_offset"].append(offset)
        offset += len(text)
        if entry is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        out["token_logprobs"].append(_lp(entry.logprob))
        top = {text: _lp(entry.logprob)}
        for alt, value in entry.top:
            top.setdefault(texts(alt), _lp(value))
        out["top_logprobs"].append(top)
    return out


def chat_logprobs(texts: TokenTexts, entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's chat ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""

    def one(token: int, value: float) -> dict[str, Any]:
        text = texts(token)
        return {"token": text, "logprob": _lp(value), "bytes": list(text.encode())}

    return {
        "content": [
            {**one(e.token, e.logprob), "top_logprobs": [one(t, v) for t, v in e.top]}
            for e in entries
        ]
    }


# -- response bodies -----------------------------------------------------------------------
def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def finish_reason(done: Finished, stopped: bool) -> str:
    return "stop" if stopped or done.reason == "stop" else "length"


def choice(
    parsed: ParsedRequest, index: int, text: str, reason: str | None,
    logprobs: dict[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    """One choice of a whole response."""
    if parsed.kind == "chat":
        return {"index": index, "message": {"role": "assistant", "content": text},
                "finish_reason": reason, "logprobs": logprobs}  # fmt: skip
    return {"index": index, "text": text, "finish_reason": reason, "logprobs": logprobs}


def response(
    parsed: ParsedRequest, rid: str, model: str, choices: list[dict[str, Any]],
    usage_: dict[str, int], steering: Sequence[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    """The whole (non-streamed) response."""
    kind = "chat.completion" if parsed.kind == "chat" else "text_completion"
    return {
        "id": rid, "object": kind, "created": int(time.time()), "model": model,
        "choices": choices, "usage": usage_, "steering": list(steering),
    }  # fmt: skip


def chunk(
    parsed: ParsedRequest, rid: str, model: str, text: str | None, reason: str | None = None,
    steering: Sequence[dict[str, Any]] | None = None, first: bool = False, index: int = 0,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One stream chunk of choice ``index``: ``text`` new text (None: none), ``reason`` on its
    last one, ``logprobs`` of the tokens it carries."""
    if parsed.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        choice_: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": reason,
                                   "logprobs": logprobs}  # fmt: skip
        kind = "chat.completion.chunk"
    else:
        choice_ = {"index": index, "text": text or "", "finish_reason": reason,
                   "logprobs": logprobs}  # fmt: skip
        kind = "text_completion"
    body = {"id": rid, "object": kind, "created": int(time.time()), "model": model,
            "choices": [choice_]}  # fmt: skip
    if steering is not None:
        body["steering"] = list(steering)
    return body


def usage_chunk(
    parsed: ParsedRequest, rid: str, model: str, usage_: dict[str, int]
) -> dict[str, Any]:
    """The last chunk with ``stream_options={"include_usage": true}``: no choices, the usage."""
    kind = "chat.completion.chunk" if parsed.kind == "chat" else "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model,
            "choices": [], "usage": usage_}  # fmt: skip
