"""The one error a bad request raises anywhere in the server: :class:`RequestError`, with an
HTTP status, the parameter it concerns and a one-line message; its JSON is OpenAI's error body."""

from __future__ import annotations

from typing import Any


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
