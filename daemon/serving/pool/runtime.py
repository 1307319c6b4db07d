"""A local worker's two threads: its link to the front end, and the job thread that runs its tasks.

The link thread owns the ZeroMQ socket (a DEALER connected to the pool's ROUTER): it receives tasks,
cancels and `stop`, and sends what the job thread produced, in order. The job thread runs one task at a
time and never touches the socket, so a cancel is read (and the job's flag set) while a step runs:
the job stops at its next step. The same code runs as a thread of the daemon (the default single
worker, over `inproc://`) and as the main thread of a child process (`--devices`, `--workers`, over
`ipc://`); only the child watches its parent.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import threading
from typing import Any

import zmq

from ....protocol.messages import unpack
from ..intake import Inbox
from ..jobs import Job
from ..worker import Executor
from .base import Task, message_frames, worker_info

log = logging.getLogger("underpaint.worker")

#: How often the link thread checks that its parent is alive (child processes only).
PARENT_CHECK_MS = 500


class Runtime:
    def __init__(
        self,
        wid: str,
        identity: bytes,
        endpoint: str,
        context: zmq.Context,
        executor: Executor,
        parent_pid: int | None = None,
    ) -> None:
        self.wid = wid
        self.identity = identity
        self.endpoint = endpoint
        self.context = context
        self.executor = executor
        self.parent_pid = parent_pid  # set in a child process: exit when the daemon is gone
        self.tasks: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.outbox = Inbox()
        self.jobs: dict[str, Job] = {}  # tasks sent to this worker and not finished (link thread only)
        self.busy = False  # the job thread is inside a task

    def serve(self) -> None:
        """Run until the front end says `stop` (or, in a child, until the parent is gone)."""
        link = self.context.socket(zmq.DEALER)
        link.setsockopt(zmq.IDENTITY, self.identity)
        link.setsockopt(zmq.LINGER, 2000)  # the last messages still reach the front end
        link.setsockopt(zmq.SNDHWM, 0)  # never drop or block on a job's events
        link.setsockopt(zmq.RCVHWM, 0)
        link.connect(self.endpoint)
        threading.Thread(target=self._work, name=f"underpaint-{self.wid}-jobs", daemon=True).start()
        link.send_multipart(message_frames({"ev": "hello", "info": worker_info(self.wid, self.executor)}))
        poller = zmq.Poller()
        poller.register(link, zmq.POLLIN)
        poller.register(self.outbox.fd, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll(PARENT_CHECK_MS))
                if link in ready and not self._receive(link):
                    return
                self._send(link)
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.warning("%s: the daemon is gone; exiting", self.wid)
                    return
        finally:
            self.tasks.put(None)
            link.close()

    def _receive(self, link: zmq.Socket) -> bool:
        """Handle every waiting message from the front end; False on `stop`."""
        while True:
            try:
                frames = link.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return True
            header = unpack(frames[0].buffer)
            what = header.get("do")
            if what == "task":
                task: Task = pickle.loads(frames[1].buffer)
                job = task.job()
                self.jobs[job.id] = job
                self.tasks.put(job)
            elif what == "cancel":
                job = self.jobs.get(header.get("job", ""))
                if job is not None:
                    job.cancel(header.get("reason") or "client")
            elif what == "stop":
                return False

    def _send(self, link: zmq.Socket) -> None:
        for kind, job_id, message, state in self.outbox.take():
            if kind != "event":
                self.jobs.pop(job_id, None)
            header = {"ev": "message", "job": job_id, "kind": kind, "state": state}
            link.send_multipart(message_frames(header, message), copy=False)

    def _work(self) -> None:
        """The job thread: run tasks in order, hand every message to the link thread."""
        while True:
            job = self.tasks.get()
            if job is None:
                return

            def emit(event: dict[str, Any], job: Job = job) -> None:
                self.outbox.put(("event", job.id, event, None))

            self.busy = True
            try:
                message, kind = self.executor.run(job, emit)
                self.outbox.put((kind, job.id, message, self.executor.state()))
            finally:
                self.busy = False
