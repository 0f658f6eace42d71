"""Who may use the server: an API key, the Host header, and browsers from other sites.

- **API key** (``--api-key`` or the environment variable :data:`API_KEY_ENV`): every path but
  ``/health`` needs ``Authorization: Bearer <key>`` (what the ``openai`` client sends as its
  ``api_key``); otherwise 401 in OpenAI's error shape (``code: invalid_api_key``).
- **Host header** (DNS rebinding): a web page on ``evil.example`` whose name an attacker points
  at 127.0.0.1 reaches a local server from the victim's browser with ``Host: evil.example``.
  Accepted: IP literals, ``localhost``, the bind address, this machine's name when bound beyond
  loopback, and ``--allowed-hosts`` (``*``: any); otherwise 400.
- **Browsers from other sites** (CORS): off unless ``--allowed-origins``. A request with an
  ``Origin`` that is not allowed gets 403, and a POST must be JSON (``application/json``):
  text/plain, form and multipart bodies are what a page may send cross-site without asking
  first (no CORS preflight), so they get 415 before anything runs.

Pure ASGI middleware (no buffering): streamed responses pass through untouched.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

API_KEY_ENV = "HF_SAE_STEER_API_KEY"
OPEN_PATHS = frozenset({"/health"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class AccessPolicy:
    """What the server accepts (module docstring). ``bind`` is the address it listens on."""

    api_key: str | None = None
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    bind: str = "127.0.0.1"
    _names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("--api-key is empty; give a key or leave it out.")
        for origin in self.allowed_origins:
            if origin != "*" and (not origin.startswith(("http://", "https://"))
                                  or origin.rstrip("/").count("/") > 2):  # fmt: skip
                raise ValueError(
                    f"--allowed-origins {origin!r} is not an origin; give scheme://host[:port] "
                    "(e.g. http://localhost:3000) or *."
                )
        names = {_host_name(h) for h in (*self.allowed_hosts, self.bind)} | LOOPBACK_NAMES
        if not is_loopback(self.bind):
            names |= _machine_names()
        object.__setattr__(self, "_names", frozenset(names))

    @classmethod
    def from_options(
        cls,
        *,
        api_key: str | None = None,
        allowed_origins: Iterable[str] = (),
        allowed_hosts: Iterable[str] = (),
        bind: str = "127.0.0.1",
        environ: MutableMapping[str, str] | None = None,
    ) -> AccessPolicy:
        """The policy of ``hf-sae-steer serve``: ``--api-key``, else :data:`API_KEY_ENV`."""
        env = os.environ if environ is None else environ
        key = api_key if api_key is not None else (env.get(API_KEY_ENV) or None)
        return cls(key, tuple(allowed_origins), tuple(allowed_hosts), bind)

    def host_allowed(self, host: str | None) -> bool:
        if host is None or "*" in self.allowed_hosts:
            return True
        name = _host_name(host)
        return _is_ip(name) or name in self._names

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.allowed_origins or origin.rstrip("/") in {
            o.rstrip("/") for o in self.allowed_origins
        }

    def key_matches(self, authorization: str | None) -> bool:
        if self.api_key is None:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.strip().encode(), self.api_key.encode())


def exposure_warning(policy: AccessPolicy) -> str | None:
    """One line for the log when the server listens beyond loopback without an API key."""
    if policy.api_key is not None or is_loopback(policy.bind):
        return None
    return (
        f"warning: listening on {policy.bind or '0.0.0.0'} without an API key: anyone who can "
        f"reach this port can use the model. Pass --api-key (or set {API_KEY_ENV})."
    )


_PATH = re.compile(r"(?<![\w.~:/])(?:~|[A-Za-z]:)?[/\\](?:[^\s/\\'\"]+[/\\])+[^\s/\\'\",:;)]*")


def redact_paths(message: str) -> str:
    """``message`` with absolute file paths cut to ``.../name`` (errors that reach clients
    must not show where the server keeps its files)."""
    return _PATH.sub(lambda m: ".../" + re.split(r"[/\\]", m.group(0))[-1], message)


def is_loopback(host: str) -> bool:
    name = _host_name(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def install(app: Any, policy: AccessPolicy) -> None:
    """Put ``policy`` in front of the Starlette/FastAPI ``app``: Host first, then CORS (when
    origins are allowed: it answers their preflight requests), then the origin, the content
    type and the API key."""
    app.add_middleware(_Guard, policy=policy)
    if policy.allowed_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(policy.allowed_origins),
            allow_methods=["GET", "POST"], allow_headers=["authorization", "content-type"],
        )  # fmt: skip
    app.add_middleware(_HostGuard, policy=policy)  # the last added runs first


class _HostGuard:
    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = _header(scope, b"host")
            if not self.policy.host_allowed(host):
                name = _host_name(host or "")
                await _refuse(send, 400, "invalid_host",
                              f"The Host header {name!r} does not name this server; start it "
                              f"with --allowed-hosts {name} to serve that name.")  # fmt: skip
                return
        await self.app(scope, receive, send)


class _Guard:
    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await _refuse(send, *refusal)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        origin = _header(scope, b"origin")
        if origin is not None and not self.policy.origin_allowed(origin):
            return (403, "cross_origin_refused",
                    f"Requests from web pages on other sites ({origin}) are refused; start the "
                    f"server with --allowed-origins {origin} to allow that one.")  # fmt: skip
        if scope["method"] == "POST" and not _is_json(_header(scope, b"content-type")):
            kind = _header(scope, b"content-type")
            return (415, "unsupported_media_type",
                    f"The request body must be JSON (Content-Type: application/json), not "
                    f"{kind}.")  # fmt: skip
        if scope["path"] not in OPEN_PATHS and not self.policy.key_matches(
            _header(scope, b"authorization")
        ):
            return (401, "invalid_api_key",
                    "Missing or wrong API key: send Authorization: Bearer <key> (the openai "
                    "client's api_key).")  # fmt: skip
        return None


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "param": None, "code": code}}).encode()  # fmt: skip
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _is_json(content_type: str | None) -> bool:
    if content_type is None:  # no body type declared: read as JSON (curl --data-binary @f)
        return True
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


def _host_name(host: str) -> str:
    """``host[:port]`` or ``[v6]:port`` without the port, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _machine_names() -> set[str]:
    names = {socket.gethostname().lower()}
    try:
        names.add(socket.getfqdn().lower())
    except OSError:
        pass
    return names
