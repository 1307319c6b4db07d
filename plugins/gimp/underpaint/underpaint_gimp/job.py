"""Talking to the daemon: handshake, submit, progress, and errors a user can act on.

Everything here raises `UserError` with a message meant for GIMP's error dialog (or a batch caller's
`get_last_error`): the daemon is down, speaks another protocol version, refused the job, or pyzmq /
msgpack are missing from GIMP's Python. No GIMP import: tested against a real daemon in pytest.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from . import CLIENT_NAME
from .prompt_errors import prompt_error
from .request import JobRequest, UserError, fit_to_preset
from .steps import StepCount, asked_steps

HANDSHAKE_TIMEOUT = 5.0  # s: a daemon that is up answers `hello` in milliseconds
SUBMIT_TIMEOUT = 120.0  # s: sending and validating a large crop
PING_EVERY = 10.0  # s of silence before asking the daemon whether the job is still alive
PING_TIMEOUT = 10.0
GRACE = 5.0  # s to wait for a result after the daemon says the job is gone (it may be in flight)

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
    hints = {
        "out_of_memory": " Try a smaller selection or fewer variations.",
        "model_unavailable": " Check the daemon's model presets and its log.",
        "queue_full": " Wait for your other jobs to finish.",
    }
    message = message.strip() or "no details"
    if not message.endswith((".", "!", "?")):
        message += "."
    return f"The Underpaint daemon reported {code}: {message}{hints.get(code, '')}"


class Session:
    """One connection to the daemon for one procedure call."""

    def __init__(
        self,
        endpoint: str,
        protocol: ModuleType | None = None,
        timeout: float = HANDSHAKE_TIMEOUT,
        ping_every: float = PING_EVERY,
        ping_timeout: float = PING_TIMEOUT,
        grace: float = GRACE,
    ):
        self.endpoint = endpoint
        self.ping_every, self.ping_timeout, self.grace = ping_every, ping_timeout, grace
        self.proto = protocol or load_protocol()
        try:
            self.client = self.proto.Client(endpoint, timeout=timeout)
        except Exception as exc:  # zmq.ZMQError: a malformed endpoint
            raise UserError(f"Invalid Underpaint endpoint '{endpoint}' ({exc}); e.g. {_default()}") from exc
        try:
            self.welcome: dict[str, Any] = self.client.hello(CLIENT_NAME)
        except TimeoutError as exc:
            self.close()
            raise UserError(
                f"The Underpaint daemon is not answering at {endpoint} (no reply within {timeout:g} s). "
                "Start it with `underpaint serve` (or check the endpoint argument), then try again."
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

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fit(self, request: JobRequest) -> JobRequest:
        """`request` checked against this daemon's presets, with only the params its preset takes."""
        return fit_to_preset(request, self.welcome)

    def run(self, request: JobRequest, progress: Progress | None = None) -> dict[str, Any]:
        """Submit `request` (fitted to its preset: `fit` is idempotent, call it first to learn what is
        left out) and wait for its result, reporting progress in the steps the user asked for; raises
        UserError (a `prompt_errors.PromptError` for a prompt the daemon cannot read)."""
        report = progress or (lambda fraction, text: None)
        request = self.fit(request)
        steps = StepCount(asked_steps(request, self.welcome))
        fields: dict[str, Any] = {"op": request.op, "params": request.params, "images": request.images}
        if request.model:
            fields["model"] = request.model
        try:
            accepted = self.client.request("submit", timeout=SUBMIT_TIMEOUT, **fields)
        except TimeoutError as exc:
            raise UserError(f"The Underpaint daemon at {self.endpoint} stopped answering.") from exc
        except self.proto.DaemonError as exc:
            raise refused(exc.reply, request.params) from exc
        job = str(accepted["job"])
        position = int(accepted.get("position", 0))
        report(None, f"Underpaint: {_waiting(position)}")
        return self._wait(job, report, steps, request.params)

    def _wait(self, job: str, report: Progress, steps: StepCount, params: dict[str, Any]) -> dict[str, Any]:
        last_heard = time.monotonic()
        gone_since: float | None = None
        while True:
            message = self.client.poll(0.2)
            now = time.monotonic()
            if message is None:
                if gone_since is not None and now - gone_since > self.grace:
                    raise UserError("The Underpaint daemon lost the job (was it restarted?).")
                if now - last_heard > self.ping_every and gone_since is None:
                    gone_since = self._ping(job, report)
                    last_heard = time.monotonic()
                continue
            if message.get("job") != job:
                continue  # not ours (a stray reply); the protocol says to ignore it
            last_heard = now
            kind = message.get("type")
            if kind == "progress":
                report(*steps.update(int(message.get("step", 0)), max(1, int(message.get("total", 1)))))
            elif kind == "result":
                report(1.0, "Underpaint: placing the result")
                return message
            elif kind == "cancelled":
                raise UserError("The Underpaint job was cancelled.")
            elif kind == "error":
                raise refused(message, params)

    def _ping(self, job: str, report: Progress) -> float | None:
        """Ask for the job's status after a silence; return when it was found gone (else None)."""
        try:
            status = self.client.request("status", timeout=self.ping_timeout, job=job)
        except TimeoutError as exc:
            raise UserError(
                f"The Underpaint daemon at {self.endpoint} stopped answering while running the job."
            ) from exc
        except self.proto.DaemonError as exc:
            if exc.code == "unknown_job":
                return time.monotonic()  # finished or lost: its result may still be on the way
            raise UserError(daemon_error_message(exc.code, str(exc.reply.get("message", "")))) from exc
        for entry in status.get("jobs") or []:
            if entry.get("job") == job:
                if entry.get("state") == "queued":
                    report(None, f"Underpaint: {_waiting(int(entry.get('position', 0)))}")
                elif int(entry.get("step", 0)) == 0:
                    report(None, "Underpaint: loading the model")
        return None


def _waiting(position: int) -> str:
    return "starting" if position <= 0 else f"waiting for {position} job(s) before this one"


def _default() -> str:
    from .modes import DEFAULT_ENDPOINT

    return DEFAULT_ENDPOINT


def fetch_welcome(endpoint: str, timeout: float) -> dict[str, Any]:
    """The daemon's handshake (its presets, for a dialog's picker); raises UserError saying why not."""
    with Session(endpoint.strip(), timeout=timeout) as session:
        return session.welcome
