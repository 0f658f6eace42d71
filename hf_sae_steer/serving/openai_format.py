"""OpenAI's response shapes for completions and chats (whole and as stream chunks), and the text
of a token stream: incremental detokenization and stop strings. No HTTP here.

Every response and the first and last chunk of a stream carry ``steering``: per item, the
method, strength, positions, preserve_error and site that were applied (``[]``: the base model).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from hf_sae_steer.serving.engine import Finished
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


# -- response bodies -----------------------------------------------------------------------
def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def usage(done: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def finish_reason(done: Finished, stopped: bool) -> str:
    return "stop" if stopped or done.reason == "stop" else "length"


def response(
    parsed: ParsedRequest, rid: str, model: str, text: str, reason: str, done: Finished,
    steering: Sequence[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    """The whole (non-streamed) response."""
    if parsed.kind == "chat":
        choice: dict[str, Any] = {
            "index": 0, "message": {"role": "assistant", "content": text},
            "finish_reason": reason, "logprobs": None,
        }  # fmt: skip
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
        kind = "text_completion"
    return {
        "id": rid, "object": kind, "created": int(time.time()), "model": model,
        "choices": [choice], "usage": usage(done), "steering": list(steering),
    }  # fmt: skip


def chunk(
    parsed: ParsedRequest, rid: str, model: str, text: str | None, reason: str | None = None,
    steering: Sequence[dict[str, Any]] | None = None, first: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One stream chunk: ``text`` new text (None: none), ``reason`` on the last one."""
    if parsed.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason,
                                  "logprobs": None}  # fmt: skip
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
        kind = "text_completion"
    body = {"id": rid, "object": kind, "created": int(time.time()), "model": model,
            "choices": [choice]}  # fmt: skip
    if steering is not None:
        body["steering"] = list(steering)
    return body


def usage_chunk(parsed: ParsedRequest, rid: str, model: str, done: Finished) -> dict[str, Any]:
    """The last chunk with ``stream_options={"include_usage": true}``: no choices, the usage."""
    kind = "chat.completion.chunk" if parsed.kind == "chat" else "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model,
            "choices": [], "usage": usage(done)}  # fmt: skip
