"""Talking to the daemon: handshake, submit, progress, and errors a user can act on.

Everything here raises `UserError` with a message meant for GIMP's error dialog (or a batch caller's
`get_last_error`): the daemon is down, speaks another protocol version, refused the job, or pyzmq /
msgpack are missing from GIMP's Python. No GIMP import: tested against a real daemon in pytest.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from . import CLIENT_NAME
from .keys import HOW, KeyFiles, refused_message, unanswered_hint
from .prompt_errors import prompt_error
from .request import JobRequest, UserError, fit_to_preset
from .steps import StepCount, asked_steps

HANDSHAKE_TIMEOUT = 5.0  # s: a daemon that is up answers `hello` in milliseconds
SUBMIT_TIMEOUT = 120.0  # s: sending and validating a large crop
PING_EVERY = 10.0  # s of silence before asking the daemon whether the job is still alive
PING_TIMEOUT = 10.0
GRACE = 5.0  # s to wait for a result after the daemon says the job is gone (it may be in flight)
FINAL_EVENTS = frozenset({"result", "cancelled", "error"})  # a job's last event (PROTOCOL.md 6)
RECONNECT_WAIT = 3.0  # s a lost link may take to come back (after ~3 s of silent heartbeats) mid-job

Progress = Callable[[float | None, str], None]  # (fraction or None to pulse, text)


def missing_dependency_message(exc: ImportError) -> str:
    name = getattr(exc, "name", None) or str(exc)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return (
        f"Underpaint cannot talk to its daemon: the Python module '{name}' is missing from GIMP's "
        f"Python ({sys.executable}, Python {py}). Underpaint needs pyzmq and msgpack there. "
        "Debian/Ubuntu: sudo apt install python3-zmq python3-msgpack; Fedora: sudo dnf install "
        f'python3-zmq python3-msgpack; otherwise: "{sys.executable}" -m pip install pyzmq msgpack. '
        "Then restart GIMP."
    )


def load_protocol() -> ModuleType:
    """The vendored protocol package; importing its client fails when pyzmq or msgpack is missing
    (the package itself loads lazily, so the stdlib-only `regions` imports without them)."""
    try:
        import underpaint_protocol
        import underpaint_protocol.client  # noqa: F401
    except ImportError as exc:
        raise UserError(missing_dependency_message(exc)) from exc
    return underpaint_protocol


def refused(reply: dict[str, Any], params: dict[str, Any]) -> UserError:
    """The UserError for an error reply of the daemon (a PromptError for prompt syntax)."""
    code, message = str(reply.get("code", "job_failed")), str(reply.get("message", ""))
    return prompt_error(reply, params) or UserError(daemon_error_message(code, message))


def daemon_error_message(code: str, message: str) -> str:
    if code == "job_lost":  # made by the protocol client: the daemon came back without the session
        return (
            "The Underpaint daemon restarted (or forgot this plug-in's session) while the job was queued "
            "or running: the job is lost; run it again."
        )
    hints = {
        "out_of_memory": " Try a smaller selection or fewer variations.",
        "model_unavailable": " Check the daemon's model presets and its log.",
        "queue_full": " Wait for your other jobs to finish.",
    }
    message = message.strip() or "no details"
    if not message.endswith((".", "!", "?")):
        message += "."
    return f"The Underpaint daemon reported {code}: {message}{hints.get(code, '')}"


class DaemonLost(UserError):
    """The link to the daemon went down during a job and did not come back in time; the daemon may
    still be running the job (its result can be fetched later: `pending`)."""


@dataclass
class Waiting:
    """A job this session waits for: its id, the asked steps (progress) and the params sent."""

    job: str
    steps: StepCount = field(default_factory=lambda: StepCount(0))
    params: dict[str, Any] = field(default_factory=dict)


class Session:
    """One connection to the daemon for one procedure call (or one resumed session).

    ZeroMQ heartbeats tell within about 3 s that the daemon is gone; the protocol client then
    reconnects and resumes the session by itself, so a link that comes back within `reconnect_wait`
    loses nothing. A link that stays down ends the wait with `DaemonLost`.
    """

    def __init__(
        self,
        endpoint: str,
        protocol: ModuleType | None = None,
        timeout: float = HANDSHAKE_TIMEOUT,
        ping_every: float = PING_EVERY,
        ping_timeout: float = PING_TIMEOUT,
        grace: float = GRACE,
        *,
        keys: KeyFiles | None = None,
        session: str | None = None,
        reconnect_wait: float = RECONNECT_WAIT,
    ):
        self.endpoint = endpoint
        self.keys = (keys or KeyFiles()).checked()
        self.ping_every, self.ping_timeout, self.grace = ping_every, ping_timeout, grace
        self.reconnect_wait = reconnect_wait
        self.proto = protocol or load_protocol()
        self._finished: dict[str, dict[str, Any]] = {}  # final events of jobs nobody waited for yet
        try:
            self.client = self.proto.Client(
                endpoint,
                timeout=timeout,
                session=session,
                server_key=self.keys.server or None,
                client_key=self.keys.client or None,
            )
        except ValueError as exc:  # a key file the protocol client cannot read
            raise UserError(f"The CurveZMQ key settings are not usable: {exc}. {HOW}") from exc
        except Exception as exc:  # zmq.ZMQError: a malformed endpoint
            raise UserError(f"Invalid Underpaint endpoint '{endpoint}' ({exc}); e.g. {_default()}") from exc
        try:
            self.welcome: dict[str, Any] = self.client.hello(CLIENT_NAME)
        except self.proto.DaemonRefused as exc:
            self.close()
            raise UserError(refused_message(endpoint, _why_refused(exc), self.keys)) from exc
        except TimeoutError as exc:
            self.close()
            raise UserError(
                f"The Underpaint daemon is not answering at {endpoint} (no reply within {timeout:g} s). "
                "Start it with `underpaint serve` (or check the endpoint argument), then try again."
                + unanswered_hint(self.keys)
            ) from exc
        except self.proto.ProtocolMismatch as exc:
            self.close()
            supported = exc.reply.get("supported") or []
            raise UserError(
                f"The Underpaint daemon at {endpoint} speaks protocol version(s) "
                f"{', '.join(map(str, supported)) or '?'}, this plug-in speaks "
                f"{self.proto.PROTOCOL_VERSION}. Update the older side (upgrade underpaint, then run "
                "`underpaint install-plugin gimp` again and restart GIMP)."
            ) from exc
        except self.proto.DaemonError as exc:
            self.close()
            raise UserError(daemon_error_message(exc.code, str(exc.reply.get("message", "")))) from exc

    @property
    def token(self) -> str:
        """This connection's session token (secret: it lets another connection take the session)."""
        return str(self.client.session or "")

    @property
    def resumed(self) -> bool:
        """Whether `session` named a session the daemon still knew (its jobs are ours again)."""
        return bool(self.client.resumed)

    def jobs(self) -> dict[str, dict[str, Any]]:
        """The session's jobs the daemon knows (from the welcome): id -> {state, op, event?}."""
        return {str(j.get("job")): j for j in self.welcome.get("jobs") or [] if isinstance(j, dict)}

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fit(self, request: JobRequest) -> JobRequest:
        """`request` checked against this daemon's presets, with only the params its preset takes."""
        return fit_to_preset(request, self.welcome)

    def run(
        self,
        request: JobRequest,
        progress: Progress | None = None,
        on_accepted: Callable[[str, int], None] | None = None,
    ) -> dict[str, Any]:
        """Submit `request` (fitted to its preset: `fit` is idempotent, call it first to learn what is
        left out) and wait for its result, reporting progress in the steps the user asked for; raises
        UserError (a `prompt_errors.PromptError` for a prompt the daemon cannot read, `DaemonLost`
        when the link went down for good). `on_accepted(job, asked_steps)` runs once the daemon has
        the job, before any wait: the caller stores what it needs to fetch the result later."""
        report = progress or _silent
        request = self.fit(request)
        steps = StepCount(asked_steps(request, self.welcome))
        accepted = self.submit(request)
        job = str(accepted["job"])
        if on_accepted is not None:
            on_accepted(job, steps.asked)
        report(None, f"Underpaint: {_waiting(int(accepted.get('position', 0)))}")
        return self.wait(Waiting(job, steps, request.params), report)

    def submit(self, request: JobRequest) -> dict[str, Any]:
        """Send a fitted request (with its lane, if any) and return the daemon's `accepted`, without
        waiting for the job (Live mode reads the events itself)."""
        fields: dict[str, Any] = {"op": request.op, "params": request.params, "images": request.images}
        if request.model:
            fields["model"] = request.model
        if request.lane:
            fields["lane"] = request.lane
        try:
            return dict(self.client.request("submit", timeout=SUBMIT_TIMEOUT, **fields))
        except TimeoutError as exc:
            raise UserError(f"The Underpaint daemon at {self.endpoint} stopped answering.") from exc
        except self.proto.DaemonError as exc:
            raise refused(exc.reply, request.params) from exc

    def fetch(self, job: str) -> dict[str, Any] | None:
        """A finished job's final event (`result`, `cancelled` or `error`), or None while it runs;
        UserError when the daemon no longer has it."""
        try:
            fetched = self.client.fetch(job, timeout=SUBMIT_TIMEOUT)
        except TimeoutError as exc:
            raise UserError(f"The Underpaint daemon at {self.endpoint} stopped answering.") from exc
        except self.proto.DaemonError as exc:
            if exc.code == "result_expired":
                ttl = float(self.limits().get("results_ttl_s") or 3600)
                raise UserError(
                    f"its result has expired: the daemon keeps results {_duration(ttl)} "
                    "(underpaint serve --results-ttl) within its memory budget"
                ) from exc
            if exc.code in ("unknown_job", "not_owner"):
                raise UserError("the daemon no longer knows it (it restarted since)") from exc
            raise UserError(daemon_error_message(exc.code, str(exc.reply.get("message", "")))) from exc
        return fetched.get("event") if fetched.get("state") == "done" else None

    def limits(self) -> dict[str, Any]:
        return dict(self.welcome.get("limits") or {})

    def wait(self, waiting: Waiting, report: Progress | None = None) -> dict[str, Any]:
        """Wait for the job's result (see `run`); final events of the session's other jobs that
        arrive meanwhile are kept for their own `wait`."""
        report = report or _silent
        early = self._finished.pop(waiting.job, None)
        if early is not None:
            return self.outcome(early, waiting, report)
        last_heard = time.monotonic()
        gone_since: float | None = None
        down_since: float | None = None
        while True:
            message = self.client.poll(0.2)
            now = time.monotonic()
            if self.client.connected:
                if down_since is not None:
                    down_since, last_heard = None, now
                    report(None, "Underpaint: connected again, the job goes on")
            elif down_since is None:
                down_since = now
                report(None, f"Underpaint: lost the daemon at {self.endpoint}, reconnecting")
            elif message is None and now - down_since > self.reconnect_wait:
                raise DaemonLost(self.lost_message())
            if message is None:
                if down_since is not None:
                    continue
                if gone_since is not None and now - gone_since > self.grace:
                    raise UserError("The Underpaint daemon lost the job (was it restarted?).")
                if now - last_heard > self.ping_every and gone_since is None:
                    gone_since = self._ping(waiting.job, report)
                    last_heard = time.monotonic()
                continue
            job = message.get("job")
            kind = message.get("type")
            if job != waiting.job:
                if isinstance(job, str) and kind in FINAL_EVENTS:
                    self._finished[job] = message  # another job of this session: its own wait
                continue
            last_heard = now
            if kind == "progress":
                step, total = int(message.get("step", 0)), max(1, int(message.get("total", 1)))
                report(*waiting.steps.update(step, total))
            elif kind == "loading":  # the model is loading (or downloading) before the first step
                seconds = float(message.get("elapsed_s") or 0.0)
                report(None, f"Underpaint: loading {message.get('what') or 'the model'}… {seconds:.0f} s")
            elif kind in FINAL_EVENTS:
                return self.outcome(message, waiting, report)

    def outcome(self, event: dict[str, Any], waiting: Waiting, report: Progress) -> dict[str, Any]:
        """The result, or the UserError a final event that is not one stands for."""
        kind = event.get("type")
        if kind == "result":
            report(1.0, "Underpaint: placing the result")
            return event
        if kind == "cancelled":
            reason = str(event.get("reason") or "client")
            if reason == "abandoned":
                raise UserError(
                    "The Underpaint daemon cancelled the job: no connection waited for it for "
                    f"{_duration(float(self.limits().get('session_grace_s') or 120))}."
                )
            if reason == "superseded":
                raise UserError("The Underpaint job was replaced by a newer one of its lane (Live mode).")
            raise UserError("The Underpaint job was cancelled.")
        raise refused(event, waiting.params)

    def lost_message(self) -> str:
        """The link stayed down: say so, and what happens to the job."""
        grace = float(self.limits().get("session_grace_s") or 120)
        ttl = float(self.limits().get("results_ttl_s") or 3600)
        return (
            f"Lost the Underpaint daemon at {self.endpoint}: the connection dropped, or its heartbeats "
            "stopped, and it did not come back within seconds (the daemon stopped, or the network is "
            "down). The job is kept on this image: once "
            "the daemon is reachable again, Filters > Underpaint > Fetch Pending Results (or any "
            "Underpaint filter on this image) places its result, as long as the daemon still has it: "
            f"it cancels a job no one waits for after {_duration(grace)} and keeps finished results "
            f"{_duration(ttl)}. Save the image to keep the job across a GIMP restart."
        )

    def _ping(self, job: str, report: Progress) -> float | None:
        """Ask for the job's status after a silence; return when it was found gone (else None)."""
        try:
            status = self.client.request("status", timeout=self.ping_timeout, job=job)
        except TimeoutError as exc:
            if not self.client.connected:
                return None  # the link went down meanwhile: `wait` handles that
            raise UserError(
                f"The Underpaint daemon at {self.endpoint} stopped answering while running the job."
            ) from exc
        except self.proto.DaemonError as exc:
            if exc.code == "unknown_job":
                return time.monotonic()  # finished or lost: its result may still be on the way
            if exc.code == "not_owner":
                raise UserError(
                    "Another Underpaint call (Fetch Pending Results?) took this job over; its result "
                    "is placed there."
                ) from exc
            raise UserError(daemon_error_message(exc.code, str(exc.reply.get("message", "")))) from exc
        for entry in status.get("jobs") or []:
            if entry.get("job") == job:
                if entry.get("state") == "queued":
                    report(None, f"Underpaint: {_waiting(int(entry.get('position', 0)))}")
                elif int(entry.get("step", 0)) == 0:
                    report(None, "Underpaint: loading the model")
        return None


def _silent(fraction: float | None, text: str) -> None:
    """A progress report nobody shows."""


def _why_refused(exc: Exception) -> str:
    """The client's reason, without the endpoint it appends (the message names it already)."""
    return str(exc).split(" (daemon at ", 1)[0]


def _duration(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:g} hours"
    if seconds >= 120:
        return f"{seconds / 60:g} minutes"
    return f"{seconds:g} s"


def _waiting(position: int) -> str:
    return "starting" if position <= 0 else f"waiting for {position} job(s) before this one"


def _default() -> str:
    from .modes import DEFAULT_ENDPOINT

    return DEFAULT_ENDPOINT


def fetch_welcome(endpoint: str, timeout: float, keys: KeyFiles | None = None) -> dict[str, Any]:
    """The daemon's handshake (its presets, for a dialog's picker); raises UserError saying why not."""
    with Session(endpoint.strip(), timeout=timeout, keys=keys) as session:
        return session.welcome
