"""The choices of one response, built from their engines' token streams: each choice's text
(stop strings cut), its tokens and their logprobs up to where the text ends, and its usage.

A stop string ends a choice at the token whose text completed it: that token is the last one
counted in ``completion_tokens`` and the last one with logprobs, whatever the engine generated
after it before the cancellation reached it. A token of ``stop_token_ids`` ends it too and is
counted, but its text is not returned (vLLM's rule). With ``echo`` the prompt (and, with
``logprobs``, its scores, the first ``None``) comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from hf_sae_steer.serving import openai_format as fmt
from hf_sae_steer.serving.engine import (
    Finished,
    PromptLogprobs,
    StreamEvent,
    TokenLogprob,
    Tokens,
    TokenStream,
)
from hf_sae_steer.serving.prepare import Prepared
from hf_sae_steer.serving.requests import ParsedRequest


class Choice:
    """One choice as its stream's events arrive (module docstring)."""

    def __init__(
        self, index: int, parsed: ParsedRequest, texts: fmt.TokenTexts,
        prompt_ids: Sequence[int], prompt_text: str,
    ) -> None:  # fmt: skip
        self.index, self.parsed, self.texts = index, parsed, texts
        self.prompt_ids, self.prompt_text = list(prompt_ids), prompt_text
        self.text = fmt.TextStream(texts.tokenizer, parsed.stop)
        self.tokens: list[int] = []  # every token kept (up to the one that ended the text)
        self.entries: list[TokenLogprob] = []
        self.prompt_entries: tuple[TokenLogprob | None, ...] | None = None
        self.done: Finished | None = None
        self.ended = False  # a stop string or a stop token ended the text
        self._streamed = 0  # tokens whose logprobs went out in a chunk
        self._offset = 0  # text_offset of the next streamed token

    def add(self, event: StreamEvent) -> str:
        """Take one event; return the text it releases."""
        if isinstance(event, Finished):
            self.done = event
            return "" if self.ended else self.text.finish()
        if isinstance(event, PromptLogprobs):
            self.prompt_entries = event.entries
            return ""
        assert isinstance(event, Tokens)
        delta = []
        stops = self.parsed.sampling.stop_token_ids
        for i, token in enumerate(event.ids):
            if self.ended:
                break
            self.tokens.append(token)
            if event.logprobs is not None:
                self.entries.append(event.logprobs[i])
            if token in stops:
                self.ended = True
                delta.append(self.text.finish())
            else:
                delta.append(self.text.push([token]))
                self.ended = self.text.stopped
        return "".join(delta)

    @property
    def completion_tokens(self) -> int:
        if self.ended or self.done is None:
            return len(self.tokens)
        return self.done.completion_tokens

    @property
    def finish_reason(self) -> str:
        assert self.done is not None
        return fmt.finish_reason(self.done, self.ended)

    # -- whole responses ------------------------------------------------------------------
    def body(self) -> dict[str, Any]:
        """This choice in a whole response."""
        text = self.text.whole_text()
        if self.parsed.echo:
            text = self.prompt_text + text
        return fmt.choice(self.parsed, self.index, text, self.finish_reason,
                          self._logprobs(whole=True))  # fmt: skip

    # -- streams ---------------------------------------------------------------------------
    def first_chunk_text(self) -> str | None:
        """What the first chunk carries: the echoed prompt when it has no scores to wait for."""
        if self.parsed.echo and self.parsed.logprobs is None:
            return self.prompt_text
        return None

    def prompt_chunk(self) -> tuple[str, dict[str, Any]] | None:
        """The echoed prompt and its logprobs, once they arrived (echo with logprobs)."""
        if not self.parsed.echo or self.prompt_entries is None:
            return None
        entries = self.prompt_entries
        self.prompt_entries = None  # sent once
        logprobs = fmt.completion_logprobs(self.texts, self.prompt_ids, entries, 0)
        self._offset = sum(len(t) for t in logprobs["tokens"])
        return self.prompt_text, logprobs

    def chunk_logprobs(self) -> dict[str, Any] | None:
        """Logprobs of the tokens that arrived since the last call (``None``: not asked, or
        no new token)."""
        if self._streamed == len(self.tokens):
            return None
        return self._logprobs(whole=False)

    def _logprobs(self, whole: bool) -> dict[str, Any] | None:
        parsed = self.parsed
        if parsed.logprobs is None:
            return None
        start = 0 if whole else self._streamed
        tokens, entries = self.tokens[start:], self.entries[start:]
        self._streamed = len(self.tokens)
        if parsed.kind == "chat":
            return fmt.chat_logprobs(self.texts, entries)
        offset = 0 if whole else self._offset
        if whole and parsed.echo and self.prompt_entries is not None:
            tokens = [*self.prompt_ids, *tokens]
            entries = [*self.prompt_entries, *entries]  # type: ignore[list-item]
        out = fmt.completion_logprobs(self.texts, tokens, entries, offset)
        if not whole:
            self._offset += sum(len(t) for t in out["tokens"])
        return out


def choices_for(parsed: ParsedRequest, ready: Prepared, tokenizer: Any) -> list[Choice]:
    """One :class:`Choice` per job of ``ready``, in order."""
    texts = fmt.TokenTexts(tokenizer)
    return [
        Choice(i, parsed, texts, ready.prompt_ids[i // ready.n], ready.prompt_texts[i // ready.n])
        for i in range(len(ready.jobs))
    ]


def usage(prompt_ids: Sequence[Sequence[int]], choices: Sequence[Choice]) -> dict[str, int]:
    """Each prompt counted once (however many samples), every choice's tokens."""
    return fmt.usage(sum(len(p) for p in prompt_ids), sum(c.completion_tokens for c in choices))


async def merged(streams: Sequence[TokenStream]) -> AsyncIterator[tuple[int, StreamEvent]]:
    """Every stream's events as ``(stream index, event)``, each stream's in order. Closing
    this iterator stops reading (the caller cancels the streams)."""
    if len(streams) == 1:  # the common case: no tasks
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, StreamEvent | None]] = asyncio.Queue()

    async def pump(i: int, stream: TokenStream) -> None:
        try:
            async for event in stream:
                queue.put_nowait((i, event))
        finally:
            queue.put_nowait((i, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(tasks)
        while left:
            i, event = await queue.get()
            if event is None:
                left -= 1
            else:
                yield i, event
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
