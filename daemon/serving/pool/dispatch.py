"""The front end's scheduler: which job runs next, and on which worker (PROTOCOL.md 9 and 9.5).

Jobs leave the fair queue in its round-robin order, one whenever a worker is free. Each goes to a free
worker that already has its preset warm (the least recently used of those), else to the least
recently used free worker, which then loads it within its own memory budget. A worker that dies takes
only its own job with it: a job that had not sent a step yet runs once more on the next free worker
(a retry never repeats), any other ends with `worker_lost`. `unload` reaches every worker.

Everything here runs on the I/O loop's thread (it is the pool's listener), so it needs no lock.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import ErrorCode
from ..jobs import FairQueue, Job
from ..worker import failure
from .base import Pool, Task

log = logging.getLogger("underpaint.pool")

#: A worker died while running the job (PROTOCOL.md 6.9).
WORKER_LOST = ErrorCode.WORKER_LOST

#: The front end's hand-off for a job's message: (job, message, kind) with kind "event", "final"
#: (an op's last event) or "reply" (a load/unload's answer).
Deliver = Callable[[Job, dict[str, Any], str], None]


@dataclass
class Slot:
    """The front end's view of one worker."""

    id: str
    state: str = "starting"  # "starting" | "idle" | "busy" | "failed"
    info: dict[str, Any] = field(default_factory=dict)
    job: Job | None = None
    warm: dict[str, list[str]] = field(default_factory=dict)  # preset -> loaded roles
    used_bytes: int = 0
    last_used: float = 0.0
    done: int = 0  # tasks finished since the daemon started
    lost: int = 0  # times it died and was replaced

    def describe(self) -> dict[str, Any]:
        """Its entry of `status.workers`."""
        return {
            "worker": self.id,
            "state": self.state,
            "device": self.info.get("device"),
            "host": self.info.get("host"),
            "pid": self.info.get("pid"),
            "job": self.job.id if self.job is not None else None,
            "warm": sorted(self.warm),
            "used_bytes": self.used_bytes,
            "budget_bytes": self.info.get("budget_bytes", 0),
            "jobs_done": self.done,
            "restarts": self.lost,
        }


@dataclass
class Broadcast:
    """An `unload` sent to every worker: answered once all of them have."""

    job: Job
    waiting: set[str]
    freed: int = 0


class Dispatcher:
    def __init__(self, pool: Pool, queue: FairQueue, deliver: Deliver) -> None:
        self.pool = pool
        self.queue = queue
        self.deliver = deliver
        self.slots = {wid: Slot(wid) for wid in pool.ids}
        self.running: dict[str, Job] = {}  # job id -> job on a worker (`job.worker`)
        self.retry: deque[Job] = deque()  # jobs whose worker died before their first step
        self.unloads: dict[str, Broadcast] = {}
        self.closing = False

    # -- scheduling ----------------------------------------------------------------------------
    def pump(self) -> None:
        """Hand jobs to free workers while both exist."""
        if self.closing:
            return
        if all(slot.state == "failed" for slot in self.slots.values()):
            self._no_workers()
            return
        while True:
            free = [slot for slot in self.slots.values() if slot.state == "idle"]
            if not free:
                return
            job = self.retry.popleft() if self.retry else self.queue.take()
            if job is None:
                return
            if job.kind == "unload":
                self._unload_everywhere(job)
                continue
            self._assign(_choose(free, job), job)

    def _assign(self, slot: Slot, job: Job) -> None:
        slot.state, slot.job = "busy", job
        job.state, job.worker, job.dispatched_at = "running", slot.id, time.monotonic()
        self.running[job.id] = job
        log.info("job %s (%s on %s) -> worker %s", job.id, job.shown_op, job.model, slot.id)
        try:
            self.pool.run(slot.id, Task.of(job))
        except Exception:  # a job that cannot be sent (a bug of ours) fails alone
            log.exception("job %s could not be handed to worker %s", job.id, slot.id)
            del self.running[job.id]
            slot.state, slot.job, job.state = "idle", None, "done"
            message = failure(
                job, ErrorCode.JOB_FAILED, "the job could not be handed to a worker (the log says why)"
            )
            self.deliver(job, message, "final" if job.kind == "op" else "reply")
            return
        if job.cancel_requested.is_set():
            self.pool.cancel(slot.id, job.id, job.cancel_reason or "client")

    def _unload_everywhere(self, job: Job) -> None:
        job.state = "running"
        alive = {slot.id for slot in self.slots.values() if slot.state in ("idle", "busy")}
        if not alive:
            self.deliver(job, job.reply("unloaded", model=job.model, freed_bytes=0), "reply")
            return
        self.unloads[job.id] = Broadcast(job, alive)
        for wid in alive:
            self.pool.run(wid, Task.of(job))

    def _no_workers(self) -> None:
        """Every worker failed to start: nothing queued can ever run."""
        while (job := (self.retry.popleft() if self.retry else self.queue.take())) is not None:
            message = failure(job, WORKER_LOST, "no worker of this daemon could start (its log says why)")
            self.deliver(job, message, "final" if job.kind == "op" else "reply")

    def cancel(self, job: Job) -> None:
        """Pass a running job's cancel on to its worker."""
        if job.id in self.running and job.worker is not None:
            self.pool.cancel(job.worker, job.id, job.cancel_reason or "client")

    def take_retry(self, job_id: str) -> Job | None:
        """Take a job waiting for its retry out (cancelled before it ran again)."""
        for job in self.retry:
            if job.id == job_id:
                self.retry.remove(job)
                return job
        return None

    def stop(self) -> list[Job]:
        """Dispatch nothing more (shutdown); returns the jobs that were waiting for a retry."""
        self.closing = True
        waiting = list(self.retry)
        self.retry.clear()
        return waiting

    def busy(self) -> bool:
        return bool(self.running or self.unloads)

    def running_jobs(self) -> list[Job]:
        return sorted(self.running.values(), key=lambda job: job.dispatched_at)

    def abandon_unloads(self) -> list[Job]:
        """The unloads still waiting for some worker's answer (shutdown gave up on them)."""
        jobs = [b.job for b in self.unloads.values()]
        self.unloads.clear()
        return jobs

    def forget(self, job: Job) -> None:
        """The front end ended a running job itself (shutdown's grace is over)."""
        self.running.pop(job.id, None)

    # -- what the workers say (the pool's listener) ----------------------------------------------
    def worker_ready(self, wid: str, info: dict[str, Any]) -> None:
        slot = self.slots[wid]
        slot.state, slot.info, slot.job = "idle", info, None
        slot.warm, slot.used_bytes = {}, 0
        self.pump()

    def worker_message(
        self, wid: str, job_id: str, message: dict[str, Any], kind: str, state: dict[str, Any] | None
    ) -> None:
        slot = self.slots[wid]
        if state is not None:
            slot.warm, slot.used_bytes = state.get("warm") or {}, int(state.get("used_bytes") or 0)
        if job_id in self.unloads and kind != "event":
            self._unloaded(wid, job_id, message)
            return
        job = self.running.get(job_id)
        if kind == "event":
            if job is not None:
                if message.get("type") == "progress":  # `loading` events carry no step
                    job.step, job.total = int(message.get("step", 0)), int(message.get("total", 0))
                self.deliver(job, message, kind)
            return
        if slot.job is not None and slot.job.id == job_id:
            slot.state, slot.job = "idle", None
            slot.last_used, slot.done = time.monotonic(), slot.done + 1
        if job is not None:
            del self.running[job_id]
            job.state = "done"
            _stamp(job, message)
            self.deliver(job, message, kind)
        self.pump()

    def _unloaded(self, wid: str, job_id: str, message: dict[str, Any]) -> None:
        broadcast = self.unloads[job_id]
        broadcast.waiting.discard(wid)
        broadcast.freed += int(message.get("freed_bytes") or 0)
        if not broadcast.waiting:
            del self.unloads[job_id]
            job = broadcast.job
            self.deliver(job, job.reply("unloaded", model=job.model, freed_bytes=broadcast.freed), "reply")

    def worker_lost(self, wid: str, why: str) -> None:
        slot = self.slots[wid]
        job, slot.job = slot.job, None
        slot.state, slot.warm, slot.used_bytes, slot.lost = "starting", {}, 0, slot.lost + 1
        if job is not None and self.running.pop(job.id, None) is not None:
            self._after_loss(job, slot, why)
        for job_id in [j for j, b in self.unloads.items() if wid in b.waiting]:
            self._unloaded(wid, job_id, {"freed_bytes": 0})
        self.pump()

    def worker_failed(self, wid: str, why: str) -> None:
        self.worker_lost(wid, why)
        self.slots[wid].state = "failed"
        self.pump()

    def _after_loss(self, job: Job, slot: Slot, why: str) -> None:
        """Retry the job once if it had not sent a step (nothing of it reached its client), else
        end it with `worker_lost`."""
        where = f"worker {slot.id} ({slot.info.get('device', '?')} on {slot.info.get('host', '?')})"
        if job.step == 0 and not job.retried and not job.cancel_requested.is_set() and not self.closing:
            job.retried, job.state, job.worker = True, "queued", None
            self.retry.append(job)
            log.warning("job %s: %s %s before its first step; running it again", job.id, where, why)
            return
        job.state = "done"
        log.warning("job %s lost: %s %s at step %d/%d", job.id, where, why, job.step, job.total)
        message = failure(
            job,
            WORKER_LOST,
            f"the worker running this job ({where}) {why}; the job did not finish: submit it again",
        )
        self.deliver(job, message, "final" if job.kind == "op" else "reply")

    # -- what the front end shows ------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        return [slot.describe() for slot in self.slots.values()]

    def loaded_roles(self, preset: str) -> list[str]:
        """Roles of `preset` loaded on any worker, in the order the first one reported them."""
        roles: list[str] = []
        for slot in self.slots.values():
            roles += [r for r in slot.warm.get(preset, []) if r not in roles]
        return roles

    def memory(self) -> dict[str, Any]:
        """`models.memory`: bytes of weights loaded and budgets, all workers together, and each."""
        budgets = [int(slot.info.get("budget_bytes") or 0) for slot in self.slots.values()]
        return {
            "budget_bytes": 0 if 0 in budgets else sum(budgets),
            "used_bytes": sum(slot.used_bytes for slot in self.slots.values()),
            "workers": [
                {"worker": s.id, "used_bytes": s.used_bytes, "budget_bytes": s.info.get("budget_bytes", 0)}
                for s in self.slots.values()
            ],
        }

    def devices(self) -> list[str]:
        return [str(slot.info.get("device") or "?") for slot in self.slots.values()]


def _choose(free: list[Slot], job: Job) -> Slot:
    """A free worker with the job's preset warm, else any free one; the least recently used."""
    warm = [slot for slot in free if job.model in slot.warm]
    return min(warm or free, key=lambda slot: slot.last_used)


def _stamp(job: Job, message: dict[str, Any]) -> None:
    """What only the front end knows of a finished job: its wait in the queue, its whole time, and
    (results) the worker that made it."""
    timings = message.get("timings")
    if message.get("type") == "result" and isinstance(timings, dict):
        timings["queued"] = job.dispatched_at - job.accepted_at
        timings["total"] = time.monotonic() - job.accepted_at
        message["worker"] = job.worker
