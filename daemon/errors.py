"""The exception type that becomes an `error` message on the wire, and the one for bad config files."""

from __future__ import annotations

from typing import Any

from ..protocol.messages import ErrorCode


class RequestError(Exception):
    """A problem caused by what a client sent (or a job failure) with a stable protocol code."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.extra: dict[str, Any] = {}  # further documented fields of the error (e.g. `limit`)

    def to_message(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.field:
            out["field"] = self.field
        out.update(self.extra)
        return out


class ConfigError(ValueError):
    """The presets file says something Underpaint cannot use; the message names the preset and key."""


__all__ = ["ConfigError", "ErrorCode", "RequestError"]
