"""What the I/O loop does to a message before trusting any of it: bounded decoding and shape checks,
cheap size estimates of the images it carries, and log text that a client cannot forge.

Nothing here recurses over client data (a deeply nested message cannot raise RecursionError), and
nothing here decompresses: decoding images happens in the decode pool (see server.py).
"""

from __future__ import annotations

import math
import os
import queue
from typing import Any

from ...protocol.messages import unpack
from ..errors import ErrorCode, RequestError
from ..images import png_size

#: Deepest nesting of maps and arrays a message may have (a submit needs 4).
MAX_NESTING = 32
#: Longest `id` (str) a request may carry: it is echoed in every reply and event.
MAX_ID_CHARS = 256
#: Longest client text a log line quotes.
LOG_CHARS = 80


def unpack_request(buffer: Any) -> dict[str, Any]:
    """The request map of a first frame, or `malformed_message`. Its nesting is not checked yet
    (see `check_nesting`), so that a refusal can still carry the request's `re`."""
    try:
        msg = unpack(buffer)
    except Exception as exc:  # msgpack raises several types (and StackError past its own depth)
        raise RequestError(ErrorCode.MALFORMED_MESSAGE, f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(msg, dict):
        raise RequestError(
            ErrorCode.MALFORMED_MESSAGE, f"message must be a msgpack map, got {type(msg).__name__}"
        )
    return msg


def check_nesting(obj: Any, limit: int = MAX_NESTING) -> None:
    """Refuse maps and arrays nested deeper than `limit` (iteratively: no recursion on client data)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        if depth > limit:
            raise RequestError(
                ErrorCode.MALFORMED_MESSAGE, f"the message nests maps and arrays deeper than {limit} levels"
            )
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))


def check_request_id(msg: dict[str, Any]) -> None:
    """`id` is an int or a short str (it comes back in every reply); anything else is refused."""
    rid = msg.get("id")
    if rid is None:
        return
    if isinstance(rid, bool) or not isinstance(rid, (int, str)):
        msg.pop("id")
        raise RequestError(ErrorCode.INVALID_TYPE, f"id must be int or str, got {type(rid).__name__}", "id")
    if isinstance(rid, str) and len(rid) > MAX_ID_CHARS:
        msg.pop("id")
        raise RequestError(ErrorCode.OUT_OF_RANGE, f"id is {len(rid)} chars, at most {MAX_ID_CHARS}", "id")


def check_finite(params: Any, path: str = "params") -> None:
    """NaN and infinities are outside every range: refuse them wherever they are in `params`."""
    stack = [(params, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise RequestError(ErrorCode.OUT_OF_RANGE, f"{where} is {node}: not a finite number", where)
        if isinstance(node, dict):
            stack.extend((v, f"{where}.{k}") for k, v in node.items())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, f"{where}.{i}") for i, v in enumerate(node))


def decoded_estimate(images: Any, max_pixels: int) -> int:
    """Bytes the PNGs of an `images` map will take once decoded (RGBA, at most `max_pixels` each);
    raw images take what they already take in the message."""
    if not isinstance(images, dict):
        return 0
    total = 0
    for obj in images.values():
        if isinstance(obj, dict) and obj.get("format") == "png":
            data = obj.get("data")
            size = png_size(data) if isinstance(data, (bytes, bytearray, memoryview)) else None
            if size is not None:
                total += min(size[0] * size[1], max_pixels) * 4
    return total


def loggable(value: Any, limit: int = LOG_CHARS) -> str:
    """Client text for a log line: control characters escaped, at most `limit` characters quoted."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    cut = value[:limit]
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in cut)
    if len(value) > limit:
        text += f"...(+{len(value) - limit} chars)"
    return text


class Inbox:
    """Messages for the I/O loop from other threads (the worker, the decode pool), with a pipe whose
    read end the loop polls so it wakes at once."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.fd, self._write = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write, False)

    def put(self, item: Any) -> None:
        self._items.put(item)
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:  # the pipe is full: the loop is already due to wake
            pass

    def take(self) -> list[Any]:
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass
        items = []
        while True:
            try:
                items.append(self._items.get_nowait())
            except queue.Empty:
                return items
