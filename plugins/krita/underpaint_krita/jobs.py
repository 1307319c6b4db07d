"""The life of one job as the docker sees it, driven by daemon messages (pure Python, unit-tested).

SUBMITTING --accepted--> QUEUED --progress--> RUNNING --result--> DONE
any live state --error--> FAILED, --cancelled--> CANCELLED, --job lost--> FAILED.
A cancel asked before `accepted` is sent as soon as the job id is known; a result that races a cancel
the painter asked for is dropped (they said they did not want it). A dropped link is no state: the job
waits, and its events (or its kept final event) come once the session is resumed. An `adopted` job
was submitted before a Krita restart and starts QUEUED with its id.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .protocol.loading import loading_detail


class JobState(enum.Enum):
    SUBMITTING = "submitting"
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


@dataclass
class Job:
    """One submitted job; `context` is whatever the docker needs to place the result."""

    rid: int
    op: str
    context: Any = None
    job_id: str | None = None
    state: JobState = JobState.SUBMITTING
    position: int = 0
    step: int = 0
    total: int = 0
    message: str = ""
    reason: str = ""  # why it was cancelled, as the daemon says ("superseded": a newer job of its lane)
    error_code: str = ""
    error_field: str = ""  # the refused field, e.g. "params.prompt" (PROTOCOL.md 6.9)
    error_position: int | None = None  # prompt syntax errors: 0-based character index in that text
    result: dict[str, Any] | None = None
    loading: dict[str, Any] | None = None  # the last `loading` event: what the daemon loads for it
    cancel_requested: bool = False
    cancel_sent: bool = False
    missing_from_status: int = 0
    adopted: bool = False  # submitted before a Krita restart, resumed with the session
    orphaned_at: float | None = None  # a link was renewed before `accepted`: when (it may never come)
    events: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def matches(self, message: dict[str, Any]) -> bool:
        """Is `message` about this job (its direct replies carry `re`, its events carry `job`)?"""
        if self.job_id is not None and message.get("job") == self.job_id:
            return True
        return message.get("re") == self.rid and message.get("type") in ("accepted", "error")

    def request_cancel(self) -> None:
        if not self.finished:
            self.cancel_requested = True
            if self.state is not JobState.SUBMITTING:
                self.state = JobState.CANCELLING

    def fail(self, message: str, code: str = "job_failed") -> None:
        if not self.finished:
            self.state, self.message, self.error_code = JobState.FAILED, message, code

    def handle(self, message: dict[str, Any]) -> str | None:
        """Apply one daemon message; returns its type when it changed this job, else None."""
        if self.finished:
            return None
        kind = message.get("type")
        if kind == "accepted":
            self.job_id = str(message.get("job"))
            self.position = int(message.get("position") or 0)
            self.state = JobState.CANCELLING if self.cancel_requested else JobState.QUEUED
        elif kind == "progress":
            self.loading = None
            self.step, self.total = int(message.get("step") or 0), int(message.get("total") or 0)
            if self.state is not JobState.CANCELLING:
                self.state = JobState.RUNNING
        elif kind == "loading":  # the job waits for a model to load (PROTOCOL.md 6.10); no state change
            self.loading = {k: message.get(k) for k in ("what", "elapsed_s", "bytes", "total_bytes")}
        elif kind == "result":
            if self.cancel_requested:
                self.state, self.message = (
                    JobState.CANCELLED,
                    "cancelled (a result that raced the cancel was dropped)",
                )
            else:
                self.state, self.result = JobState.DONE, message
        elif kind == "cancelled":
            self.state, self.message = JobState.CANCELLED, "cancelled"
            self.reason = str(message.get("reason") or "")
        elif kind == "error":
            self.fail(
                str(message.get("message") or message.get("code")), str(message.get("code") or "job_failed")
            )
            self.error_field = str(message.get("field") or "")
            position = message.get("position")
            self.error_position = position if isinstance(position, int) else None
        else:
            return None  # unknown event types are ignored (PROTOCOL.md section 2)
        self.events.append(str(kind))
        return str(kind)


def loading_text(loading: dict[str, Any]) -> str:
    """'loading the UNet of sd15… 12 s (1.2 of 3.4 GB)': what a `loading` event tells the painter."""
    return f"loading {loading_detail(loading)}"
