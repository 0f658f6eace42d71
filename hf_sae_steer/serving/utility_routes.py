"""The routes beside generation, as vLLM's server has them: ``POST /tokenize``,
``POST /detokenize``, ``GET /version`` and ``GET /metrics`` (:mod:`.metrics`).

``/tokenize`` counts tokens exactly as a generation request is tokenized (a ``prompt`` as a
completion's, ``messages`` as a chat's, through the chat template or the plain fallback), so
``count`` is the ``usage.prompt_tokens`` that request will report::

    POST /tokenize   {"prompt": "The children went"}          -> {"count": 3, "tokens": [...],
                                                                  "max_model_len": 128}
    POST /tokenize   {"messages": [{"role": "user", "content": "Hi"}]}
    POST /detokenize {"tokens": [464, 1751, 1816]}             -> {"prompt": "The children went"}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

import hf_sae_steer
from hf_sae_steer.serving.body import read_json
from hf_sae_steer.serving.engine import Engine
from hf_sae_steer.serving.errors import RequestError
from hf_sae_steer.serving.metrics import CONTENT_TYPE, Metrics
from hf_sae_steer.serving.prepare import ServeLimits, render_chat
from hf_sae_steer.serving.requests import parse_chat
from hf_sae_steer.serving.served_models import ServedModels

_TOKENIZE_KEYS = {"model", "prompt", "messages", "add_special_tokens", "add_generation_prompt",
                  "return_token_strs"}  # fmt: skip
_DETOKENIZE_KEYS = {"model", "tokens"}


def add_utility_routes(
    app: FastAPI, engine: Engine, limits: ServeLimits, served: ServedModels, metrics: Metrics
) -> None:
    """Add the routes of the module docstring to ``app``."""

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        body = _object(await read_json(request, limits.body_limit), _TOKENIZE_KEYS, served)
        ids = await run_in_threadpool(_tokenize, body, engine.tokenizer, limits)
        out: dict[str, Any] = {"count": len(ids), "max_model_len": engine.context_length,
                               "tokens": ids, "token_strs": None}  # fmt: skip
        if _flag(body, "return_token_strs", False):
            out["token_strs"] = engine.tokenizer.convert_ids_to_tokens(ids)
        return out

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        body = _object(await read_json(request, limits.body_limit), _DETOKENIZE_KEYS, served)
        ids = _token_ids(body.get("tokens"), len(engine.tokenizer), limits)
        return {"prompt": await run_in_threadpool(engine.tokenizer.decode, ids)}

    @app.get("/version")
    async def version() -> dict[str, Any]:
        return {"version": hf_sae_steer.__version__, "engine": engine.stats().get("engine")}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)


def _object(body: Any, known: set[str], served: ServedModels) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise RequestError("The request body must be a JSON object.")
    unknown = sorted(set(body) - known)
    if unknown:
        raise RequestError(
            f"Unknown field(s): {', '.join(unknown)}; this route takes {', '.join(sorted(known))}.",
            param=unknown[0],
        )
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("model must be a string.", param="model")
    served.pick(model)  # 404 for a model this server does not serve (steered ones tokenize alike)
    return body


def _tokenize(body: Mapping[str, Any], tokenizer: Any, limits: ServeLimits) -> list[int]:
    """The token ids a generation request with this prompt or these messages would have."""
    if ("prompt" in body) == ("messages" in body):
        raise RequestError("Give a prompt (a string) or messages (a chat), one of the two.",
                           param="prompt")  # fmt: skip
    if "messages" in body:
        if not _flag(body, "add_generation_prompt", True):
            raise RequestError("add_generation_prompt must be true (the prompt a chat request "
                               "generates from).", param="add_generation_prompt")  # fmt: skip
        parsed = parse_chat({"messages": body["messages"]}, limits)
        text, templated = render_chat(tokenizer, parsed.messages or ())
        return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])
    prompt = body["prompt"]
    if not isinstance(prompt, str) or len(prompt) > limits.max_prompt_chars:
        raise RequestError(f"prompt must be a string of at most {limits.max_prompt_chars} "
                           "characters.", param="prompt")  # fmt: skip
    special = _flag(body, "add_special_tokens", True)
    return list(tokenizer(prompt, add_special_tokens=special)["input_ids"])


def _token_ids(value: Any, vocab: int, limits: ServeLimits) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) > limits.max_prompt_chars
        or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                   for t in value)  # fmt: skip
    ):
        raise RequestError(f"tokens must be a list of token ids (0..{vocab - 1}).",
                           param="tokens")  # fmt: skip
    return value


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false.", param=name)
    return value
