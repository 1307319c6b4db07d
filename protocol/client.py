"""A small synchronous Python client for the Underpaint daemon (PROTOCOL.md).

One `Client` is one DEALER socket, used from one thread. Replies are matched to requests by `id`/`re`;
messages that arrive while waiting for something else (events of other jobs) are kept in an inbox and
handed out later, so nothing is lost. Editor plugins that must not block call `send()` and `poll(0)`
from a timer instead of the blocking helpers.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from .messages import (
    DEFAULT_ENDPOINT,
    PROTOCOL_VERSION,
    TERMINAL_EVENTS,
    ErrorCode,
    attach_frames,
    pack,
    split_frames,
    unpack,
)


class DaemonError(Exception):
    """An `error` message from the daemon, with its stable `code`."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        self.code: str = str(reply.get("code", ErrorCode.JOB_FAILED))
        self.field: str | None = reply.get("field")
        self.job: str | None = reply.get("job")
        super().__init__(f"{self.code}: {reply.get('message', '')}")


class ProtocolMismatch(DaemonError):
    """The daemon speaks another protocol version: one side needs an update."""


class JobCancelled(Exception):
    """The job ended with a `cancelled` event (no result)."""

    def __init__(self, job: str) -> None:
        self.job = job
        super().__init__(f"job {job} was cancelled")


class Client:
    """Talks to one daemon endpoint. Not thread-safe: use one Client per thread."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout: float = 30.0,
        context: zmq.Context | None = None,
        frames: bool = False,
    ) -> None:
        """`frames=True` sends and receives large image data as extra ZeroMQ frames instead of inside
        the msgpack map (fewer copies; needs a daemon whose welcome lists the feature "frames")."""
        self.endpoint = endpoint
        self.timeout = timeout
        self.frames = frames
        self._ctx = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._next_id = 0
        self._inbox: deque[dict[str, Any]] = deque()
        self._connect()

    # -- connection -------------------------------------------------------------------------
    def _connect(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        self._socket = sock

    def reset(self) -> None:
        """Drop the socket and everything queued on it, then connect afresh.

        Called after a timeout so that a request sent while the daemon was down is not delivered
        (and run) much later when it comes up.
        """
        if self._socket is not None:
            self._socket.close(0)
        self._inbox.clear()
        self._connect()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- low level: non-blocking friendly -----------------------------------------------------
    def send(self, type_: str, **fields: Any) -> int:
        """Send one request and return its request id (echoed as `re` in replies)."""
        assert self._socket is not None, "client is closed"
        self._next_id += 1
        message = {"type": type_, "id": self._next_id, **fields}
        if self.frames:
            header, payloads = split_frames(message)
            self._socket.send_multipart([pack(header), *payloads], copy=False)
        else:
            self._socket.send(pack(message), copy=False)
        return self._next_id

    def poll(self, timeout: float | None = 0) -> dict[str, Any] | None:
        """Return the next message (inbox first), waiting up to `timeout` s (None = forever)."""
        if self._inbox:
            return self._inbox.popleft()
        return self._receive(timeout)

    def _receive(self, timeout: float | None) -> dict[str, Any] | None:
        assert self._socket is not None, "client is closed"
        ms = None if timeout is None else max(0, int(timeout * 1000))
        if not self._socket.poll(ms, zmq.POLLIN):
            return None
        parts = self._socket.recv_multipart(copy=False)
        message = unpack(parts[0].buffer)
        if not isinstance(message, dict):
            return None
        if len(parts) > 1:
            attach_frames(message, [part.buffer for part in parts[1:]])
        return message

    def _take(self, match: Callable[[dict[str, Any]], bool], timeout: float | None) -> dict | None:
        """Return the first message (inbox or socket) that `match`es, keeping the others."""
        for i, message in enumerate(self._inbox):
            if match(message):
                del self._inbox[i]
                return message
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            message = self._receive(left)
            if message is None:
                return None
            if match(message):
                return message
            self._inbox.append(message)

    # -- requests ------------------------------------------------------------------------------
    def request(self, type_: str, *, timeout: float | None = None, **fields: Any) -> dict:
        """Send a request and wait for its direct reply; raise DaemonError on an `error` reply."""
        rid = self.send(type_, **fields)
        wait = self.timeout if timeout is None else timeout
        reply = self._take(lambda m: _is_reply(m, rid), wait)
        if reply is None:
            self.reset()
            raise TimeoutError(
                f"no answer from the Underpaint daemon at {self.endpoint} within {wait:g} s "
                "(is `underpaint serve` running there?)"
            )
        if reply.get("type") == "error":
            if reply.get("code") == ErrorCode.PROTOCOL_MISMATCH:
                raise ProtocolMismatch(reply)
            raise DaemonError(reply)
        return reply

    def hello(self, client: str = "underpaint-python", timeout: float | None = None) -> dict[str, Any]:
        """Handshake: returns the daemon's `welcome` (ops, models, device, limits)."""
        return self.request("hello", timeout=timeout, protocol=PROTOCOL_VERSION, client=client)

    def submit(
        self,
        op: str,
        params: dict[str, Any] | None = None,
        images: dict[str, dict[str, Any]] | None = None,
        *,
        model: str | None = None,
        preview: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Queue a job; returns its job id (raises DaemonError if the daemon refuses it)."""
        fields: dict[str, Any] = {"op": op, "params": params or {}, "images": images or {}}
        if model is not None:
            fields["model"] = model
        if preview:
            fields["preview"] = True
        if self.frames:
            fields["frames"] = True
        return str(self.request("submit", timeout=timeout, **fields)["job"])

    def events(self, job: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield the events of `job` until (and including) its terminal event.

        `timeout` bounds the wait for each next event (None = forever); TimeoutError when exceeded.
        """
        while True:
            event = self._take(lambda m: m.get("job") == job and m.get("type") != "ack", timeout)
            if event is None:
                raise TimeoutError(f"no event for job {job} within {timeout:g} s")
            yield event
            if event.get("type") in TERMINAL_EVENTS:
                return

    def wait(
        self,
        job: str,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Wait for `job` to finish and return its `result`.

        Raises DaemonError if it failed and JobCancelled if it was cancelled.
        """
        for event in self.events(job, timeout):
            kind = event.get("type")
            if kind == "progress" and on_progress is not None:
                on_progress(event)
            elif kind == "result":
                return event
            elif kind == "cancelled":
                raise JobCancelled(job)
            elif kind == "error":
                raise DaemonError(event)
        raise AssertionError("unreachable: events() ends on a terminal event")

    def run(
        self,
        op: str,
        params: dict[str, Any] | None = None,
        images: dict[str, dict[str, Any]] | None = None,
        *,
        model: str | None = None,
        preview: bool = False,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Submit a job and wait for its result (see `submit` and `wait`)."""
        job = self.submit(op, params, images, model=model, preview=preview)
        return self.wait(job, on_progress, timeout)

    def cancel(self, job: str, timeout: float | None = None) -> dict[str, Any]:
        """Ask the daemon to cancel `job`; its `cancelled` event follows (see `wait`)."""
        return self.request("cancel", timeout=timeout, job=job)

    def status(self, job: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        return self.request("status", timeout=timeout, **({"job": job} if job else {}))

    def models(self, timeout: float | None = None) -> dict[str, Any]:
        return self.request("models", timeout=timeout)

    def load(self, model: str, op: str | None = None, timeout: float | None = None) -> dict:
        """Load a preset's components for `op` now (queued on the worker like a job)."""
        fields: dict[str, Any] = {"model": model}
        if op:
            fields["op"] = op
        return self.request("load", timeout=timeout, **fields)

    def unload(self, model: str, timeout: float | None = None) -> dict[str, Any]:
        return self.request("unload", model=model, timeout=timeout)


_DIRECT_REPLIES = frozenset({"welcome", "accepted", "status", "models", "ack", "loaded", "unloaded"})


def _is_reply(message: dict[str, Any], rid: int) -> bool:
    """A direct reply answers request `rid`; job events and errors of accepted jobs carry `job`."""
    if message.get("re") != rid:
        return False
    kind = message.get("type")
    return kind in _DIRECT_REPLIES or (kind == "error" and not message.get("job"))
