"""The one thread that uses the device: takes jobs from the fair queue and runs them.

It never touches the ROUTER socket (ZeroMQ sockets are single-threaded); its events go through an
inproc PUSH socket that the server's I/O loop forwards. Nothing a job does can kill this thread.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import zmq

from ...protocol.messages import pack, split_frames
from ..device import is_out_of_memory
from ..errors import ErrorCode, RequestError
from ..families import family
from ..families.base import Generation
from ..images import encode_image
from ..ops import compare, run_op
from ..ops.common import Patch
from ..preprocessors import Preprocessors
from ..progress import JobCancelled, StepReporter
from .jobs import FairQueue, Job
from .models import ModelManager

log = logging.getLogger("underpaint.worker")

EVENTS_ENDPOINT = "inproc://underpaint-events"


class Worker(threading.Thread):
    def __init__(
        self,
        queue: FairQueue,
        models: ModelManager,
        context: zmq.Context,
        on_done: Callable[[Job], None],
    ) -> None:
        super().__init__(name="underpaint-worker", daemon=True)
        self.queue = queue
        self.models = models
        self.context = context
        self.on_done = on_done
        self.preprocessors = Preprocessors()
        self.current: Job | None = None
        self._out: zmq.Socket | None = None

    # -- plumbing ------------------------------------------------------------------------------
    def emit(self, job: Job, message: dict[str, Any]) -> None:
        assert self._out is not None
        if job.frames:
            header, payloads = split_frames(message)
            self._out.send_multipart([job.client, pack(header), *payloads], copy=False)
        else:
            self._out.send_multipart([job.client, pack(message)], copy=False)

    def run(self) -> None:
        self._out = self.context.socket(zmq.PUSH)
        self._out.setsockopt(zmq.LINGER, 0)
        self._out.connect(EVENTS_ENDPOINT)
        while True:
            job = self.queue.get()
            if job is None:
                break
            self.current = job
            job.state = "running"
            final: dict[str, Any] | None = None
            try:
                final = self._dispatch(job)
            except Exception as exc:  # last line of defence: the worker must survive anything
                log.exception("unexpected failure in job %s", job.id)
                final = job.envelope("error", code=ErrorCode.JOB_FAILED, message=f"internal error: {exc}")
            finally:
                # Forget the job before its last event leaves, so a client reacting to that event
                # (a second cancel, a status) already sees it gone.
                self.current = None
                self.on_done(job)
            if final is not None:
                self.emit(job, final)
        self._out.close(0)

    def _dispatch(self, job: Job) -> dict[str, Any]:
        """Run one job; returns its final message (result, cancelled, error, loaded, unloaded)."""
        if job.kind == "load":
            return self._load(job)
        if job.kind == "unload":
            freed = self.models.unload(job.model)
            return _reply(job, "unloaded", model=job.model, freed_bytes=freed)
        return self._run_op(job)

    def _load(self, job: Job) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            preset = self.models.preset(job.model)
            for kind, extras in family(preset.family).warm(preset, job.op):
                self.models.view(preset, kind, extras)
        except RequestError as exc:
            return _reply(job, **exc.to_message())
        seconds = time.perf_counter() - t0
        return _reply(job, "loaded", model=job.model, op=job.op, seconds=seconds)

    # -- ops -----------------------------------------------------------------------------------
    def _run_op(self, job: Job) -> dict[str, Any]:
        req = job.request
        assert req is not None
        started = time.monotonic()
        if job.cancel_requested.is_set():
            return job.envelope("cancelled")
        log.info("job %s: %s on %s started", job.id, req.op, req.preset.name)

        def sink(step: int, total: int, preview: Any) -> None:
            job.step, job.total = step, total
            event = job.envelope("progress", step=step, total=total)
            if preview is not None:
                event["preview"] = encode_image(preview)
            self.emit(job, event)

        load_before = self.models.load_seconds
        try:
            patches, extra = self._run_with_retry(job, sink)
            if job.cancel_requested.is_set():
                raise JobCancelled()
        except JobCancelled:
            log.info("job %s cancelled at step %d/%d", job.id, job.step, job.total)
            return job.envelope("cancelled")
        except RequestError as exc:
            log.warning("job %s failed: %s", job.id, exc.message)
            return job.envelope("error", **_error_fields(exc))
        except Exception as exc:
            code = ErrorCode.OUT_OF_MEMORY if is_out_of_memory(exc) else ErrorCode.JOB_FAILED
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            message = f"{req.op} failed: {type(exc).__name__}: {exc}"
            return job.envelope("error", code=code, message=message)
        ran = time.monotonic()
        fmt = req.params.get("output_format", "raw")
        images = [encode_image(p.image, fmt, x=p.x, y=p.y, seed=p.seed, **p.labels) for p in patches]
        finished = time.monotonic()
        load = self.models.load_seconds - load_before
        timings = {
            "queued": started - job.accepted_at,
            "load": load,
            "run": ran - started - load,
            "total": finished - job.accepted_at,  # accepted -> result, encoding included
        }
        log.info("job %s done in %.2f s (load %.2f s)", job.id, timings["total"], load)
        return job.envelope(
            "result",
            op=req.op,
            model=req.preset.name,
            images=images,
            seed=patches[0].seed,
            params=req.params,
            timings=timings,
            **extra,
        )

    def _run_with_retry(self, job: Job, sink: Callable[..., None]) -> tuple[list[Patch], dict[str, Any]]:
        """Run the op; after running out of device memory, free other presets and try once more.
        Returns the patches and the extra fields of the result event."""
        req = job.request
        assert req is not None
        for attempt in (1, 2):
            steps = StepReporter(sink, job.cancel_requested.is_set, job.preview)
            gen = Generation(req, self.models, steps, self.preprocessors)
            try:
                if req.op == "compare":
                    return compare.run(gen, run_op), gen.extra
                return run_op(req.op, gen), gen.extra
            except Exception as exc:
                if attempt == 2 or not is_out_of_memory(exc):
                    raise
                log.warning("job %s ran out of memory; unloading other models and retrying", job.id)
                self.models.unload_others(req.preset.name)
        raise AssertionError("unreachable")


def _reply(job: Job, type: str, **fields: Any) -> dict[str, Any]:
    """A direct reply to a queued request (`load`/`unload`): carries `re`, not `job`."""
    return {"type": type, "re": job.re, **fields}


def _error_fields(exc: RequestError) -> dict[str, Any]:
    msg = exc.to_message()
    msg.pop("type")
    return msg
