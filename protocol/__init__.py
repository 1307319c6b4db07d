"""The Underpaint wire protocol (see PROTOCOL.md) and a small Python client.

Depends only on pyzmq, msgpack and the standard library, and imports its own modules relatively,
so editor plugins can ship a copy of this folder.

The names below load on first use (PEP 562), so `regions` (standard library only) imports even where
pyzmq or msgpack are missing: the plugins still load there and say what to install. Import
`.client` to check that the protocol can actually be spoken.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client, DaemonError, DaemonRefused, DaemonUnavailable, JobCancelled, ProtocolMismatch
    from .messages import DEFAULT_ENDPOINT, PROTOCOL_VERSION, ErrorCode, raw_image

_HOMES = {
    "Client": "client",
    "DaemonError": "client",
    "DaemonRefused": "client",
    "DaemonUnavailable": "client",
    "JobCancelled": "client",
    "ProtocolMismatch": "client",
    "DEFAULT_ENDPOINT": "messages",
    "PROTOCOL_VERSION": "messages",
    "ErrorCode": "messages",
    "raw_image": "messages",
}

__all__ = [
    "Client",
    "DaemonError",
    "DaemonRefused",
    "DaemonUnavailable",
    "JobCancelled",
    "ProtocolMismatch",
    "DEFAULT_ENDPOINT",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "raw_image",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
