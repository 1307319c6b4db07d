"""A small synchronous Python client for the Underpaint daemon (PROTOCOL.md).

One `Client` is one DEALER socket, used from one thread. Replies are matched to requests by `id`/`re`;
messages that arrive while waiting for something else (events of other jobs) are kept in an inbox and
handed out later, so nothing is lost. Editor plugins that must not block call `send()` and `poll(0)`
from a timer instead of the blocking helpers, and show `connected`.

The link is watched with ZeroMQ's heartbeats and a socket monitor: `connected` turns false within
about three seconds of the daemon vanishing. A request is never buffered while there is no link
(ZMQ_IMMEDIATE): `send` raises `DaemonUnavailable` instead, so nothing runs later for nobody. When
the link comes back (a restarted daemon, a network blip, `reset()`), the client says `hello` with
its session token by itself: its jobs' events flow again, finished ones are fetched, and jobs the
daemon no longer knows (it restarted) end with a `job_lost` error event made here.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from .loading import loading_detail
from .messages import (
    DEFAULT_ENDPOINT,
    HEARTBEAT_IVL_MS,
    HEARTBEAT_TIMEOUT_MS,
    HEARTBEAT_TTL_MS,
    PROTOCOL_VERSION,
    TERMINAL_EVENTS,
    ErrorCode,
    attach_frames,
    pack,
    split_frames,
    unpack,
)

SERVER_KEY_ENV = "UNDERPAINT_SERVER_KEY"
CLIENT_KEY_ENV = "UNDERPAINT_CLIENT_KEY"
_UP = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", zmq.EVENT_CONNECTED)
_REFUSED = {
    getattr(zmq, name): why
    for name, why in (
        ("EVENT_HANDSHAKE_FAILED_AUTH", "the daemon refused this client's key"),
        (
            "EVENT_HANDSHAKE_FAILED_PROTOCOL",
            "the daemon's security handshake failed (keys on one side only?)",
        ),
        ("EVENT_HANDSHAKE_FAILED_NO_DETAIL", "the security handshake failed (wrong server key?)"),
    )
    if hasattr(zmq, name)
}
_WATCHED = _UP | zmq.EVENT_DISCONNECTED
for _event in _REFUSED:
    _WATCHED |= _event
_REMEMBER_FINISHED = 4096  # job ids whose final event was handed out (duplicates are dropped)


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
    """The job ended with a `cancelled` event (no result). `reason` `"superseded"`: a newer job of
    its lane replaced it, and `by` is that job's id (PROTOCOL.md 9.6)."""

    def __init__(self, job: str, reason: str = "client", by: str | None = None) -> None:
        self.job = job
        self.reason = reason
        self.by = by
        super().__init__(f"job {job} was cancelled ({reason})" + (f" by job {by}" if by else ""))


class DaemonUnavailable(TimeoutError):
    """There is no link to the daemon (it is down, unreachable, or refuses this client)."""


class DaemonRefused(DaemonUnavailable):
    """The daemon refused the security handshake (CurveZMQ): wrong or unauthorised keys."""


class Client:
    """Talks to one daemon endpoint. Not thread-safe: use one Client per thread."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout: float = 30.0,
        context: zmq.Context | None = None,
        frames: bool = False,
        session: str | None = None,
        server_key: str | bytes | Path | None = None,
        client_key: str | Path | tuple[bytes, bytes] | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        """`frames=True` sends and receives large image data as extra ZeroMQ frames instead of inside
        the msgpack map (fewer copies; needs a daemon whose welcome lists the feature "frames").
        `session`: a token from an earlier `welcome` (e.g. saved before an editor restart): `hello`
        resumes it. `server_key` (the daemon's public key: z85 text or a `server.key` file) and
        `client_key` (this client's `NAME.key_secret` file, or a (public, secret) z85 pair) turn on
        CurveZMQ; they default to the files named by $UNDERPAINT_SERVER_KEY / $UNDERPAINT_CLIENT_KEY.
        `connect_timeout`: how long a request waits for a link before `DaemonUnavailable`
        (default: the smaller of `timeout` and 3 s)."""
        self.endpoint = endpoint
        self.timeout = timeout
        self.frames = frames
        self.connect_timeout = min(timeout, 3.0) if connect_timeout is None else connect_timeout
        self.session: str | None = session
        self.resumed = False
        self.welcome: dict[str, Any] | None = None
        self._curve = curve_keys(server_key, client_key)
        self._ctx = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._next_id = 0
        self._name = "underpaint-python"
        self._inbox: deque[dict[str, Any]] = deque()
        self._made: deque[dict[str, Any]] = deque()  # events this client made (job_lost, fetched ends)
        self._open: dict[str, Any] = {}  # jobs without a final event yet -> their submit's `re`
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._internal: dict[int, tuple[str, str]] = {}  # request id -> ("resume", "") | ("fetch", job)
        self._connect()

    # -- connection -------------------------------------------------------------------------
    def _connect(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # no link, no queued request: it would run much later
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TTL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if self._curve is not None:
            server, public, secret = self._curve
            sock.setsockopt(zmq.CURVE_SERVERKEY, server)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self._monitor = sock.get_monitor_socket(_WATCHED)
        sock.connect(self.endpoint)
        self._socket = sock
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._up = False
        self._down_since = time.monotonic()
        self._refused: str | None = None
        self._resume_on_link = self.session is not None and self.welcome is not None

    @property
    def connected(self) -> bool:
        """Whether there is a live link to the daemon now (false within ~3 s of losing it)."""
        self._watch_link()
        return self._up

    def _watch_link(self) -> None:
        """Read the socket monitor: link up, down, or refused."""
        while self._monitor is not None:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = event["event"]
            if kind == _UP:
                self._up, self._refused = True, None
                if self._resume_on_link:
                    self._resume_on_link = False
                    self._resume()
            elif kind == zmq.EVENT_DISCONNECTED or kind in _REFUSED:
                if self._up:
                    self._down_since = time.monotonic()
                self._up = False
                self._refused = _REFUSED.get(kind, self._refused)
                self._resume_on_link = self.welcome is not None and self.session is not None

    def _resume(self) -> None:
        """A new link: take the session back (hello with its token) without the caller's help."""
        try:
            rid = self._send_now("hello", protocol=PROTOCOL_VERSION, client=self._name, session=self.session)
        except DaemonUnavailable:
            self._resume_on_link = True
            return
        self._internal[rid] = ("resume", "")

    def reset(self) -> None:
        """Drop the socket and every message waiting on it, then connect afresh (the session
        resumes by itself once the new link is up; its jobs' ends are fetched again)."""
        self._close_socket()
        self._inbox.clear()
        self._internal.clear()
        self._connect()

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.disable_monitor()
            self._socket.close(0)
            self._socket = None
        if self._monitor is not None:
            self._monitor.close(0)
            self._monitor = None

    def close(self) -> None:
        self._close_socket()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _link_problem(self) -> DaemonUnavailable:
        if self._refused:
            return DaemonRefused(f"{self._refused} (daemon at {self.endpoint})")
        return DaemonUnavailable(
            f"no connection to the Underpaint daemon at {self.endpoint} "
            "(is `underpaint serve` running there?)"
        )

    def _wait_for_link(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        self._watch_link()
        while not self._up and self._refused is None:
            left = deadline - time.monotonic()
            if left <= 0 or self._monitor is None:
                break
            if self._monitor.poll(max(1, int(min(left, 0.1) * 1000))):
                self._watch_link()
        if not self._up:
            raise self._link_problem()

    # -- low level: non-blocking friendly -----------------------------------------------------
    def send(self, type_: str, **fields: Any) -> int:
        """Send one request and return its request id (echoed as `re` in replies). Waits at most
        `connect_timeout` for a link, else raises DaemonUnavailable (the request is not kept)."""
        assert self._socket is not None, "client is closed"
        self._wait_for_link(self.connect_timeout)
        return self._send_now(type_, **fields)

    def _send_now(self, type_: str, **fields: Any) -> int:
        assert self._socket is not None, "client is closed"
        self._next_id += 1
        message = {"type": type_, "id": self._next_id, **fields}
        try:
            if self.frames:
                header, payloads = split_frames(message)
                self._socket.send_multipart([pack(header), *payloads], zmq.NOBLOCK, copy=False)
            else:
                self._socket.send(pack(message), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise self._link_problem() from None
        return self._next_id

    def poll(self, timeout: float | None = 0) -> dict[str, Any] | None:
        """Return the next message (inbox first), waiting up to `timeout` s (None = forever)."""
        if self._inbox:
            return self._inbox.popleft()
        return self._next(None if timeout is None else time.monotonic() + timeout, strict=False)

    def _next(self, deadline: float | None, strict: bool) -> dict[str, Any] | None:
        """The next message for the caller (events made here first), None at `deadline`. `strict`:
        raise DaemonUnavailable once the link has been down for longer than `timeout`."""
        while True:
            if self._made:
                return self._made.popleft()
            if strict and not self._up and time.monotonic() - self._down_since > self.timeout:
                raise self._link_problem()
            left = None if deadline is None else deadline - time.monotonic()
            wait = 0.5 if left is None else max(0.0, min(left, 0.5))
            ready = dict(self._poller.poll(int(wait * 1000)))
            if self._monitor in ready:
                self._watch_link()
            if self._socket in ready:
                message = self._receive()
                if message is not None:
                    return message
                continue  # consumed by the client itself: look again at once
            if left is not None and left <= wait:
                return None if not self._made else self._made.popleft()

    def _receive(self) -> dict[str, Any] | None:
        """One message from the socket, after the client's own bookkeeping (None if it was the
        answer to a request the client made by itself, or a duplicate final event)."""
        assert self._socket is not None, "client is closed"
        try:
            parts = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        message = unpack(parts[0].buffer)
        if not isinstance(message, dict):
            return None
        if len(parts) > 1:
            attach_frames(message, [part.buffer for part in parts[1:]])
        return self._note(message)

    def _note(self, message: dict[str, Any]) -> dict[str, Any] | None:
        rid = message.get("re")
        internal = self._internal.pop(rid, None) if isinstance(rid, int) else None
        kind = message.get("type")
        if internal is not None:
            if internal[0] == "resume" and kind == "welcome":
                self._welcomed(message)
            elif internal[0] == "fetch" and isinstance(message.get("event"), dict):
                return self._final(message["event"])
            return None
        if kind == "welcome":
            self._welcomed(message)
        elif kind == "accepted" and isinstance(message.get("job"), str):
            self._open[message["job"]] = rid
        elif kind in TERMINAL_EVENTS and isinstance(message.get("job"), str):
            return self._final(message)
        return message

    def _final(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """A job's final event, once: a second copy (sent again around a reconnect) is dropped."""
        job = event.get("job")
        if job in self._finished:
            return None
        self._open.pop(job, None)
        self._finished[job] = None
        while len(self._finished) > _REMEMBER_FINISHED:
            self._finished.popitem(last=False)
        return event

    def _welcomed(self, welcome: dict[str, Any]) -> None:
        """Adopt the session; end the jobs the daemon no longer knows, fetch those that finished."""
        self.welcome = welcome
        self.session = welcome.get("session", self.session)
        self.resumed = bool(welcome.get("resumed"))
        known = {j.get("job"): j for j in welcome.get("jobs") or [] if isinstance(j, dict)}
        for job, rid in list(self._open.items()):
            entry = known.get(job)
            if entry is None:
                self._open.pop(job)
                self._made.append(_lost(job, rid))
            elif entry.get("state") == "done":
                try:
                    self._internal[self._send_now("fetch", job=job, frames=self.frames)] = ("fetch", job)
                except DaemonUnavailable:
                    pass
        for job, entry in known.items():
            if entry.get("state") in ("queued", "running") and job not in self._open:
                self._open[job] = None

    def _take(self, match: Callable[[dict[str, Any]], bool], timeout: float | None) -> dict | None:
        """Return the first message (inbox or socket) that `match`es, keeping the others."""
        for i, message in enumerate(self._inbox):
            if match(message):
                del self._inbox[i]
                return message
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._next(deadline, strict=True)
            if message is None:
                return None
            if match(message):
                return message
            self._inbox.append(message)

    # -- requests ------------------------------------------------------------------------------
    def request(self, type_: str, *, timeout: float | None = None, **fields: Any) -> dict:
        """Send a request and wait for its direct reply; raise DaemonError on an `error` reply."""
        wait = self.timeout if timeout is None else timeout
        self._wait_for_link(min(wait, self.connect_timeout))
        rid = self._send_now(type_, **fields)
        reply = self._take(lambda m: _is_reply(m, rid), wait)
        if reply is None:
            raise TimeoutError(
                f"no answer from the Underpaint daemon at {self.endpoint} within {wait:g} s "
                "(is `underpaint serve` running there?)"
            )
        if reply.get("type") == "error":
            if reply.get("code") == ErrorCode.PROTOCOL_MISMATCH:
                raise ProtocolMismatch(reply)
            raise DaemonError(reply)
        return reply

    def hello(
        self, client: str = "underpaint-python", timeout: float | None = None, session: str | None = None
    ) -> dict[str, Any]:
        """Handshake: returns the daemon's `welcome` (ops, models, device, limits, session). Resumes
        `session`, or the session this client already has; `resumed` says whether that worked."""
        self._name = client
        fields: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "client": client}
        token = session or self.session
        if token:
            fields["session"] = token
        return self.request("hello", timeout=timeout, **fields)

    def submit(
        self,
        op: str,
        params: dict[str, Any] | None = None,
        images: dict[str, dict[str, Any]] | None = None,
        *,
        model: str | None = None,
        preview: bool = False,
        lane: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Queue a job; returns its job id (raises DaemonError if the daemon refuses it).

        `lane` (1 … 64 characters, feature "lanes"): latest wins. This job replaces the queued or
        running job of the same lane of this session, which ends with `cancelled` `reason`
        `"superseded"` (JobCancelled in `wait`); a live preview sends every change in one lane.
        """
        fields: dict[str, Any] = {"op": op, "params": params or {}, "images": images or {}}
        if model is not None:
            fields["model"] = model
        if lane is not None:
            fields["lane"] = lane
        if preview:
            fields["preview"] = True
        if self.frames:
            fields["frames"] = True
        return str(self.request("submit", timeout=timeout, **fields)["job"])

    def events(self, job: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield the events of `job` until (and including) its terminal event.

        `timeout` bounds the wait for each next event (None = forever); TimeoutError when exceeded,
        DaemonUnavailable when the link has been down for longer than the client's `timeout`.
        """
        while True:
            event = self._take(lambda m: m.get("job") == job and m.get("type") not in _NOT_EVENTS, timeout)
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
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Wait for `job` to finish and return its `result`.

        `on_progress` gets its `progress` events; `on_event` every other event before its end
        (`loading` while a model loads, and types newer than this client, which it may ignore).
        Raises DaemonError if it failed (code `job_lost` if the daemon restarted meanwhile) and
        JobCancelled if it was cancelled.
        """
        for event in self.events(job, timeout):
            kind = event.get("type")
            if kind == "progress":
                if on_progress is not None:
                    on_progress(event)
            elif kind not in TERMINAL_EVENTS:
                if on_event is not None:
                    on_event(event)
            elif kind == "result":
                return event
            elif kind == "cancelled":
                raise JobCancelled(job, str(event.get("reason") or "client"), event.get("by"))
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
        lane: str | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Submit a job and wait for its result (see `submit` and `wait`; JobCancelled with `by` when
        a newer job of its `lane` replaced it)."""
        job = self.submit(op, params, images, model=model, preview=preview, lane=lane)
        return self.wait(job, on_progress, timeout, on_event)

    def cancel(self, job: str, timeout: float | None = None) -> dict[str, Any]:
        """Ask the daemon to cancel `job` (or a queued load); its end follows (see `wait`)."""
        return self.request("cancel", timeout=timeout, job=job)

    def fetch(self, job: str, timeout: float | None = None) -> dict[str, Any]:
        """A job of this session by id: `{state, event?}`; `event` is its final event once done.
        DaemonError `result_expired` once the daemon no longer keeps it."""
        fields: dict[str, Any] = {"job": job}
        if self.frames:
            fields["frames"] = True
        return self.request("fetch", timeout=timeout, **fields)

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


_DIRECT_REPLIES = frozenset(
    {"welcome", "accepted", "status", "models", "ack", "loaded", "unloaded", "fetched"}
)
# Replies that carry `job` but are not events of it.
_NOT_EVENTS = frozenset({"ack", "fetched", "loaded", "accepted"})


def loading_text(event: dict[str, Any]) -> str:
    """A `loading` event as one line for a painter: "Loading <what>… 12 s (340 MB of 2.0 GB)"."""
    return f"Loading {loading_detail(event)}"


def _is_reply(message: dict[str, Any], rid: int) -> bool:
    """A direct reply answers request `rid`; job events and errors of accepted jobs carry `job`."""
    if message.get("re") != rid:
        return False
    kind = message.get("type")
    return kind in _DIRECT_REPLIES or (kind == "error" and not message.get("job"))


def _lost(job: str, rid: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "error",
        "job": job,
        "code": ErrorCode.JOB_LOST,
        "message": f"the daemon restarted (or forgot this client's session) while job {job} was queued "
        "or running: it is lost; submit it again",
    }
    if rid is not None:
        event["re"] = rid
    return event


# -- CurveZMQ keys ---------------------------------------------------------------------------------
def curve_keys(
    server_key: str | bytes | Path | None, client_key: str | Path | tuple[bytes, bytes] | None
) -> tuple[bytes, bytes, bytes] | None:
    """(server public, client public, client secret) as z85, or None when keys are not used."""
    server_key = server_key or os.environ.get(SERVER_KEY_ENV) or None
    client_key = client_key or os.environ.get(CLIENT_KEY_ENV) or None
    if server_key is None and client_key is None:
        return None
    if server_key is None or client_key is None:
        raise ValueError(
            "CurveZMQ needs both the daemon's public key (server_key / $UNDERPAINT_SERVER_KEY) and this "
            "client's key pair (client_key / $UNDERPAINT_CLIENT_KEY)"
        )
    server = _z85_or_file(server_key, secret=False)[0]
    if isinstance(client_key, tuple):
        public, secret = (_as_bytes(k) for k in client_key)
    else:
        public, maybe = _z85_or_file(client_key, secret=True)
        if maybe is None:
            raise ValueError(f"{client_key}: holds no secret key (give the NAME.key_secret file)")
        secret = maybe
    return server, public, secret


def _z85_or_file(value: str | bytes | Path, secret: bool) -> tuple[bytes, bytes | None]:
    """A 40-character z85 key as is, else a ZeroMQ certificate file's (public, secret)."""
    if isinstance(value, (str, bytes)) and len(value) == 40 and not Path(os.fsdecode(value)).exists():
        return _as_bytes(value), None
    from zmq.auth import load_certificate

    path = Path(os.fsdecode(value))
    if not path.is_file():
        raise ValueError(f"key file {path} does not exist")
    public, secret_key = load_certificate(path)
    return public, secret_key if secret else None


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("ascii") if isinstance(value, str) else value
