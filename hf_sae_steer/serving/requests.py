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

# Fields that cannot change the output: accepted and ignored (an SDK that sends one by default
# must not fail on every call).
IGNORED = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls",
                     "reasoning_effort", "safety_identifier", "prompt_cache_key"})  # fmt: skip
_COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options",
           "stop", "seed", "steering", "presence_penalty", "frequency_penalty", "logit_bias",
           "logprobs", "ignore_eos", "top_k", "min_p", "repetition_penalty", "min_tokens",
           "stop_token_ids"} | IGNORED  # fmt: skip
COMPLETION_FIELDS = frozenset(_COMMON | {"prompt", "echo", "best_of", "suffix"})
CHAT_FIELDS = frozenset(_COMMON | {"messages", "max_completion_tokens", "top_logprobs"})

Prompt = str | tuple[int, ...]


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ParsedRequest:
    """A validated completion (``prompts``: texts or token ids) or chat (``messages``) request.
    ``max_tokens=None``: the server's default rule (the engine's context decides the rest).
    ``n`` choices per prompt; ``logprobs``: alternatives per token (``None``: no logprobs);
    ``echo``: the prompt is returned (and scored) before the completion."""

    kind: Literal["completion", "chat"]
    model: str | None
    prompts: tuple[Prompt, ...]
    messages: tuple[ChatMessage, ...] | None
    max_tokens: int | None
    sampling: Sampling
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    steering: tuple[SteeringItem, ...]
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever comes (benchmarks)
    n: int = 1
    logprobs: int | None = None
    echo: bool = False

    @property
    def prompt(self) -> Prompt | None:
        """The one prompt of a single-prompt completion (``None`` for a chat)."""
        return self.prompts[0] if len(self.prompts) == 1 else None


def parse_completion(body: Any, limits: Limits = DEFAULT_LIMITS) -> ParsedRequest:
    """A ``/v1/completions`` body: one prompt or a list of prompts (texts or token-id lists)."""
    body = _object(body, COMPLETION_FIELDS)
    if body.get("suffix") not in (None, ""):
        raise RequestError("suffix is not supported (no insertion mode).", param="suffix")
    echo = _flag(body.get("echo", False), "echo")
    logprobs = body.get("logprobs")
    if logprobs is not None and (not is_whole(logprobs) or not
                                 0 <= logprobs <= limits.max_logprobs):  # fmt: skip
        raise RequestError(
            f"logprobs must be a whole number from 0 to {limits.max_logprobs} (the most likely "
            "tokens listed per position).",
            param="logprobs",
        )
    prompts = _prompts(body.get("prompt"), limits)
    n = _n(body, len(prompts), limits)
    best_of = body.get("best_of")
    if best_of is not None and best_of != n:
        raise RequestError(
            f"best_of must equal n ({n}): this server returns every sample and ranks none.",
            param="best_of",
        )
    if body.get("max_tokens") == 0 and not echo:
        raise RequestError(
            "max_tokens must be a whole number >= 1 (0 only with echo, to score the prompt).",
            param="max_tokens",
        )
    return _request(body, "completion", limits, prompts=prompts, n=n, logprobs=logprobs,
                    echo=echo)  # fmt: skip


def parse_chat(body: Any, limits: Limits = DEFAULT_LIMITS) -> ParsedRequest:
    """A ``/v1/chat/completions`` body (text content only)."""
    body = _object(body, CHAT_FIELDS)
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
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise RequestError(
            "logprobs must be true or false (top_logprobs says how many alternatives).",
            param="logprobs",
        )
    top = body.get("top_logprobs")
    if top is not None:
        if not is_whole(top) or not 0 <= top <= limits.max_logprobs:
            raise RequestError(
                f"top_logprobs must be a whole number from 0 to {limits.max_logprobs}.",
                param="top_logprobs",
            )
        if not wanted:
            raise RequestError("top_logprobs needs logprobs: true.", param="top_logprobs")
    n = _n(body, 1, limits)
    return _request(body, "chat", limits, messages=tuple(parsed), n=n,
                    logprobs=(top or 0) if wanted else None)  # fmt: skip


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


def _prompts(value: Any, limits: Limits) -> tuple[Prompt, ...]:
    """A string, a list of token ids, or a list of either (several prompts)."""
    if isinstance(value, str) or _token_list(value):
        many = [value]
    elif (
        isinstance(value, list)
        and value
        and (all(isinstance(p, str) for p in value) or all(_token_list(p) for p in value))
    ):
        many = value
    else:
        raise RequestError(
            "prompt must be a string, a list of token ids, or a non-empty list of either "
            "(several prompts).",
            param="prompt",
        )
    if len(many) > limits.max_choices:
        raise RequestError(
            f"{len(many)} prompts; at most {limits.max_choices} per request.", param="prompt"
        )
    out: list[Prompt] = []
    for prompt in many:
        if len(prompt) > limits.max_prompt_chars:
            raise _too_long(len(prompt), limits)
        out.append(prompt if isinstance(prompt, str) else tuple(int(t) for t in prompt))
    return tuple(out)


def _token_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(is_whole(t) for t in value)


def _n(body: Mapping[str, Any], prompts: int, limits: Limits) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if not is_whole(n) or n < 1:
        raise RequestError(f"n must be a whole number >= 1, got {n!r}.", param="n")
    if n * prompts > limits.max_choices:
        raise RequestError(
            f"n={n} for {prompts} prompt(s) makes {n * prompts} choices; at most "
            f"{limits.max_choices} per request.",
            param="n",
        )
    return int(n)


def _request(body: dict[str, Any], kind: str, limits: Limits, **what: Any) -> ParsedRequest:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("model must be a string.", param="model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool | type(None)):
        raise RequestError("stream must be true or false.", param="stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise RequestError(
            "stream_options is only allowed with stream: true.", param="stream_options"
        )
    options = options or {}
    if not isinstance(options, Mapping) or set(options) - {"include_usage"}:
        raise RequestError("stream_options takes only include_usage.", param="stream_options")
    return ParsedRequest(
        kind=kind,  # type: ignore[arg-type]
        model=model,
        prompts=what.get("prompts", ()),
        messages=what.get("messages"),
        max_tokens=_max_tokens(body.get("max_tokens"), what.get("echo", False)),
        sampling=parse_sampling(body),
        stop=_stop(body.get("stop"), limits),
        stream=bool(stream),
        include_usage=bool(options.get("include_usage", False)),
        steering=parse_steering(body.get("steering"), limits),
        ignore_eos=_flag(body.get("ignore_eos", False), "ignore_eos"),
        n=what.get("n", 1),
        logprobs=what.get("logprobs"),
        echo=what.get("echo", False),
    )


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false.", param=name)
    return value


def _max_tokens(value: Any, echo: bool) -> int | None:
    if value is None:
        return None
    if not is_whole(value) or value < (0 if echo else 1):
        raise RequestError(
            f"max_tokens must be a whole number >= {0 if echo else 1}, got {value!r}.",
            param="max_tokens",
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
