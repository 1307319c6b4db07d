"""What every pool backend shares: how a worker is described, what crosses to it, and the interface the
front end drives.

A pool only moves things: it starts workers, hands a task to the worker the front end chose, passes
a cancel on, and reports back what its workers say (ready, a job's events, lost). Every decision
(which job next, which worker, retry or fail) is the dispatcher's, in the front end's I/O loop.
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ....protocol.messages import attach_frames, pack, split_frames, unpack
from ..jobs import Job

if TYPE_CHECKING:
    from ...config import Config
    from ...request import OpRequest
    from ..worker import Executor


class Listener(Protocol):
    """Who hears what the workers say (the dispatcher); called on the I/O loop's thread only."""

    def worker_ready(self, wid: str, info: dict[str, Any]) -> None: ...

    def worker_message(
        self, wid: str, job_id: str, message: dict[str, Any], kind: str, state: dict[str, Any] | None
    ) -> None: ...

    def worker_lost(self, wid: str, why: str) -> None: ...

    def worker_failed(self, wid: str, why: str) -> None: ...


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to start, wherever it runs (it is pickled to child processes and
    Ray actors, so it holds names, not objects)."""

    config: Config
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    dtype: str = "auto"
    budget_bytes: int = 0  # this worker's models, LRU-evicted above it (0 = no budget)
    tiny_root: Path | None = None
    threads: int = 0  # torch intra-op threads of this worker (0 = torch's default)
    step_delay: float = 0.0  # TESTING ONLY (serve --test-step-delay)
    start_delay: float = 0.0  # TESTING ONLY (serve --test-start-delay)
    log_level: str = "INFO"

    def executor(self) -> Executor:
        """This worker's model cache and executor, on its device (imports torch)."""
        import torch

        from ...device import pick_device, pick_dtype
        from ..models import ModelManager
        from ..worker import Executor

        if self.threads > 0:
            torch.set_num_threads(self.threads)
        device = pick_device(self.device)
        models = ModelManager(
            self.config, device, pick_dtype(device, self.dtype), self.budget_bytes, self.tiny_root
        )
        return Executor(models, self.step_delay, self.start_delay)


@dataclass
class Task:
    """A job as it crosses to a worker: what the executor needs, nothing about its session."""

    id: str
    kind: str
    request: OpRequest | None
    model: str
    op: str
    re: Any
    preview: bool

    @classmethod
    def of(cls, job: Job) -> Task:
        return cls(job.id, job.kind, job.request, job.model, job.op, job.re, job.preview)

    def job(self) -> Job:
        """The worker's own copy of the job (its cancel flag is set by the worker's link)."""
        return Job("", "", self.kind, self.request, self.model, self.op, self.re, self.preview, id=self.id)


def worker_info(wid: str, executor: Executor) -> dict[str, Any]:
    """What a worker says about itself when it is ready (shown in `status.workers`)."""
    models = executor.models
    return {
        "worker": wid,
        "device": str(models.device),
        "dtype": str(models.dtype).removeprefix("torch."),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "budget_bytes": models.budget_bytes,
    }


# -- the link's messages ----------------------------------------------------------------------------
def message_frames(header: dict[str, Any], message: dict[str, Any] | None = None) -> list[Any]:
    """A worker's message as frames: its msgpack header, then each large image payload in a frame of
    its own (sent and received without being copied into the header)."""
    payloads: list[Any] = []
    if message is not None:
        header = {**header, "message": None}
        header["message"], payloads = split_frames(message)
    return [pack(header), *payloads]


def read_frames(frames: list[Any]) -> dict[str, Any]:
    """The header of a worker's message with its payloads put back (as views of the received frames)."""
    header = unpack(frames[0].buffer if hasattr(frames[0], "buffer") else frames[0])
    message = header.get("message")
    if message is not None and len(frames) > 1:
        attach_frames(message, [f.buffer if hasattr(f, "buffer") else f for f in frames[1:]])
    return header


class Pool(ABC):
    """Workers behind the front end. Every method runs on the I/O loop's thread."""

    kind: str = ""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids  # one per worker, stable across restarts of that worker ("w1", "w2", ...)

    @abstractmethod
    def start(self, listener: Listener) -> None:
        """Start every worker; they report `worker_ready` when they can take tasks."""

    @abstractmethod
    def pollables(self) -> list[Any]:
        """ZeroMQ sockets or file descriptors the I/O loop polls for this pool."""

    @abstractmethod
    def on_ready(self, ready: dict[Any, int]) -> None:
        """Read what is ready among `pollables()` and tell the listener."""

    @abstractmethod
    def run(self, wid: str, task: Task) -> None:
        """Hand a task to a worker (the dispatcher only sends a job to an idle one)."""

    @abstractmethod
    def cancel(self, wid: str, job_id: str, reason: str) -> None:
        """Ask a worker to stop a job at its next step."""

    @abstractmethod
    def close(self, timeout: float) -> None:
        """End every worker, waiting for at most about `timeout` seconds; never hangs."""

    def stuck(self) -> bool:
        """True when a worker could not be ended (a thread inside a step): the process must exit
        without waiting for it."""
        return False

    def describe(self) -> dict[str, Any]:
        """What `welcome` says of the pool."""
        return {"pool": self.kind, "workers": len(self.ids)}
