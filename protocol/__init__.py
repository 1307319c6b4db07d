"""The Underpaint wire protocol (see PROTOCOL.md) and a small Python client.

Depends only on pyzmq, msgpack and the standard library, and imports its own modules relatively,
so editor plugins can ship a copy of this folder.
"""

from .client import Client, DaemonError, JobCancelled, ProtocolMismatch
from .messages import DEFAULT_ENDPOINT, PROTOCOL_VERSION, ErrorCode, raw_image

__all__ = [
    "Client",
    "DaemonError",
    "JobCancelled",
    "ProtocolMismatch",
    "DEFAULT_ENDPOINT",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "raw_image",
]
