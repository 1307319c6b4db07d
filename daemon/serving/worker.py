"""The one thread that uses the device: takes jobs from the fair queue and runs them.

It owns no ZeroMQ socket: its events go to the I/O loop through a thread-safe inbox, so the loop can
always close its sockets and end the ZeroMQ context, even while this thread is stuck inside a long
step (shutdown never waits on the device). Nothing a job does can kill this thread.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..device import is_out_of_memory
from ..errors import ErrorCode, RequestError
from ..families import family
from ..families.base import Generation
from ..images import encode_image
from ..ops import compare, run_op
from ..ops.common import Patch
from ..preprocessors import Preprocessors
from ..progress import JobCancelled, StepReporter
from .intake import loggable
from .jobs import CANCEL_SHUTDOWN, FairQueue, Job
from .models import ModelManager

log = logging.getLogger("underpaint.worker")

#: What the worker hands the I/O loop: (job, message, kind) with kind "event" (progress), "final"
#: (the job's last event: kept for its session) or "reply" (the answer to a load/unload request).
Outbox = Callable[[Job, dict[str, Any], str], None]


class Worker(threading.Thread):
    def __init__(
        self, queue: FairQueue, models: ModelManager, outbox: Outbox, step_delay: float = 0.0
    ) -> None:
        super().__init__(name="underpaint-worker", daemon=True)
        self.queue = queue
        self.models = models
        self.outbox = outbox
        self.step_delay = step_delay  # TESTING ONLY: a slow device (seconds slept in every step)
        self.preprocessors = Preprocessors()
        self.current: Job | None = None

    def run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            self.current = job
            try:
                message, kind = self._dispatch(job)
            except Exception:  # last line of defence: the worker must survive anything
                log.error("unexpected failure in job %s:\n%s", job.id, traceback.format_exc())
                message = _failure(
                    job, ErrorCode.JOB_FAILED, "the job failed inside the daemon (its log says more)"
                )
                kind = "final" if job.kind == "op" else "reply"
            job.state = "done"
            self.current = None
            self.outbox(job, message, kind)

    def _dispatch(self, job: Job) -> tuple[dict[str, Any], str]:
        """Run one job; returns its last message and how to deliver it."""
        if job.kind == "op":
            return self._run_op(job), "final"
        if job.cancel_requested.is_set():
            if job.cancel_reason == CANCEL_SHUTDOWN:
                return shutdown_event(job), "reply"
            return cancelled_reply(job), "reply"
        if job.kind == "unload":
            freed = self.models.unload(job.model)
            return job.reply("unloaded", model=job.model, freed_bytes=freed), "reply"
        return self._load(job), "reply"

    def _load(self, job: Job) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            preset = self.models.preset(job.model)
            for kind, extras in family(preset.family).warm(preset, job.op):
                self.models.view(preset, kind, extras)
        except RequestError as exc:
            return job.reply("error", **_error_fields(exc))
        seconds = time.perf_counter() - t0
        return job.reply("loaded", model=job.model, op=job.op, seconds=seconds)

    # -- ops -----------------------------------------------------------------------------------
    def _run_op(self, job: Job) -> dict[str, Any]:
        req = job.request
        assert req is not None
        started = time.monotonic()
        if job.cancel_requested.is_set():
            return _stopped(job)
        log.info("job %s: %s on %s started", job.id, req.op, req.preset.name)

        def sink(step: int, total: int, preview: Any) -> None:
            job.step, job.total = step, total
            event = job.envelope("progress", step=step, total=total)
            if preview is not None:
                event["preview"] = encode_image(preview)
            self.outbox(job, event, "event")
            if self.step_delay:
                time.sleep(self.step_delay)  # TESTING ONLY: a step longer than any internal timeout

        load_before = self.models.load_seconds
        try:
            patches, extra = self._run_with_retry(job, sink)
            if job.cancel_requested.is_set():
                raise JobCancelled()
        except JobCancelled:
            log.info("job %s stopped (%s) at step %d/%d", job.id, job.cancel_reason, job.step, job.total)
            return _stopped(job)
        except RequestError as exc:
            log.warning("job %s failed: %s", job.id, loggable(exc.message, 300))
            return job.envelope("error", **_error_fields(exc))
        except Exception as exc:
            code = ErrorCode.OUT_OF_MEMORY if is_out_of_memory(exc) else ErrorCode.JOB_FAILED
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            return _failure(job, code, f"{req.op} failed: {_first_line(exc) or type(exc).__name__}")
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


def _stopped(job: Job) -> dict[str, Any]:
    """The final event of a job stopped before its end: `cancelled`, or `shutting_down`."""
    if job.cancel_reason == CANCEL_SHUTDOWN:
        return shutdown_event(job)
    return job.envelope("cancelled", reason=job.cancel_reason or "client")


def shutdown_event(job: Job) -> dict[str, Any]:
    """What a job's client gets when the daemon stops before the job could finish."""
    message = "the daemon is shutting down; the job did not finish: submit it again once it is back"
    if job.kind != "op":
        return job.reply("error", code=ErrorCode.SHUTTING_DOWN, message=message)
    return job.envelope("error", code=ErrorCode.SHUTTING_DOWN, message=message)


def cancelled_reply(job: Job) -> dict[str, Any]:
    """The answer to a `load`/`unload` cancelled before it ran."""
    return job.reply(
        "error", code=ErrorCode.REQUEST_CANCELLED, message=f"{job.kind} of {job.model} was cancelled"
    )


def _failure(job: Job, code: str, message: str) -> dict[str, Any]:
    if job.kind != "op":
        return job.reply("error", code=code, message=message)
    return job.envelope("error", code=code, message=message)


def _first_line(exc: BaseException) -> str:
    """An exception's message for a client: its first line, short (never a traceback)."""
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else ""


def _error_fields(exc: RequestError) -> dict[str, Any]:
    msg = exc.to_message()
    msg.pop("type")
    return msg
