"""The request schema: OpenAI completion and chat bodies plus ``steering``, validated into plain
frozen dataclasses. Pure Python (no torch, no HTTP): any engine or front end can use it.

A body is a JSON object as the official ``openai`` client sends it; steering travels in
``extra_body={"steering": [...]}``, a list of items (a single item may be given bare):

- ``{"concept": "medical", "strength": 4 | "recommended" | "calibrated", "method": "add",
  "positions": "all" | "prompt" | "generated", "preserve_error": true}``: a concept of the
  server's library, steered as ``SteeredModel(model, sae, scores=artifact, ...)`` would
  (unset fields: the artifact's recommended steering, exactly as SteeredModel chooses them);
- ``{"latents": {"12": 3.0, "40": 1.5}, "strength": 1, "layer": 2, "site": "resid_post"}``:
  method ``add`` with your own latents and weights on one of the server's SAEs (``layer`` /
  ``site`` pick the SAE when it serves several);
- ``{"vector": "medical", "strength": ...}``: method ``vector`` with that concept's steering
  vector (its ``delta_raw``; no SAE pass).

No steering (absent, ``null`` or ``[]``) is the base model. ``ignore_eos: true`` (vLLM's
extension) generates ``max_tokens`` tokens whatever the model says (for benchmarks).
Strengths are finite numbers within ±:data:`MAX_STRENGTH` (the library's bound),
``"recommended"`` (the artifact's recommended strength; its method only) or ``"calibrated"``
(the strength whose added vector is the default fraction of the typical hidden-state norm;
``add`` and ``vector`` only).

Every problem raises :class:`RequestError`: an HTTP status (400 unless said otherwise), the
offending parameter and a one-line message; :meth:`RequestError.to_json` is OpenAI's error body.
Unknown fields are refused (a misspelt ``steerng`` must not silently give the base model).
:meth:`SteeringItem.to_dict` round-trips through :func:`parse_steering`, so steering can travel
as JSON to an engine's workers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

METHODS = ("orig", "sae", "clamp", "weight", "swap", "add", "vector")  # interventions.METHODS
POSITIONS = ("all", "prompt", "generated")
SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
STRENGTH_WORDS = ("recommended", "calibrated")
MAX_STRENGTH = 1000.0  # interventions.MAX_STRENGTH; tests check that the two agree
ROLES = ("system", "user", "assistant", "developer")

_ITEM_KEYS = {
    "concept": {"concept", "strength", "method", "positions", "preserve_error"},
    "latents": {"latents", "strength", "positions", "layer", "site", "method"},
    "vector": {"vector", "strength", "positions", "method"},
}
_COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options",
           "stop", "seed", "user", "steering", "presence_penalty", "frequency_penalty",
           "logit_bias", "logprobs", "ignore_eos"}  # fmt: skip
_COMPLETION_KEYS = _COMMON | {"prompt", "echo", "best_of", "suffix"}
_CHAT_KEYS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs"}


class RequestError(ValueError):
    """A bad request: ``status`` (400 by default), ``param`` it concerns, one-line message."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int = 400,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(" ".join(message.split()))
        self.param, self.status, self.code, self.kind = param, status, code, kind

    def to_json(self) -> dict[str, Any]:
        """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": str(self),
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }  # fmt: skip
        }


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; checked before anything is tokenized."""

    max_prompt_chars: int = 32_000
    max_steering: int = 8
    max_latents: int = 1024
    max_stop: int = 4
    max_stop_chars: int = 256
    max_messages: int = 512


@dataclass(frozen=True)
class SteeringItem:
    """One validated steering item. Exactly one of ``concept``, ``latents``, ``vector`` is set;
    ``None`` fields mean "as the artifact recommends" (see the module docstring)."""

    concept: str | None = None
    latents: tuple[tuple[int, float], ...] | None = None
    vector: str | None = None
    method: str | None = None
    strength: float | str | None = None
    positions: str = "all"
    preserve_error: bool | None = None
    layer: int | None = None
    site: str | None = None

    @property
    def kind(self) -> Literal["concept", "latents", "vector"]:
        if self.concept is not None:
            return "concept"
        return "latents" if self.latents is not None else "vector"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form :func:`parse_steering` reads back (unset fields left out)."""
        out: dict[str, Any] = {}
        if self.latents is not None:
            out["latents"] = {str(i): w for i, w in self.latents}
        for name in ("concept", "vector", "method", "strength", "preserve_error", "layer",
                     "site"):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["positions"] = self.positions
        return out


@dataclass(frozen=True)
class Sampling:
    """Decoding options; ``temperature == 0`` is greedy decoding."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


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


# -- steering ----------------------------------------------------------------------------
def parse_steering(value: Any, limits: Limits = Limits()) -> tuple[SteeringItem, ...]:
    """The ``steering`` field: ``None``/``[]`` (the base model), one item, or a list of items."""
    if value is None:
        return ()
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, list):
        raise RequestError(
            'steering must be a list of items like {"concept": "medical"}.', param="steering"
        )
    if len(items) > limits.max_steering:
        raise RequestError(
            f"steering has {len(items)} items; at most {limits.max_steering} are allowed.",
            param="steering",
        )
    return tuple(_item(raw, i, limits) for i, raw in enumerate(items))


def _item(raw: Any, i: int, limits: Limits) -> SteeringItem:
    param = f"steering[{i}]"
    if not isinstance(raw, Mapping):
        raise RequestError(f'{param} must be an object like {{"concept": "medical"}}.', param=param)
    kinds = [k for k in ("concept", "latents", "vector") if k in raw]
    if len(kinds) != 1:
        raise RequestError(f"{param} needs exactly one of concept, latents or vector.", param=param)
    kind = kinds[0]
    unknown = sorted(set(raw) - _ITEM_KEYS[kind])
    if unknown:
        raise RequestError(
            f"{param} has unknown field(s) {', '.join(unknown)}; a {kind} item takes "
            f"{', '.join(sorted(_ITEM_KEYS[kind]))}.",
            param=f"{param}.{unknown[0]}",
        )
    method = raw.get("method")
    if method is not None and (not isinstance(method, str) or method not in METHODS):
        raise RequestError(
            f"{param}.method {method!r} is unknown; use one of {', '.join(METHODS)}.",
            param=f"{param}.method",
        )
    fixed = {"latents": "add", "vector": "vector"}.get(kind)
    if fixed is not None and method not in (None, fixed):
        raise RequestError(
            f"{param}: a {kind} item steers with method {fixed!r}, not {method!r}.",
            param=f"{param}.method",
        )
    positions = raw.get("positions", "all")
    if positions not in POSITIONS:
        raise RequestError(
            f"{param}.positions {positions!r} is unknown; use one of {', '.join(POSITIONS)}.",
            param=f"{param}.positions",
        )
    preserve = raw.get("preserve_error")
    if preserve is not None and not isinstance(preserve, bool):
        raise RequestError(f"{param}.preserve_error must be true or false.", param=param)
    return SteeringItem(
        concept=_name(raw, "concept", param),
        latents=_latents(raw["latents"], param, limits) if kind == "latents" else None,
        vector=_name(raw, "vector", param),
        method=fixed or method,
        strength=_strength(raw.get("strength"), f"{param}.strength"),
        positions=positions,
        preserve_error=preserve,
        layer=_int_or_none(raw.get("layer"), f"{param}.layer"),
        site=_site(raw.get("site"), f"{param}.site"),
    )


def _name(raw: Mapping[str, Any], key: str, param: str) -> str | None:
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, str) or not value or len(value) > 200:
        raise RequestError(f"{param}.{key} must be a concept name (a string).", param=param)
    return value


def _strength(value: Any, param: str) -> float | str | None:
    if value is None or value in STRENGTH_WORDS:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(
            f"{param} must be a number or one of {', '.join(STRENGTH_WORDS)}, got {value!r}.",
            param=param,
        )
    value = float(value)
    if not math.isfinite(value) or abs(value) > MAX_STRENGTH:
        raise RequestError(
            f"{param} must be a finite number between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}, "
            f"got {value:g}.",
            param=param,
        )
    return value


def _latents(value: Any, param: str, limits: Limits) -> tuple[tuple[int, float], ...]:
    if not isinstance(value, Mapping) or not value:
        raise RequestError(
            f"{param}.latents must be a non-empty object {{latent: weight}}.", param=param
        )
    if len(value) > limits.max_latents:
        raise RequestError(
            f"{param}.latents has {len(value)} entries; at most {limits.max_latents}.", param=param
        )
    out = []
    for key, weight in value.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            index = -1
        if index < 0 or str(index) != str(key).strip():
            raise RequestError(
                f"{param}.latents: {key!r} is not a latent index (a whole number >= 0).",
                param=param,
            )
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise RequestError(f"{param}.latents[{key}] must be a number.", param=param)
        if not math.isfinite(weight) or abs(weight) > MAX_STRENGTH:
            raise RequestError(
                f"{param}.latents[{key}] must be finite and within ±{MAX_STRENGTH:g}.",
                param=param,
            )
        out.append((index, float(weight)))
    return tuple(out)


def _int_or_none(value: Any, param: str) -> int | None:
    if value is None:
        return None
    if not _is_token(value):
        raise RequestError(f"{param} must be a whole number (a block index).", param=param)
    return int(value)


def _site(value: Any, param: str) -> str | None:
    if value is None:
        return None
    if value not in SITES:
        raise RequestError(
            f"{param} {value!r} is unknown; use one of {', '.join(SITES)}.", param=param
        )
    return value


# -- requests ----------------------------------------------------------------------------
def parse_completion(body: Any, limits: Limits = Limits()) -> ParsedRequest:
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
    elif isinstance(prompt, list) and prompt and all(_is_token(t) for t in prompt):
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


def parse_chat(body: Any, limits: Limits = Limits()) -> ParsedRequest:
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
        sampling=_sampling(body),
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
    if not _is_token(value) or value < 1:
        raise RequestError(
            f"max_tokens must be a whole number >= 1, got {value!r}.", param="max_tokens"
        )
    return int(value)


def _sampling(body: Mapping[str, Any]) -> Sampling:
    temperature = _number(body.get("temperature", 1.0), "temperature", 0.0, 2.0)
    top_p = _number(body.get("top_p", 1.0), "top_p", 0.0, 1.0)
    if top_p == 0.0:
        raise RequestError("top_p must be above 0 (at most 1).", param="top_p")
    seed = body.get("seed")
    if seed is not None and (not _is_token(seed) or abs(seed) >= 2**63):
        raise RequestError("seed must be a whole number.", param="seed")
    return Sampling(temperature=temperature, top_p=top_p, seed=seed)


def _number(value: Any, name: str, low: float, high: float) -> float:
    if value is None:
        return 1.0
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and low <= value <= high)
    ):
        raise RequestError(f"{name} must be a number from {low:g} to {high:g}.", param=name)
    return float(value)


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


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _too_long(size: int, limits: Limits) -> RequestError:
    return RequestError(
        f"The prompt has {size} characters; this server takes at most {limits.max_prompt_chars}.",
        param="prompt",
        code="context_length_exceeded",
    )
