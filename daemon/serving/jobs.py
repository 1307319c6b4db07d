"""Jobs and the fair queue: one FIFO per session, served round-robin (PROTOCOL.md section 9); the
pool's dispatcher takes the next job whenever one of its workers is free.

A job belongs to a session (never to a ZeroMQ routing id, which a peer can choose), and its id is
random, so an id from before a restart names nothing afterwards.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..request import OpRequest

#: Why a job was stopped before it finished (`cancelled.reason`, or the error code on shutdown).
CANCEL_CLIENT = "client"
CANCEL_ABANDONED = "abandoned"
CANCEL_SHUTDOWN = "shutting_down"
CANCEL_SUPERSEDED = "superseded"  # a newer job of the same lane and session replaced it (PROTOCOL.md 9.6)


def new_job_id() -> str:
    """'j' + 16 hex digits: unique across restarts, opaque, 17 chars."""
    return "j" + secrets.token_hex(8)


@dataclass(eq=False)
class Job:
    """A queued unit of device work: an op, or a `load`/`unload` request (`kind`)."""

    session: str  # id of the owning session
    identity: str  # who the caps count it against (the session, or the client's public key)
    kind: str  # "op" | "load" | "unload"
    request: OpRequest | None = None
    model: str = ""
    op: str = ""
    re: Any = None
    preview: bool = False
    frames: bool = False  # send result image data as extra frames (feature "frames")
    charged_bytes: int = 0  # decoded image bytes counted against the queue budgets while queued
    id: str = field(default_factory=new_job_id)
    accepted_at: float = field(default_factory=time.monotonic)
    state: str = "queued"  # "queued" | "running" | "done"
    step: int = 0
    total: int = 0
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str | None = None
    worker: str | None = None  # the pool's worker running it (PROTOCOL.md 9.5)
    dispatched_at: float = 0.0  # when it was handed to that worker
    retried: bool = False  # its first worker died before any step: it runs once more, never twice
    lane: str | None = None  # "latest wins" lane of its session (PROTOCOL.md 9.6)
    superseded_by: str | None = None  # id of the newer job of its lane that replaced it

    def cancel(self, reason: str) -> None:
        """Ask the job to stop (at its next step when running); the first reason given wins."""
        if not self.cancel_requested.is_set():
            self.cancel_reason = reason
            self.cancel_requested.set()

    def envelope(self, type_: str, **fields: Any) -> dict[str, Any]:
        """A message about this job, with `job` and the submit's `re`."""
        msg: dict[str, Any] = {"type": type_, "job": self.id, **fields}
        if self.re is not None:
            msg["re"] = self.re
        return msg

    def reply(self, type_: str, **fields: Any) -> dict[str, Any]:
        """A direct answer to a queued `load`/`unload`: carries `re`, not `job`."""
        msg: dict[str, Any] = {"type": type_, **fields}
        if self.re is not None:
            msg["re"] = self.re
        return msg

    def supersede(self, by: str) -> None:
        """Stop this job because `by` replaced it in its lane (only if nothing stopped it before)."""
        if not self.cancel_requested.is_set():
            self.superseded_by = by
            self.cancel(CANCEL_SUPERSEDED)

    @property
    def shown_op(self) -> str:
        """What status shows as its op: the op, or `load`/`unload`."""
        return self.op if self.kind == "op" else self.kind


class FairQueue:
    """Thread-safe round-robin queue across sessions.

    A session that had nothing queued joins the ring at its end: after every session already
    waiting, so a newcomer never jumps ahead of them and waits at most one job of each.
    """

    def __init__(self, on_take: Callable[[Job], None] | None = None) -> None:
        self._queues: dict[str, deque[Job]] = {}
        self._ring: deque[str] = deque()  # sessions with queued jobs, in serving order
        self._cond = threading.Condition()
        self._closed = False
        self._on_take = on_take  # called (outside the lock) with each job the worker takes

    def put(self, job: Job) -> int:
        """Queue `job`; returns its position (jobs that will run before it, not counting a running one)."""
        with self._cond:
            queue = self._queues.setdefault(job.session, deque())
            if not queue:
                self._ring.append(job.session)
            queue.append(job)
            self._cond.notify()
            return self._order().index(job)

    def get(self, timeout: float | None = None) -> Job | None:
        """Next job in fair order; None on timeout or after `close`."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._ring or self._closed, timeout):
                return None
            if self._closed:
                return None
            session = self._ring.popleft()
            queue = self._queues[session]
            job = queue.popleft()
            if queue:
                self._ring.append(session)
            else:
                del self._queues[session]
            job.state = "running"
        if self._on_take is not None:
            self._on_take(job)
        return job

    def take(self) -> Job | None:
        """The next job in fair order without waiting; None when nothing waits."""
        return self.get(timeout=0)

    def remove(self, job_id: str) -> Job | None:
        """Take a queued job out (cancel); None if it is not queued."""
        with self._cond:
            for queue in self._queues.values():
                for job in queue:
                    if job.id == job_id:
                        self._take_out([job])
                        return job
            return None

    def remove_session(self, session: str) -> list[Job]:
        """Take out every queued job of a session (abandoned)."""
        with self._cond:
            jobs = list(self._queues.get(session, ()))
            self._take_out(jobs)
            return jobs

    def drain(self) -> list[Job]:
        """Take out every queued job (shutdown), in the order they would have run."""
        with self._cond:
            jobs = self._order()
            self._take_out(jobs)
            return jobs

    def _take_out(self, jobs: list[Job]) -> None:
        """Caller holds the lock."""
        for job in jobs:
            queue = self._queues[job.session]
            queue.remove(job)
            if not queue:
                del self._queues[job.session]
                self._ring.remove(job.session)

    def _order(self) -> list[Job]:
        """The jobs in the order they will run (round-robin simulation). Caller holds the lock."""
        queues = {s: list(q) for s, q in self._queues.items()}
        ring = deque(self._ring)
        out: list[Job] = []
        while ring:
            session = ring.popleft()
            out.append(queues[session].pop(0))
            if queues[session]:
                ring.append(session)
        return out

    def order(self) -> list[Job]:
        with self._cond:
            return self._order()

    def __len__(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
