"""The docker's link to the daemon: handshake, heartbeat, automatic reconnect and job events.

Never blocks: `tick()` is called from a Qt timer on Krita's UI thread and only uses the protocol
client's non-blocking `send()` and `poll(0)`. A client that refuses to send while it has no link to
the daemon (it raises a TimeoutError such as `DaemonUnavailable`) is asked not to wait for one, and
the request is tried again on a later tick. Pure Python apart from the vendored protocol (pyzmq,
msgpack), so it is tested outside Krita against a real daemon.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any

from .deps import dependency_problem
from .jobs import Job, JobState

PLUGIN_VERSION = "0.1.0"
CLIENT_NAME = f"underpaint-krita/{PLUGIN_VERSION}"
DEFAULT_ENDPOINT = "tcp://127.0.0.1:57321"  # the daemon's default (PROTOCOL.md section 1)


class ConnState(enum.Enum):
    NO_DEPENDENCIES = "missing dependencies"
    INVALID = "invalid endpoint"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DOWN = "daemon not running"
    INCOMPATIBLE = "incompatible daemon"
    CLOSED = "closed"


class NotConnected(RuntimeError):
    """submit() while there is no daemon to talk to."""


class Connection:
    """One DEALER socket to one endpoint, plus the jobs submitted through it."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        on_change: Callable[[], None] | None = None,
        on_job: Callable[[Job, str, dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        hello_timeout: float = 3.0,
        heartbeat_interval: float = 2.0,
        heartbeat_timeout: float = 10.0,
        incompatible_retry: float = 10.0,
        client_name: str = CLIENT_NAME,
    ) -> None:
        self.endpoint = endpoint.strip()
        self.on_change = on_change or (lambda: None)
        self.on_job = on_job or (lambda job, kind, message: None)
        self.clock = clock
        self.hello_timeout = hello_timeout
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.incompatible_retry = incompatible_retry
        self.client_name = client_name
        self.state = ConnState.CLOSED
        self.message = ""
        self.welcome: dict[str, Any] | None = None
        self.daemon_status: dict[str, Any] | None = None
        self.jobs: list[Job] = []
        self._protocol: Any = None
        self._client: Any = None
        self._hello_rid: int | None = None
        self._hello_at = 0.0
        self._status_rid: int | None = None
        self._status_at = 0.0
        self._cancel_rids: set[int] = set()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect (or reconnect) to `endpoint` and say hello; the answer arrives through tick()."""
        problem = dependency_problem()
        if problem:
            self._set(ConnState.NO_DEPENDENCIES, problem)
            return
        from . import protocol

        self._protocol = protocol
        self._drop_client()
        self._open(ConnState.CONNECTING, f"connecting to {self.endpoint} ...")

    def set_endpoint(self, endpoint: str, *, force: bool = False) -> None:
        """Switch daemons (the jobs on the old one are cancelled there); `force` reconnects anyway."""
        endpoint = endpoint.strip()
        if (
            not force
            and endpoint == self.endpoint
            and self.state not in (ConnState.CLOSED, ConnState.INVALID)
        ):
            return
        self._abandon_jobs("cancelled: the endpoint changed", send_cancel=True)
        self.endpoint = endpoint
        self.start()

    def close(self, wait: float = 1.0) -> None:
        """Cancel our jobs on the daemon (waiting up to `wait` s for it to hear us) and drop the socket."""
        if self._client is not None and self.state is ConnState.CONNECTED:
            live = [job for job in self.jobs if job.job_id and not job.finished]
            for job in live:
                self._send_cancel(job)
            deadline = time.monotonic() + wait
            pending = {job.job_id for job in live}
            while pending and time.monotonic() < deadline:
                message = self._client.poll(max(0.0, deadline - time.monotonic()))
                if message is None:
                    break
                if message.get("type") in ("cancelled", "result", "error") or (
                    message.get("type") == "ack" and message.get("re") in self._cancel_rids
                ):
                    pending.discard(message.get("job"))
        self._abandon_jobs("cancelled: the plugin closed", send_cancel=False)
        self._drop_client()
        self._set(ConnState.CLOSED, "closed")

    # -- jobs ------------------------------------------------------------------------------------
    def submit(
        self,
        op: str,
        params: dict[str, Any],
        images: dict[str, dict[str, Any]],
        *,
        model: str | None = None,
        preview: bool = True,
        context: Any = None,
    ) -> Job:
        if self.state is not ConnState.CONNECTED or self._client is None:
            raise NotConnected(self.message or "not connected to the Underpaint daemon")
        fields: dict[str, Any] = {"op": op, "params": params, "images": images, "preview": bool(preview)}
        if model:
            fields["model"] = model
        try:
            rid = self._client.send("submit", **fields)
        except TimeoutError as exc:  # no link right now (the daemon went away a moment ago)
            raise NotConnected(str(exc)) from exc
        job = Job(rid=rid, op=op, context=context)
        self.jobs.append(job)
        return job

    def cancel(self, job: Job) -> None:
        """Ask for a cancel; before `accepted` it is sent as soon as the job id is known."""
        job.request_cancel()
        if job.job_id and not job.cancel_sent and self._client is not None:
            self._send_cancel(job)

    def active_jobs(self) -> list[Job]:
        return [job for job in self.jobs if not job.finished]

    # -- the timer's work ------------------------------------------------------------------------
    def tick(self, max_messages: int = 50) -> None:
        """Handle what arrived, run timeouts, heartbeats and reconnects. Never blocks."""
        if self._client is None:
            return
        now = self.clock()
        for _ in range(max_messages):
            try:
                message = self._client.poll(0)
            except Exception as exc:  # not msgpack: something else listens on that port
                self._abandon_jobs(f"unreadable message from {self.endpoint}", send_cancel=False)
                self._down(f"Unreadable message from {self.endpoint} ({exc}); is that an Underpaint daemon?")
                return
            if message is None:
                break
            self._dispatch(message, now)
            if self._client is None:
                return
        if self.state in (ConnState.CONNECTING, ConnState.DOWN) and self._hello_rid is None:
            self._say_hello()  # the client had no link yet at the last try
        if self.state in (ConnState.CONNECTING, ConnState.DOWN) and now - self._hello_at > self.hello_timeout:
            self._down(
                f"No Underpaint daemon answers at {self.endpoint}. Start it with `underpaint serve` "
                "(or check the endpoint); retrying every few seconds."
                if self.state is ConnState.CONNECTING or not self.message
                else self.message
            )
        elif self.state is ConnState.INCOMPATIBLE and now - self._hello_at > self.incompatible_retry:
            self._open(ConnState.INCOMPATIBLE, self.message)
        elif self.state is ConnState.CONNECTED:
            if self._status_rid is None and now - self._status_at >= self.heartbeat_interval:
                try:
                    self._status_rid, self._status_at = self._client.send("status"), now
                except TimeoutError:  # the client says the link is gone
                    self._abandon_jobs(
                        f"lost the connection to the daemon at {self.endpoint}", send_cancel=False
                    )
                    self._down(f"Lost the Underpaint daemon at {self.endpoint}; reconnecting.")
                    return
            elif self._status_rid is not None and now - self._status_at > self.heartbeat_timeout:
                self._abandon_jobs(f"lost the connection to the daemon at {self.endpoint}", send_cancel=False)
                self._down(
                    f"Lost the Underpaint daemon at {self.endpoint} (stopped or not answering); reconnecting."
                )
            for job in self.jobs:
                if job.cancel_requested and job.job_id and not job.cancel_sent and not job.finished:
                    self._send_cancel(job)
        self.jobs = [job for job in self.jobs if not job.finished]

    # -- internals -------------------------------------------------------------------------------
    def _dispatch(self, message: dict[str, Any], now: float) -> None:
        kind, re = message.get("type"), message.get("re")
        if re is not None and re == self._hello_rid:
            self._on_hello_reply(message, now)
            return
        if re is not None and re == self._status_rid and kind in ("status", "error"):
            self._status_rid = None
            if kind == "status":
                self._on_status(message)
            return
        if re is not None and re in self._cancel_rids and kind in ("ack", "error") and not message.get("job"):
            self._cancel_rids.discard(re)  # unknown_job: it finished on its own meanwhile
            return
        if kind == "ack":
            return
        for job in self.jobs:
            if job.matches(message):
                applied = job.handle(message)
                if applied == "accepted" and job.cancel_requested:
                    self._send_cancel(job)
                if applied:
                    self.on_job(job, applied, message)
                return

    def _on_hello_reply(self, message: dict[str, Any], now: float) -> None:
        self._hello_rid = None
        if message.get("type") == "welcome":
            self.welcome = message
            try:
                self._status_rid, self._status_at = self._client.send("status"), now
            except TimeoutError:
                self._status_rid, self._status_at = None, now  # asked again at the next heartbeat
            self._set(ConnState.CONNECTED, self.describe_welcome())
            return
        code = str(message.get("code", ""))
        if code == "protocol_mismatch":
            theirs = ", ".join(str(v) for v in message.get("supported") or []) or "?"
            ours = self._protocol.PROTOCOL_VERSION
            text = (
                f"The daemon at {self.endpoint} speaks protocol version {theirs}; this plugin speaks {ours}. "
                "Update the older of the two (pip install -U underpaint, then "
                "`underpaint install-plugin krita` and restart Krita)."
            )
        else:
            refused = message.get("message", code)
            text = f"The program at {self.endpoint} refused the Underpaint handshake: {refused}"
        self._set(ConnState.INCOMPATIBLE, text)

    def _on_status(self, message: dict[str, Any]) -> None:
        self.daemon_status = message
        known = {str(j.get("job")) for j in message.get("jobs") or [] if j.get("mine", True)}
        for job in self.jobs:
            if job.job_id and not job.finished:
                job.missing_from_status = 0 if job.job_id in known else job.missing_from_status + 1
                if job.missing_from_status >= 3:  # several replies in a row: not a race with its result
                    job.fail("the daemon no longer knows this job (was it restarted?)", "unknown_job")
                    self.on_job(
                        job, "error", {"type": "error", "code": "unknown_job", "message": job.message}
                    )
        self.on_change()

    def _open(self, state: ConnState, message: str) -> None:
        self._drop_client()
        try:
            self._client = self._new_client()
        except Exception as exc:  # zmq.ZMQError: bad endpoint text
            self._set(ConnState.INVALID, f"Cannot use the endpoint {self.endpoint!r}: {exc}")
            return
        self._hello_at = self.clock()
        self._say_hello()
        self._set(state, message)

    def _new_client(self) -> Any:
        """The protocol client, told never to wait for a link (if it is a client that would)."""
        try:
            return self._protocol.Client(self.endpoint, timeout=self.hello_timeout, connect_timeout=0.0)
        except TypeError:  # a client without `connect_timeout` queues requests and never waits
            return self._protocol.Client(self.endpoint, timeout=self.hello_timeout)

    def _say_hello(self) -> None:
        try:
            self._hello_rid = self._client.send(
                "hello", protocol=self._protocol.PROTOCOL_VERSION, client=self.client_name
            )
        except TimeoutError:  # no link yet: tick() tries again
            self._hello_rid = None

    def _down(self, message: str) -> None:
        """No answer: show why, and keep trying with a fresh socket (no stale requests queued)."""
        self.welcome = None
        self.daemon_status = None
        self._open(ConnState.DOWN, message)

    def _send_cancel(self, job: Job) -> None:
        if self._client is None or not job.job_id:
            return
        try:
            self._cancel_rids.add(self._client.send("cancel", job=job.job_id))
        except TimeoutError:  # no link at the moment: tick() sends it once there is one
            return
        job.cancel_sent = True

    def _abandon_jobs(self, reason: str, *, send_cancel: bool) -> None:
        for job in list(self.jobs):
            if job.finished:
                continue
            if send_cancel and self.state is ConnState.CONNECTED:
                self._send_cancel(job)
            if job.cancel_requested:
                job.state, job.message = JobState.CANCELLED, reason
                self.on_job(job, "cancelled", {"type": "cancelled", "job": job.job_id})
            else:
                job.fail(reason, "connection_lost")
                self.on_job(job, "error", {"type": "error", "code": "connection_lost", "message": reason})
        self.jobs = []

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None
        self._hello_rid = self._status_rid = None
        self._cancel_rids.clear()

    def _set(self, state: ConnState, message: str) -> None:
        changed = (state, message) != (self.state, self.message)
        self.state, self.message = state, message
        if changed:
            self.on_change()

    # -- text for the docker ---------------------------------------------------------------------
    def describe_welcome(self) -> str:
        w = self.welcome or {}
        daemon, device, dtype = w.get("daemon", "?"), w.get("device", "?"), w.get("dtype", "?")
        return f"Connected to Underpaint {daemon} on {device} ({dtype})"

    def describe(self) -> str:
        """One status line: connected / daemon version / device / queue, or what is wrong."""
        if self.state is not ConnState.CONNECTED:
            return self.message or self.state.value
        text = self.describe_welcome()
        status = self.daemon_status
        if status is not None:
            running = "busy" if status.get("running") else "idle"
            text += f" \u00b7 {running}, {int(status.get('queued') or 0)} queued"
        return text
