"""The docker's link to the daemon: handshake, liveness, resume after a drop, keys, and job events.

Never blocks: `tick()` is called from a Qt timer on Krita's UI thread and only uses the protocol
client's non-blocking `send()` and `poll(0)` (the client is told never to wait for a link).

Liveness is the client's: ZeroMQ heartbeats and a socket monitor turn `client.connected` false
within about 3 s of the daemon vanishing (at once when its process dies), and the docker says so.
The socket stays: ZeroMQ reconnects by itself and the client resumes the session with its token
(PROTOCOL.md 9.1), so a running job goes on and its events, or its result if it finished meanwhile,
arrive after the link is back. A job the daemon no longer knows (it restarted) ends with `job_lost`.
Jobs submitted before a Krita restart are `adopt`ed with the session token kept in `pending.py`.
Pure Python apart from the vendored protocol (pyzmq, msgpack), so it is tested outside Krita.
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
MISSING_CHECKS = 3  # status replies in a row without a job of ours before it is fetched
KEYS_WHERE = "Advanced > Daemon"


class ConnState(enum.Enum):
    NO_DEPENDENCIES = "missing dependencies"
    INVALID = "invalid endpoint"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DOWN = "daemon not running"
    LOST = "daemon lost"
    REFUSED = "refused"
    INCOMPATIBLE = "incompatible daemon"
    CLOSED = "closed"


class NotConnected(RuntimeError):
    """submit() while there is no daemon to talk to."""


Keys = tuple[str, str]  # (the daemon's server.key, this client's NAME.key_secret): file paths


class Connection:
    """One protocol client (one DEALER socket) to one endpoint, plus the jobs of its session."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        keys: Keys | None = None,
        session: str | None = None,
        on_change: Callable[[], None] | None = None,
        on_job: Callable[[Job, str, dict[str, Any]], None] | None = None,
        on_session: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        hello_timeout: float = 3.0,
        status_interval: float = 2.0,
        incompatible_retry: float = 10.0,
        client_name: str = CLIENT_NAME,
    ) -> None:
        """`keys` turn on CurveZMQ (PROTOCOL.md 1.2); `session` is a token to resume (a Krita
        restart); `on_session` hears every new token, to keep it for the next restart."""
        self.endpoint = endpoint.strip()
        self.keys = keys
        self.on_change = on_change or (lambda: None)
        self.on_job = on_job or (lambda job, kind, message: None)
        self.on_session = on_session or (lambda token: None)
        self.clock = clock
        self.hello_timeout = hello_timeout
        self.status_interval = status_interval
        self.incompatible_retry = incompatible_retry
        self.client_name = client_name
        self.state = ConnState.CLOSED
        self.message = ""
        self.welcome: dict[str, Any] | None = None
        self.daemon_status: dict[str, Any] | None = None
        self.jobs: list[Job] = []
        self.lost_at: float | None = None  # when the link was lost (None: it was not)
        self._session = session
        self._protocol: Any = None
        self._client: Any = None
        self._hello_rid: int | None = None
        self._hello_at = 0.0
        self._opened_at = 0.0
        self._up_since: float | None = None  # LOST: since when the link is up again (no welcome yet)
        self._status_rid: int | None = None
        self._status_at = 0.0
        self._cancel_rids: set[int] = set()
        self._fetch_rids: dict[int, str] = {}
        self._cancel_later: set[str] = set()  # cancelled while the daemon was out of reach
        self._dropped_rids: set[int] = set()  # submits cancelled before `accepted`: cancel on arrival

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect to `endpoint` and say hello (resuming `session` if there is one); the answer
        arrives through tick()."""
        problem = dependency_problem()
        if problem:
            self._set(ConnState.NO_DEPENDENCIES, problem)
            return
        from . import protocol

        self._protocol = protocol
        self._open(ConnState.CONNECTING, f"connecting to {self.endpoint} ...", self._session)

    @property
    def session(self) -> str | None:
        """This connection's session token (None before the first welcome of a fresh start)."""
        if self._client is not None and self._client.session:
            return str(self._client.session)
        return self._session

    @property
    def connected(self) -> bool:
        return self.state is ConnState.CONNECTED

    def set_endpoint(
        self, endpoint: str, *, keys: Keys | None = None, session: str | None = None, force: bool = False
    ) -> None:
        """Switch daemons or keys (the jobs on the old daemon are cancelled there). The same endpoint
        and keys with `force` reconnect now: a new socket resumes the session, its jobs go on."""
        endpoint = endpoint.strip()
        same = endpoint == self.endpoint and keys == self.keys
        if same and self.state not in (ConnState.CLOSED, ConnState.INVALID, ConnState.NO_DEPENDENCIES):
            if force and self._protocol is not None:
                self._fail_unaccepted("the connection was renewed before the daemon accepted the job")
                self._open(ConnState.CONNECTING, f"reconnecting to {self.endpoint} ...", self.session)
            return
        if not same:
            self._abandon_jobs("cancelled: the daemon or its keys changed", send_cancel=True)
        self.endpoint, self.keys, self._session = endpoint, keys, session
        self.welcome = self.daemon_status = None
        self.start()

    def close(self, wait: float = 1.0, keep: Callable[[Job], bool] | None = None) -> None:
        """Drop the socket. Jobs that `keep` names go on on the daemon (their session is resumed after
        a restart); the others are cancelled there (waiting up to `wait` s for it to hear us)."""
        keep = keep or (lambda job: False)
        kept = [job for job in self.jobs if not job.finished and job.job_id and keep(job)]
        self.jobs = [job for job in self.jobs if job not in kept]
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
        lane: str | None = None,
    ) -> Job:
        """Send a submit; `lane` (PROTOCOL.md 9.6): this job supersedes the older one of that lane."""
        if self.state is not ConnState.CONNECTED or self._client is None:
            raise NotConnected(self.message or "not connected to the Underpaint daemon")
        fields: dict[str, Any] = {"op": op, "params": params, "images": images, "preview": bool(preview)}
        if model:
            fields["model"] = model
        if lane:
            fields["lane"] = lane
        try:
            rid = self._client.send("submit", **fields)
        except TimeoutError as exc:  # no link right now (the daemon went away a moment ago)
            raise NotConnected(str(exc)) from exc
        job = Job(rid=rid, op=op, context=context)
        self.jobs.append(job)
        return job

    def adopt(self, job_id: str, op: str, context: Any = None) -> Job:
        """A job of this session submitted before a Krita restart: its events (or its kept result,
        fetched once the session is resumed) come to it like to any other job."""
        job = Job(rid=-1, op=op, context=context, job_id=job_id, state=JobState.QUEUED, adopted=True)
        self.jobs.append(job)
        if self.state is ConnState.CONNECTED and self.welcome is not None:
            self._reconcile_job(job, self.welcome)
        return job

    def cancel(self, job: Job) -> None:
        """Ask for a cancel; before `accepted` it is sent as soon as the job id is known. Without a
        link the job ends here at once and the daemon is told when it is back."""
        job.request_cancel()
        if job.finished:
            return
        if self.state is not ConnState.CONNECTED:
            if job.job_id:
                self._cancel_later.add(job.job_id)
            else:
                self._dropped_rids.add(job.rid)
            job.state, job.message = JobState.CANCELLED, "cancelled (the daemon is told when it is back)"
            self.on_job(job, "cancelled", {"type": "cancelled", "job": job.job_id, "reason": "client"})
            return
        if job.job_id and not job.cancel_sent and self._client is not None:
            self._send_cancel(job)

    def active_jobs(self) -> list[Job]:
        return [job for job in self.jobs if not job.finished]

    # -- the timer's work ------------------------------------------------------------------------
    def tick(self, max_messages: int = 50) -> None:
        """Handle what arrived, follow the link, resume, poll status. Never blocks."""
        if self._client is None:
            return
        now = self.clock()
        for _ in range(max_messages):
            try:
                message = self._client.poll(0)
            except Exception as exc:  # not msgpack: something else listens on that port
                self._abandon_jobs(f"unreadable message from {self.endpoint}", send_cancel=False)
                text = f"Unreadable message from {self.endpoint} ({exc}); is that an Underpaint daemon?"
                self._open(ConnState.DOWN, text, None)
                return
            if message is None:
                break
            self._dispatch(message, now)
            if self._client is None:
                return
        self._follow_link(now)
        if self.state is ConnState.CONNECTED:
            if self._status_rid is None and now - self._status_at >= self.status_interval:
                try:
                    self._status_rid, self._status_at = self._client.send("status"), now
                except TimeoutError:  # the link went a moment ago: the next tick says so
                    pass
            for job in self.jobs:
                if job.cancel_requested and job.job_id and not job.cancel_sent and not job.finished:
                    self._send_cancel(job)
        for job in self.jobs:
            if job.state is JobState.SUBMITTING and job.orphaned_at is not None:
                if now - job.orphaned_at > self.hello_timeout:
                    why = "the link to the daemon dropped while the job was being sent; press Generate again"
                    self._end(job, "connection_lost", why)
        self.jobs = [job for job in self.jobs if not job.finished]

    # -- internals: the link ----------------------------------------------------------------------
    def _follow_link(self, now: float) -> None:
        """Link up or down (heartbeats), a new welcome (ours or the client's own resume), hellos."""
        client = self._client
        welcome = client.welcome
        if welcome is not None and welcome is not self.welcome and self.state is not ConnState.INCOMPATIBLE:
            self._welcomed(welcome, now)
        up = client.connected
        if self.state is ConnState.CONNECTED:
            if not up:
                self.lost_at, self.daemon_status, self._status_rid = now, None, None
                self._up_since = None
                waiting = " Jobs go on there and resume when it is back." if self.active_jobs() else ""
                self._set(
                    ConnState.LOST,
                    f"Lost the Underpaint daemon at {self.endpoint}; waiting for it to come back.{waiting}",
                )
            return
        if self.state is ConnState.INCOMPATIBLE:
            if now - self._hello_at > self.incompatible_retry:
                self._open(ConnState.INCOMPATIBLE, self.message, self.session)
            return
        if self.state not in (ConnState.CONNECTING, ConnState.DOWN, ConnState.LOST, ConnState.REFUSED):
            return
        if self.state is ConnState.LOST:  # the client resumes by itself once the link is up
            self._up_since = (self._up_since or now) if up else None
            if self._up_since is None or now - self._up_since < self.hello_timeout:
                return
        if self._hello_rid is None or now - self._hello_at > self.hello_timeout:
            self._say_hello(now)
        if self.state is ConnState.CONNECTING and now - self._opened_at > self.hello_timeout:
            self._set(
                ConnState.DOWN,
                f"No Underpaint daemon answers at {self.endpoint}. Start it with `underpaint serve` "
                "(or check the endpoint); retrying every few seconds.",
            )

    def _say_hello(self, now: float) -> None:
        fields: dict[str, Any] = {"protocol": self._protocol.PROTOCOL_VERSION, "client": self.client_name}
        if self.session:
            fields["session"] = self.session
        try:
            self._hello_rid, self._hello_at = self._client.send("hello", **fields), now
        except self._protocol.DaemonRefused as exc:
            self._hello_rid = None
            self._set(ConnState.REFUSED, self._refusal(str(exc)))
        except TimeoutError:  # no link yet: tried again at the next tick
            self._hello_rid = None

    def _refusal(self, why: str) -> str:
        why = why.split(" (daemon at ")[0]
        if self.keys is None:  # the client's guess at the cause is about keys that were set
            return (
                f"The daemon at {self.endpoint} refused this plugin: it needs keys. Set its server key and "
                f"your client key (from `underpaint keygen`) under {KEYS_WHERE}, then Connect."
            )
        return (
            f"The daemon at {self.endpoint} refused this plugin's keys ({why}). Check that Server key is "
            "the daemon's server.key and that your client key's public half is in its authorized/ folder."
        )

    def _welcomed(self, welcome: dict[str, Any], now: float) -> None:
        """A welcome (the first, or after a reconnect): adopt the session, settle our jobs with what the
        daemon still knows, say connected."""
        self.welcome, self._hello_rid = welcome, None
        session = welcome.get("session")
        if isinstance(session, str) and session:
            self._session = session
            self.on_session(session)
        for job in list(self.jobs):
            self._reconcile_job(job, welcome)
        if welcome.get("resumed"):
            for job_id in list(self._cancel_later):
                self._send_cancel_id(job_id)
        self._cancel_later.clear()
        try:
            self._status_rid, self._status_at = self._client.send("status"), now
        except TimeoutError:
            self._status_rid, self._status_at = None, now
        self.lost_at = None
        self._set(ConnState.CONNECTED, self.describe_welcome())

    def _reconcile_job(self, job: Job, welcome: dict[str, Any]) -> None:
        """After a welcome: a job the daemon lists as done is fetched; one it does not list, or any job
        when the session was not resumed (the daemon restarted), is lost."""
        if job.finished:
            return
        if job.job_id is None:  # sent on the old link: its `accepted` may still come, or never
            if job.orphaned_at is None:
                job.orphaned_at = self.clock()
            return
        if not welcome.get("resumed"):
            why = (
                "the daemon was restarted (or forgot this session) while the job was queued or running: "
                "it is lost; press Generate again"
            )
            self._end(job, "job_lost", why)
            return
        known = {j.get("job"): j for j in welcome.get("jobs") or [] if isinstance(j, dict)}
        entry = known.get(job.job_id)
        if entry is None:
            self._end(
                job, "job_lost", "the daemon no longer knows this job (its result expired, or it restarted)"
            )
        elif entry.get("state") == "done":
            self._fetch(job)

    # -- internals: messages ----------------------------------------------------------------------
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
        if isinstance(re, int) and re in self._fetch_rids:
            self._on_fetched(self._fetch_rids.pop(re), message)
            return
        if kind in ("ack", "fetched", "welcome"):
            return
        if kind == "accepted" and re in self._dropped_rids:  # cancelled here while it was on its way
            self._dropped_rids.discard(re)
            self._send_cancel_id(str(message.get("job")))
            return
        self._to_job(message)

    def _to_job(self, message: dict[str, Any]) -> None:
        for job in self.jobs:
            if job.matches(message):
                applied = job.handle(message)
                if applied == "accepted" and job.cancel_requested:
                    self._send_cancel(job)
                if applied:
                    self.on_job(job, applied, message)
                return

    def _on_fetched(self, job_id: str, message: dict[str, Any]) -> None:
        """A `fetch` answer: the job's final event (as if it had just arrived), or why there is none."""
        if message.get("type") == "fetched":
            event = message.get("event")
            if message.get("state") == "done" and isinstance(event, dict):
                self._to_job({**event, "job": job_id})
            return
        if message.get("type") != "error":
            return
        code = str(message.get("code") or "")
        why = {
            "result_expired": "the daemon no longer keeps its result (it keeps results for a limited time)",
            "unknown_job": "the daemon does not know this job (it was restarted)",
            "not_owner": "the job belongs to another session",
        }.get(code, str(message.get("message") or code))
        for job in self.jobs:
            if job.job_id == job_id and not job.finished:
                self._end(job, code or "job_lost", why)

    def _on_hello_reply(self, message: dict[str, Any], now: float) -> None:
        self._hello_rid = None
        if message.get("type") == "welcome":
            if message is not self.welcome:
                self._welcomed(message, now)
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
        """The daemon's queue for the status line; a job of ours it no longer lists several times in a
        row is fetched (its final event may have been lost on the way)."""
        self.daemon_status = message
        known = {str(j.get("job")) for j in message.get("jobs") or [] if j.get("mine", True)}
        for job in self.jobs:
            if job.job_id and not job.finished:
                job.missing_from_status = 0 if job.job_id in known else job.missing_from_status + 1
                if job.missing_from_status >= MISSING_CHECKS:
                    job.missing_from_status = 0
                    self._fetch(job)
        self.on_change()

    # -- internals: sockets and requests ----------------------------------------------------------
    def _open(self, state: ConnState, message: str, session: str | None) -> None:
        """A new protocol client (socket), resuming `session` when given."""
        self._drop_client()
        now = self.clock()
        self._opened_at = self._hello_at = now
        try:
            self._client = self._new_client(session)
        except ValueError as exc:  # the key files
            self._set(ConnState.INVALID, f"Cannot use the keys set under {KEYS_WHERE}: {exc}")
            return
        except Exception as exc:  # zmq.ZMQError: bad endpoint text
            self._set(ConnState.INVALID, f"Cannot use the endpoint {self.endpoint!r}: {exc}")
            return
        self._set(state, message)
        self._say_hello(now)

    def _new_client(self, session: str | None) -> Any:
        """The protocol client, told never to wait for a link, with the session and keys."""
        server_key, client_key = self.keys if self.keys else (None, None)
        client = self._protocol.Client(
            self.endpoint,
            timeout=self.hello_timeout,
            connect_timeout=0.0,
            session=session,
            server_key=server_key or None,
            client_key=client_key or None,
        )
        if hasattr(client, "_name"):
            client._name = self.client_name  # the name its own resuming hello gives the daemon's log
        return client

    def _fetch(self, job: Job) -> None:
        if self._client is None or not job.job_id:
            return
        try:
            self._fetch_rids[self._client.send("fetch", job=job.job_id)] = job.job_id
        except TimeoutError:  # no link: the next welcome fetches it again
            pass

    def _send_cancel(self, job: Job) -> None:
        if job.job_id and self._send_cancel_id(job.job_id):
            job.cancel_sent = True

    def _send_cancel_id(self, job_id: str) -> bool:
        if self._client is None:
            return False
        try:
            self._cancel_rids.add(self._client.send("cancel", job=job_id))
        except TimeoutError:  # no link at the moment: tick() sends it once there is one
            return False
        return True

    def _end(self, job: Job, code: str, why: str) -> None:
        job.fail(why, code)
        self.on_job(job, "error", {"type": "error", "job": job.job_id, "code": code, "message": why})

    def _fail_unaccepted(self, why: str) -> None:
        for job in self.jobs:
            if not job.finished and job.job_id is None:
                self._end(job, "connection_lost", why)

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
                self._end(job, "connection_lost", reason)
        self.jobs = []

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None
        self._hello_rid = self._status_rid = None
        self._cancel_rids.clear()
        self._fetch_rids.clear()

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
