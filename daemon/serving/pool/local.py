"""The local pool: one worker per device of this machine.

Workers are child processes (`serve --devices cuda:0,cuda:1`, `--workers N`), each with its own
interpreter, so no worker's Python holds the GIL that the I/O loop or another worker needs, and a
worker that dies (a driver crash, the kernel's OOM killer) takes nothing else with it: the pool
starts a new one in its place. The default single worker (no pool flags) is a thread of the daemon,
as before: one device needs no second copy of torch in memory (docs/STUDIO.md gives the figures).
Either way the front end talks to a worker over a ZeroMQ link (`ipc://` in a private folder, or
`inproc://` for the thread), so jobs, events and cancels take the same path, and large result
images cross it as frames of their own, never copied into a header.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import zmq

from ..intake import Inbox
from .base import Listener, Pool, Task, WorkerSpec, read_frames
from .runtime import Runtime

if TYPE_CHECKING:
    from ..worker import Executor

log = logging.getLogger("underpaint.pool")

#: A worker that dies this many times in a row before it is ready is given up (its device is unusable).
MAX_START_FAILURES = 3
#: How long `stop` may take before a worker process is terminated, then killed.
STOP_WAIT_S = 2.0


@dataclass
class Member:
    """One worker of the pool: its spec, and the process or thread running it now."""

    wid: str
    spec: WorkerSpec
    generation: int = 0  # bumped at each (re)start: the link identity is `wid.generation`
    process: Any = None  # multiprocessing.Process (process host)
    thread: threading.Thread | None = None  # its link thread (thread host)
    runtime: Runtime | None = None  # (thread host)
    ready: bool = False
    failures: int = 0  # deaths before being ready, in a row
    started: float = field(default_factory=time.monotonic)

    @property
    def identity(self) -> bytes:
        return f"{self.wid}.{self.generation}".encode()


class LocalPool(Pool):
    kind = "local"

    def __init__(
        self, specs: list[WorkerSpec], host: str = "process", executor: Executor | None = None
    ) -> None:
        """`host`: "process" (a child process per worker) or "thread" (one worker, a thread of this
        process, running `executor`: the daemon's own model cache)."""
        if host not in ("process", "thread"):
            raise ValueError(f"host must be 'process' or 'thread', not {host!r}")
        if host == "thread" and len(specs) != 1:
            raise ValueError("a thread-hosted pool has exactly one worker")
        super().__init__([f"w{i + 1}" for i in range(len(specs))])
        self.host = host
        self.members = {wid: Member(wid, spec) for wid, spec in zip(self.ids, specs, strict=True)}
        self._executor = executor
        self._listener: Listener | None = None
        self._closing = False
        self._folder: str | None = None
        self._ended = Inbox()  # (wid, generation, exitcode) of child processes that ended
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.router.setsockopt(zmq.RCVHWM, 0)
        if host == "thread":
            self.endpoint = f"inproc://underpaint-workers-{id(self)}"
        else:
            self._folder = tempfile.mkdtemp(prefix="underpaint-pool-")  # 0700: only this user's processes
            self.endpoint = f"ipc://{self._folder}/link"
        self.router.bind(self.endpoint)

    # -- starting workers ----------------------------------------------------------------------
    def start(self, listener: Listener) -> None:
        self._listener = listener
        for member in self.members.values():
            self._launch(member)

    def _launch(self, member: Member) -> None:
        member.generation += 1
        member.ready = False
        member.started = time.monotonic()
        if self.host == "thread":
            assert self._executor is not None
            runtime = Runtime(member.wid, member.identity, self.endpoint, self.context, self._executor)
            member.runtime = runtime
            member.thread = threading.Thread(
                target=runtime.serve, name=f"underpaint-{member.wid}", daemon=True
            )
            member.thread.start()
            return
        ctx = multiprocessing.get_context("spawn")
        member.process = ctx.Process(
            target=child_main,
            args=(member.wid, member.identity, self.endpoint, member.spec, os.getpid()),
            name=f"underpaint-{member.wid}",
            daemon=True,
        )
        member.process.start()
        log.info("worker %s starting on %s (pid %d)", member.wid, member.spec.device, member.process.pid)
        generation, process = member.generation, member.process
        threading.Thread(
            target=self._watch,
            args=(member.wid, generation, process),
            name=f"underpaint-{member.wid}-watch",
            daemon=True,
        ).start()

    def _watch(self, wid: str, generation: int, process: Any) -> None:
        """Wait for a child to end and tell the I/O loop (through the pool's inbox)."""
        process.join()
        self._ended.put((wid, generation, process.exitcode))

    # -- the I/O loop's side -------------------------------------------------------------------
    def pollables(self) -> list[Any]:
        return [self.router, self._ended.fd]

    def on_ready(self, ready: dict[Any, int]) -> None:
        if self.router in ready:
            self._receive()
        if self._ended.fd in ready:
            for wid, generation, code in self._ended.take():
                self._ended_process(wid, generation, code)

    def _receive(self) -> None:
        assert self._listener is not None
        for _ in range(1024):  # then the loop's other duties get a turn
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            wid, _, generation = frames[0].bytes.decode().partition(".")
            member = self.members.get(wid)
            if member is None or generation != str(member.generation):
                continue  # a message of a worker generation that is gone
            header = read_frames(frames[1:])
            event = header.get("ev")
            if event == "hello":
                member.ready, member.failures = True, 0
                log.info("worker %s ready: %s", wid, _said(header["info"]))
                self._listener.worker_ready(wid, header["info"])
            elif event == "message":
                self._listener.worker_message(
                    wid, header["job"], header["message"], header["kind"], header["state"]
                )
            elif event == "fatal":
                log.error("worker %s could not start: %s", wid, header.get("error"))

    def _ended_process(self, wid: str, generation: int, code: int | None) -> None:
        member = self.members[wid]
        if generation != member.generation or self._closing:
            return
        assert self._listener is not None
        why = _exit_reason(code)
        if not member.ready:
            member.failures += 1
            if member.failures >= MAX_START_FAILURES:
                log.error(
                    "worker %s failed to start %d times (%s): giving up on it", wid, member.failures, why
                )
                self._listener.worker_failed(wid, why)
                return
        log.warning("worker %s (pid %s) %s; starting a new one", wid, member.process.pid, why)
        self._listener.worker_lost(wid, why)
        self._launch(member)

    def run(self, wid: str, task: Task) -> None:
        self._to(wid, {"do": "task"}, pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL))

    def cancel(self, wid: str, job_id: str, reason: str) -> None:
        self._to(wid, {"do": "cancel", "job": job_id, "reason": reason})

    def _to(self, wid: str, header: dict[str, Any], *payloads: bytes) -> None:
        from ....protocol.messages import pack

        member = self.members[wid]
        try:
            self.router.send_multipart([member.identity, pack(header), *payloads], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # it just died: its end is reported by its watcher
            log.warning("could not reach worker %s: %s", wid, exc)

    # -- closing -------------------------------------------------------------------------------
    def close(self, timeout: float = STOP_WAIT_S) -> None:
        """Ask every worker to stop, then terminate and kill what is left; returns within about
        `timeout` + 2 s whatever the workers do."""
        self._closing = True
        for wid in self.ids:
            self._to(wid, {"do": "stop"})
        deadline = time.monotonic() + timeout
        for member in self.members.values():
            if member.process is not None:
                member.process.join(max(0.0, deadline - time.monotonic()))
            elif member.thread is not None:
                member.thread.join(max(0.0, deadline - time.monotonic()))
        for member in self.members.values():
            _end_process(member.process)
        self.router.close(0)
        if not self.stuck():
            self.context.term()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def stuck(self) -> bool:
        return any(
            (m.thread is not None and m.thread.is_alive()) or (m.runtime is not None and m.runtime.busy)
            for m in self.members.values()
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "host": self.host}


def _end_process(process: Any) -> None:
    if process is None or process.exitcode is not None:
        return
    process.terminate()
    process.join(1.0)
    if process.exitcode is None:
        process.kill()
        process.join(1.0)


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "ended"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _said(info: dict[str, Any]) -> str:
    return f"{info.get('device')} {info.get('dtype')}, pid {info.get('pid')} on {info.get('host')}"


# -- the child process ---------------------------------------------------------------------------------
def child_main(wid: str, identity: bytes, endpoint: str, spec: WorkerSpec, parent_pid: int) -> None:
    """A worker process: build the device's model cache, then serve the link until told to stop."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the front end decides
    logging.basicConfig(
        level=spec.log_level, format=f"%(asctime)s %(levelname)s %(name)s [{wid}]: %(message)s", force=True
    )
    context = zmq.Context()
    try:
        executor = spec.executor()
    except Exception as exc:  # a device that does not exist, a driver that fails...
        _fatal(context, identity, endpoint, f"{type(exc).__name__}: {exc}")
        sys.exit(3)
    Runtime(wid, identity, endpoint, context, executor, parent_pid).serve()
    context.destroy(linger=1000)
    logging.shutdown()
    os._exit(0)  # a job thread still inside a step must not keep the process alive


def _fatal(context: zmq.Context, identity: bytes, endpoint: str, error: str) -> None:
    from .base import message_frames

    link = context.socket(zmq.DEALER)
    link.setsockopt(zmq.IDENTITY, identity)
    link.setsockopt(zmq.LINGER, 1000)
    link.connect(endpoint)
    link.send_multipart(message_frames({"ev": "fatal", "error": error}))
    link.close()
    context.term()


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the daemon dies, however it dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def process_specs(base: WorkerSpec, devices: list[str]) -> list[WorkerSpec]:
    """One spec per device, each otherwise like `base`."""
    return [replace(base, device=device) for device in devices]
