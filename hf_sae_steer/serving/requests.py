"""Completion and chat request bodies, as the official ``openai`` client sends them, validated
into plain frozen records (:class:`ParsedRequest`). Pure Python (no torch, no HTTP): any engine
or front end can use it.

Steering travels in ``extra_body={"steering": [...]}`` (:mod:`.steering_items`); decoding
options are :mod:`.sampling`'s. ``ignore_eos: true`` (vLLM's extension) generates
``max_tokens`` tokens whatever the model says (for benchmarks).

Every problem raises :class:`~hf_sae_steer.serving.errors.RequestError`: an HTTP status (400
unless said otherwise), the offending parameter and a one-line message. Unknown fields are
refused (a misspelt ``steerng`` must not silently give the base model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hf_sae_steer.serving.errors import RequestError
from hf_sae_steer.serving.limits import DEFAULT_LIMITS, Limits
from hf_sae_steer.serving.sampling import Sampling, is_whole, parse_sampling
from hf_sae_steer.serving.steering_items import SteeringItem, parse_steering

ROLES = ("system", "user", "assistant", "developer")

_COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options",
           "stop", "seed", "user", "steering", "presence_penalty", "frequency_penalty",
           "logit_bias", "logprobs", "ignore_eos"}  # fmt: skip
_COMPLETION_KEYS = _COMMON | {"prompt", "echo", "best_of", "suffix"}
_CHAT_KEYS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs"}


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ParsedRequest:
    """A validated completion (``prompt``: text or token ids) or chat (``messages``) request.
    ``max_tokens=None``: the server's default rule (the engine's context decides the rest)."""

    kind: Literal["completion", "chat"]
    model: str | None
    prompt: str | tuple[int, ...] | None
    messages: tuple[ChatMessage, ...] | None
    max_tokens: int | None
    sampling: Sampling
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    steering: tuple[SteeringItem, ...]
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever comes (benchmarks)


def parse_completion(body: Any, limits: Limits = DEFAULT_LIMITS) -> ParsedRequest:
    """A ``/v1/completions`` body."""
    body = _object(body, _COMPLETION_KEYS)
    if body.get("echo") or body.get("suffix") or body.get("best_of") not in (None, 1):
        raise RequestError("echo, suffix and best_of are not supported.", param="echo")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # one prompt in a list; several: one request each, we batch them
    if isinstance(prompt, str):
        if len(prompt) > limits.max_prompt_chars:
            raise _too_long(len(prompt), limits)
        text: str | tuple[int, ...] = prompt
    elif isinstance(prompt, list) and prompt and all(is_whole(t) for t in prompt):
        if len(prompt) > limits.max_prompt_chars:
            raise _too_long(len(prompt), limits)
        text = tuple(int(t) for t in prompt)
    else:
        raise RequestError(
            "prompt must be one string (or one list of token ids); send several prompts as "
            "separate requests: the server batches them.",
            param="prompt",
        )
    return _request(body, "completion", limits, prompt=text)


def parse_chat(body: Any, limits: Limits = DEFAULT_LIMITS) -> ParsedRequest:
    """A ``/v1/chat/completions`` body (text content only)."""
    body = _object(body, _CHAT_KEYS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list.", param="messages")
    if len(messages) > limits.max_messages:
        raise RequestError(
            f"{len(messages)} messages; at most {limits.max_messages}.", param="messages"
        )
    parsed, total = [], 0
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, Mapping) or message.get("role") not in ROLES:
            raise RequestError(
                f"{param} needs a role ({', '.join(ROLES)}) and a content.", param=param
            )
        content = _content(message.get("content"), param)
        total += len(content)
        if total > limits.max_prompt_chars:
            raise _too_long(total, limits)
        parsed.append(ChatMessage(message["role"], content))
    if body.get("max_completion_tokens") is not None:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    return _request(body, "chat", limits, messages=tuple(parsed))


def _content(value: Any, param: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in value:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise RequestError(f"{param}: only text content is supported.", param=param)
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(f"{param}: a text part needs a string text.", param=param)
            parts.append(text)
        return "".join(parts)
    raise RequestError(f"{param}.content must be a string.", param=param)


def _object(body: Any, known: set[str]) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise RequestError("The request body must be a JSON object.")
    unknown = sorted(set(body) - known)
    if unknown:
        raise RequestError(
            f"Unknown or unsupported field(s): {', '.join(unknown)}.", param=unknown[0]
        )
    return dict(body)


def _request(body: dict[str, Any], kind: str, limits: Limits, **what: Any) -> ParsedRequest:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("model must be a string.", param="model")
    if body.get("n") not in (None, 1):
        raise RequestError("n must be 1; send several requests instead.", param="n")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise RequestError(f"{name} is not supported (only 0).", param=name)
    if body.get("logit_bias") or body.get("logprobs") not in (None, False, 0):
        raise RequestError("logit_bias and logprobs are not supported.", param="logprobs")
    stream = body.get("stream", False)
    if not isinstance(stream, bool | type(None)):
        raise RequestError("stream must be true or false.", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, Mapping) or set(options) - {"include_usage"}:
        raise RequestError("stream_options takes only include_usage.", param="stream_options")
    return ParsedRequest(
        kind=kind,  # type: ignore[arg-type]
        model=model,
        prompt=what.get("prompt"),
        messages=what.get("messages"),
        max_tokens=_max_tokens(body.get("max_tokens")),
        sampling=parse_sampling(body),
        stop=_stop(body.get("stop"), limits),
        stream=bool(stream),
        include_usage=bool(options.get("include_usage", False)),
        steering=parse_steering(body.get("steering"), limits),
        ignore_eos=_flag(body.get("ignore_eos", False), "ignore_eos"),
    )


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false.", param=name)
    return value


def _max_tokens(value: Any) -> int | None:
    if value is None:
        return None
    if not is_whole(value) or value < 1:
        raise RequestError(
            f"max_tokens must be a whole number >= 1, got {value!r}.", param="max_tokens"
        )
    return int(value)


def _stop(value: Any, limits: Limits) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > limits.max_stop
        or not all(isinstance(s, str) and 0 < len(s) <= limits.max_stop_chars for s in stops)
    ):
        raise RequestError(
            f"stop must be a string or a list of at most {limits.max_stop} non-empty strings.",
            param="stop",
        )
    return tuple(stops)


def _too_long(size: int, limits: Limits) -> RequestError:
    return RequestError(
        f"The prompt has {size} characters; this server takes at most {limits.max_prompt_chars}.",
        param="prompt",
        code="context_length_exceeded",
    )
