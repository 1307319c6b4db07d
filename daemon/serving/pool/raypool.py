"""The Ray pool: each worker is a Ray actor that owns one GPU (`num_gpus=1`), or a CPU actor where
the cluster has no GPU, placed by Ray on whichever machine has the resource.

Ray does what it is for: it places the actors, restarts one whose process or machine died
(`max_restarts`), streams a job's events back as they happen (a streaming generator: one object per
progress event, the result last), and carries large result images through its object store (they
travel as numpy arrays, which a reader on the same machine maps without a copy). The front end does
what only it can: the fair order across sessions and the choice of actor (the dispatcher), and
deciding, when an actor died mid-job, whether its job runs again.

This module imports Ray: only `serve --ray` loads it (`pip install 'underpaint[ray]'`).
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from typing import Any

import numpy as np
import ray

from ....protocol.messages import FRAME_MIN_BYTES
from ...errors import ErrorCode
from ..intake import Inbox
from ..jobs import Job
from ..worker import failure
from .base import Listener, Pool, Task, WorkerSpec, worker_info

log = logging.getLogger("underpaint.pool")

#: How often the pool asks each actor who it is (a new process id means Ray restarted it).
WATCH_S = 1.0
#: How long one such question may wait (an actor being restarted answers when it is up again).
HELLO_TIMEOUT_S = 60.0
#: Concurrent calls an actor serves: the job's stream, cancels, and the pool's questions.
ACTOR_CONCURRENCY = 4


class RayWorker:
    """A worker as a Ray actor. Threaded, so that `cancel` and `hello` are served while `run`
    streams a job's events; its tasks still run one at a time (the front end sends one job per
    worker, and `unload` waits for the running job)."""

    def __init__(self, wid: str, spec: WorkerSpec) -> None:
        logging.basicConfig(
            level=spec.log_level,
            format=f"%(asctime)s %(levelname)s %(name)s [{wid}]: %(message)s",
            force=True,
        )
        self.wid = wid
        self.executor = spec.executor()
        self.jobs: dict[str, Job] = {}
        self.one_at_a_time = threading.Lock()

    def hello(self) -> dict[str, Any]:
        info = worker_info(self.wid, self.executor)
        gpus = ray.get_gpu_ids()
        if gpus and info["device"].startswith("cuda"):
            info["device"] = f"cuda:{gpus[0]}"  # the GPU's number on its machine, not inside the actor
        return info

    def run(self, task: Task) -> Any:
        """Stream a task's events: `{"kind": "event", "message": ...}` per step, then its last
        message with the worker's state (a generator: Ray sends each item as soon as it is made)."""
        job = task.job()
        self.jobs[job.id] = job
        items: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()

        def work() -> None:
            with self.one_at_a_time:
                message, kind = self.executor.run(job, lambda e: items.put({"kind": "event", "message": e}))
                items.put({"kind": kind, "message": to_store(message), "state": self.executor.state()})

        threading.Thread(target=work, name=f"underpaint-{self.wid}-{job.id}", daemon=True).start()
        try:
            while True:
                item = items.get()
                yield item
                if item["kind"] != "event":
                    return
        finally:
            self.jobs.pop(job.id, None)

    def cancel(self, job_id: str, reason: str) -> bool:
        job = self.jobs.get(job_id)
        if job is not None:
            job.cancel(reason)
        return job is not None


def to_store(message: dict[str, Any]) -> dict[str, Any]:
    """Large image payloads as numpy arrays: Ray keeps them out of the pickled message, in its
    object store, where a reader on the same machine maps them instead of copying."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: walk(v) for k, v in node.items()}
            data = node.get("data")
            if isinstance(data, bytes | bytearray) and len(data) >= FRAME_MIN_BYTES:
                out["data"] = np.frombuffer(data, dtype=np.uint8)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(message)


def from_store(message: dict[str, Any]) -> dict[str, Any]:
    """Numpy payloads back as buffers the protocol sends (views: still no copy)."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), np.ndarray):
                node["data"] = memoryview(node["data"]).cast("B")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(message)
    return message


class RayPool(Pool):
    kind = "ray"

    def __init__(self, spec: WorkerSpec, address: str, workers: int | None = None) -> None:
        """Join the cluster at `address` (`auto`: start a private local one, shut down on close);
        `workers` actors, by default one per GPU of the cluster, or 1 where it has none."""
        self.started_cluster = address == "auto"
        if self.started_cluster:
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = workers or gpus or 1
        super().__init__([f"w{i + 1}" for i in range(count)])
        self.spec = spec
        self.use_gpus = gpus > 0
        self.address = ray.get_runtime_context().gcs_address
        self.actors: dict[str, Any] = {}
        self.known: dict[str, tuple[str, int]] = {}  # wid -> (host, pid) of the actor process it knows
        self.inbox = Inbox()  # what the pool's threads learnt, for the I/O loop
        self._closing = threading.Event()
        self._listener: Listener | None = None
        log.info(
            "Ray cluster at %s%s: %d %s actor(s)",
            self.address,
            " (started by this daemon)" if self.started_cluster else "",
            count,
            "GPU" if self.use_gpus else "CPU",
        )

    def start(self, listener: Listener) -> None:
        self._listener = listener
        resources = {"num_gpus": 1} if self.use_gpus else {"num_cpus": max(1, self.spec.threads)}
        actor_class = ray.remote(RayWorker)
        for wid in self.ids:
            actor = actor_class.options(
                name=f"underpaint-{wid}-{uuid.uuid4().hex[:8]}",
                max_restarts=-1,  # Ray brings a dead worker back (the pool learns of it by its pid)
                max_task_retries=0,  # a lost job is the dispatcher's to retry or fail, never Ray's
                max_concurrency=ACTOR_CONCURRENCY,
                **resources,
            ).remote(wid, self.spec)
            self.actors[wid] = actor
            threading.Thread(
                target=self._watch, args=(wid, actor), name=f"underpaint-{wid}-watch", daemon=True
            ).start()

    # -- threads that wait on Ray --------------------------------------------------------------
    def _watch(self, wid: str, actor: Any) -> None:
        """Tell the I/O loop when the actor is ready, and again whenever Ray restarted it."""
        waiting_said = False
        while not self._closing.is_set():
            try:
                info = ray.get(actor.hello.remote(), timeout=HELLO_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                if not waiting_said:
                    log.warning(
                        "worker %s: no actor yet after %.0f s (does the cluster have room?)",
                        wid,
                        HELLO_TIMEOUT_S,
                    )
                    waiting_said = True
                continue
            except ray.exceptions.ActorDiedError as exc:
                if not self._closing.is_set():
                    self.inbox.put(("failed", wid, _first_line(exc)))
                return
            except ray.exceptions.RayError:
                self._closing.wait(WATCH_S)  # restarting: ask again
                continue
            self.inbox.put(("hello", wid, info))
            self._closing.wait(WATCH_S)

    def _stream(self, wid: str, task: Task, stream: Any) -> None:
        """Forward one task's events as Ray delivers them."""
        incarnation = self.known.get(wid)
        try:
            for ref in stream:
                item = ray.get(ref)
                self.inbox.put(("message", wid, task.id, item))
        except ray.exceptions.RayActorError as exc:
            if not self._closing.is_set():
                self.inbox.put(("lost", wid, incarnation, _first_line(exc)))
        except ray.exceptions.RayError as exc:  # the task itself failed: say so as its last message
            log.error("worker %s: job %s failed in Ray: %s", wid, task.id, exc)
            job = task.job()
            message = failure(
                job, ErrorCode.JOB_FAILED, f"the job failed on its Ray worker: {_first_line(exc)}"
            )
            self.inbox.put(("message", wid, task.id, {"kind": _last_kind(job), "message": message}))

    # -- the I/O loop's side -------------------------------------------------------------------
    def pollables(self) -> list[Any]:
        return [self.inbox.fd]

    def on_ready(self, ready: dict[Any, int]) -> None:
        if self.inbox.fd not in ready:
            return
        listener = self._listener
        assert listener is not None
        for item in self.inbox.take():
            what, wid = item[0], item[1]
            if what == "hello":
                self._hello(listener, wid, item[2])
            elif what == "message":
                _, _, job_id, got = item
                message = from_store(got["message"])
                listener.worker_message(wid, job_id, message, got["kind"], got.get("state"))
            elif what == "lost" and item[2] == self.known.get(wid) and item[2] is not None:
                self.known[wid] = ("", 0)  # lost: the next hello is a new actor process
                log.warning("worker %s (Ray actor) lost: %s; Ray restarts it", wid, item[3])
                listener.worker_lost(wid, f"was lost ({item[3]})")
            elif what == "failed":
                log.error("worker %s (Ray actor) cannot run: %s", wid, item[2])
                listener.worker_failed(wid, item[2])

    def _hello(self, listener: Listener, wid: str, info: dict[str, Any]) -> None:
        process = (str(info.get("host")), int(info.get("pid") or 0))
        before = self.known.get(wid)
        if before == process:
            return
        if before is not None and before != ("", 0):  # restarted between two questions: lost it idle
            log.warning("worker %s (Ray actor) was restarted by Ray", wid)
            listener.worker_lost(wid, "was restarted by Ray")
        self.known[wid] = process
        log.info(
            "worker %s ready: %s %s, pid %s on %s",
            wid,
            info.get("device"),
            info.get("dtype"),
            process[1],
            process[0],
        )
        listener.worker_ready(wid, info)

    def run(self, wid: str, task: Task) -> None:
        stream = self.actors[wid].run.options(num_returns="streaming").remote(task)
        threading.Thread(
            target=self._stream, args=(wid, task, stream), name=f"underpaint-{task.id}", daemon=True
        ).start()

    def cancel(self, wid: str, job_id: str, reason: str) -> None:
        self.actors[wid].cancel.remote(job_id, reason)

    def close(self, timeout: float = 2.0) -> None:
        """Kill the actors; shut the cluster down if this daemon started it. Bounded in time."""
        self._closing.set()

        def end() -> None:
            for actor in self.actors.values():
                try:
                    ray.kill(actor, no_restart=True)
                except Exception as exc:  # already gone, or the cluster is
                    log.debug("killing an actor: %s", exc)
            if self.started_cluster:
                ray.shutdown()
                log.info("the Ray cluster this daemon started is shut down")
            else:
                ray.shutdown()  # disconnect this driver only: the cluster is someone else's

        closer = threading.Thread(target=end, name="underpaint-ray-close", daemon=True)
        closer.start()
        closer.join(max(timeout, 10.0))
        if closer.is_alive():
            log.warning("Ray did not shut down within %.0f s; exiting anyway", max(timeout, 10.0))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "address": self.address}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _last_kind(job: Job) -> str:
    return "final" if job.kind == "op" else "reply"
