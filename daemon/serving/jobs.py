"""Jobs and the fair queue: one FIFO per client, served round-robin (PROTOCOL.md section 9)."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..request import OpRequest

_ids = itertools.count(1)


def new_job_id() -> str:
    return f"j{next(_ids):06d}"


@dataclass
class Job:
    """A queued unit of device work: an op, or a `load`/`unload` request (`kind`)."""

    client: bytes
    kind: str  # "op" | "load" | "unload"
    request: OpRequest | None = None
    model: str = ""
    op: str = ""
    re: Any = None
    preview: bool = False
    frames: bool = False  # send result image data as extra frames (feature "frames")
    id: str = field(default_factory=new_job_id)
    accepted_at: float = field(default_factory=time.monotonic)
    state: str = "queued"
    step: int = 0
    total: int = 0
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    def envelope(self, type_: str, **fields: Any) -> dict[str, Any]:
        """A message about this job, with `job` and the submit's `re`."""
        msg: dict[str, Any] = {"type": type_, "job": self.id, **fields}
        if self.re is not None:
            msg["re"] = self.re
        return msg


class FairQueue:
    """Thread-safe round-robin queue across clients."""

    def __init__(self) -> None:
        self._queues: dict[bytes, deque[Job]] = {}
        self._ring: deque[bytes] = deque()  # clients with queued jobs, in serving order
        self._cond = threading.Condition()
        self._closed = False

    def put(self, job: Job) -> int:
        """Queue `job`; returns its position (jobs that will run before it)."""
        with self._cond:
            queue = self._queues.setdefault(job.client, deque())
            if not queue:
                self._ring.append(job.client)
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
            client = self._ring.popleft()
            queue = self._queues[client]
            job = queue.popleft()
            if queue:
                self._ring.append(client)
            else:
                del self._queues[client]
            return job

    def remove(self, job_id: str) -> Job | None:
        """Take a queued job out (cancel); None if it is not queued."""
        with self._cond:
            for client, queue in self._queues.items():
                for job in queue:
                    if job.id == job_id:
                        queue.remove(job)
                        if not queue:
                            del self._queues[client]
                            self._ring.remove(client)
                        return job
            return None

    def _order(self) -> list[Job]:
        """The jobs in the order they will run (round-robin simulation). Caller holds the lock."""
        queues = {c: list(q) for c, q in self._queues.items()}
        ring = deque(self._ring)
        out: list[Job] = []
        while ring:
            client = ring.popleft()
            out.append(queues[client].pop(0))
            if queues[client]:
                ring.append(client)
        return out

    def order(self) -> list[Job]:
        with self._cond:
            return self._order()

    def count(self, client: bytes) -> int:
        with self._cond:
            return len(self._queues.get(client, ()))

    def __len__(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
