"""A request body, read safely: at most a byte cap (413 beyond it, drained without being kept),
JSON (400), nesting no deeper than a request ever needs, and text that is valid Unicode.

Python's JSON decoder accepts what the tokenizers and the C libraries behind them cannot: a
lone surrogate (``"\\udc00"``, a half of a UTF-16 pair) and nesting as deep as the interpreter's
recursion limit (``[[[[...`` 200 KB deep raises ``RecursionError``). Both are the client's
error: 400 with the field it is in, never a 500 from deep inside the server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from hf_sae_steer.serving.errors import RequestError

MAX_DEPTH = 64  # a chat message's text is 5 levels deep, a JSON schema rarely 20: none needs 64


async def read_json(request: Request, limit: int) -> Any:
    """The JSON body; 413 past ``limit`` bytes (the rest is read and dropped, never kept)."""
    declared = request.headers.get("content-length", "")
    size, parts = 0, []
    too_big = declared.isdigit() and int(declared) > limit
    async for part in request.stream():
        size += len(part)
        if size > limit:
            too_big = True
        if not too_big:
            parts.append(part)
    if too_big:
        raise RequestError(
            f"The request body has {size} bytes; this server takes at most {limit}.",
            status=413, code="request_too_large",
        )  # fmt: skip
    return parse_json(b"".join(parts))


def parse_json(raw: bytes) -> Any:
    """``raw`` as JSON, checked for depth and for text that is not valid Unicode."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(f"The request body is not valid JSON ({error}).") from None
    check_text(body)
    return body


def check_text(body: Any) -> None:
    """Walk ``body`` (without recursion): 400 for nesting deeper than :data:`MAX_DEPTH` and for
    a string (or key) that is not valid Unicode, naming the top-level field it is in."""
    stack: list[tuple[Any, int, str | None]] = [(body, 0, None)]
    while stack:
        value, depth, field = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep()
        if isinstance(value, str):
            _check_string(value, field)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                _check_string(key, field or key)
                stack.append((item, depth + 1, field or key))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, field) for item in value)


def _check_string(text: str, field: str | None) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        where = f"{field} has" if field else "The request body has"
        raise RequestError(
            f"{where} a lone surrogate ({text[error.start]!r} at character {error.start}): "
            "send valid Unicode (UTF-16 surrogates only come in pairs).",
            param=field,
        ) from None


def _too_deep() -> RequestError:
    return RequestError(
        f"The request body is nested too deeply (at most {MAX_DEPTH} levels of objects and "
        "lists).",
    )
