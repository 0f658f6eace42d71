"""From a validated request to what an engine generates: the chat prompt, the token ids, the
token budget and the resolved steering. No HTTP here; every problem is a
:class:`~hf_sae_steer.serving.errors.RequestError`.

**Chat prompts.** With a chat template (``tokenizer.chat_template``) the messages are rendered
by it with the generation prompt added. Without one (base models such as GPT-2 and the demo)
the plain fallback is one line per message, ``"{role}: {content}"``, then ``"assistant:"``,
which the model continues.

**Token budget.** ``max_tokens`` must fit the context: prompt tokens + ``max_tokens`` <=
the engine's ``context_length``, else 400 with both numbers (no silent clamping). Without
``max_tokens``, completions get 16 tokens (OpenAI's default) and chats the rest of the
context up to ``default_chat_tokens``; both capped by the room left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hf_sae_steer.serving.concepts import ConceptLibrary
from hf_sae_steer.serving.engine import Engine, GenerationRequest
from hf_sae_steer.serving.errors import RequestError
from hf_sae_steer.serving.limits import Limits
from hf_sae_steer.serving.requests import ChatMessage, ParsedRequest

COMPLETION_DEFAULT_TOKENS = 16


@dataclass(frozen=True)
class ServeLimits(Limits):
    """The schema's limits plus the server's defaults for the token budget."""

    default_chat_tokens: int = 256
    max_body_bytes: int | None = None  # default: room for the longest prompt, JSON-escaped

    @property
    def body_limit(self) -> int:
        return self.max_body_bytes or max(1_000_000, 16 * self.max_prompt_chars + 65_536)


def render_chat(tokenizer: Any, messages: tuple[ChatMessage, ...]) -> tuple[str, bool]:
    """The prompt text of ``messages``, and whether it came from a chat template (its special
    tokens are in the text, so it is tokenized without adding more)."""
    plain = [{"role": m.role, "content": m.content} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
        except Exception as error:  # noqa: BLE001 - templates raise anything (jinja errors)
            raise RequestError(
                f"The model's chat template refused these messages: {error}".splitlines()[0],
                param="messages",
            ) from None
        return str(text), True
    lines = [f"{m.role}: {m.content}" for m in messages]
    return "\n".join([*lines, "assistant:"]), False


def prepare(
    parsed: ParsedRequest,
    engine: Engine,
    library: ConceptLibrary,
    limits: ServeLimits,
    served_names: tuple[str, ...] = (),
) -> GenerationRequest:
    """Tokenize, check the budget, resolve the steering (see the module docstring)."""
    names = served_names or (engine.name,)
    if parsed.model is not None and parsed.model not in names:
        raise RequestError(
            f"The model {parsed.model!r} is not served here; use {names[0]!r}.",
            param="model", status=404, code="model_not_found",
        )  # fmt: skip
    steering = library.resolve(parsed.steering)  # cheap errors before tokenizing
    tokenizer = engine.tokenizer
    if parsed.kind == "chat":
        text, templated = render_chat(tokenizer, parsed.messages or ())
        ids = list(tokenizer(text, add_special_tokens=not templated)["input_ids"])
    elif isinstance(parsed.prompt, str):
        ids = list(tokenizer(parsed.prompt)["input_ids"])
    else:
        ids = list(parsed.prompt or ())
        vocab = len(tokenizer)
        if any(not 0 <= t < vocab for t in ids):
            raise RequestError(
                f"A prompt token id is outside the vocabulary (0..{vocab - 1}).", param="prompt"
            )
    if not ids:
        raise RequestError("The prompt is empty: give at least one token.", param="prompt")
    context = engine.context_length
    room = context - len(ids)
    if room < 1:
        raise RequestError(
            f"The prompt has {len(ids)} tokens; the model's context holds {context}, with room "
            "for at least one new token. Shorten the prompt.",
            param="prompt", code="context_length_exceeded",
        )  # fmt: skip
    max_tokens = parsed.max_tokens
    if max_tokens is None:
        default = (
            COMPLETION_DEFAULT_TOKENS
            if parsed.kind == "completion"
            else (limits.default_chat_tokens)
        )
        max_tokens = min(default, room)
    elif max_tokens > room:
        raise RequestError(
            f"max_tokens={max_tokens} is too large: the prompt has {len(ids)} tokens and the "
            f"model's context holds {context}, so at most {room} new tokens fit.",
            param="max_tokens", code="context_length_exceeded",
        )  # fmt: skip
    return GenerationRequest(
        ids, max_tokens, parsed.sampling, steering, ignore_eos=parsed.ignore_eos
    )
