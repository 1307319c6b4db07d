"""What a worker does with one task: run an op, warm a preset (`load`) or free one (`unload`), on the
device whose models it owns.

The executor knows nothing of sockets or of where it runs: a worker thread of the daemon, a child
process (serving/pool/local.py) or a Ray actor (serving/pool/raypool.py) hands it a job and a way to
emit progress events, and gets back the job's last message. Nothing a job does can escape it as an
exception: every failure becomes a documented error.
"""

from __future__ import annotations

import logging
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
from .jobs import CANCEL_SHUTDOWN, Job
from .models import ModelManager

log = logging.getLogger("underpaint.worker")

#: Where a running job's progress events go (the worker's link to the front end).
Emit = Callable[[dict[str, Any]], None]


class Executor:
    """Runs tasks one at a time on one ModelManager (one device)."""

    def __init__(self, models: ModelManager, step_delay: float = 0.0, start_delay: float = 0.0) -> None:
        self.models = models
        self.step_delay = step_delay  # TESTING ONLY: a slow device (seconds slept in every step)
        self.start_delay = start_delay  # TESTING ONLY: a slow start (seconds slept before an op runs)
        self.preprocessors = Preprocessors()

    def run(self, job: Job, emit: Emit) -> tuple[dict[str, Any], str]:
        """Run one task; returns its last message and how to deliver it: "final" (an op's last
        event, kept for its session) or "reply" (the answer to a load/unload request)."""
        try:
            if job.kind == "op":
                return self._run_op(job, emit), "final"
            return self._admin(job), "reply"
        except Exception:  # last line of defence: the worker must survive anything
            log.error("unexpected failure in job %s:\n%s", job.id, traceback.format_exc())
            message = failure(
                job, ErrorCode.JOB_FAILED, "the job failed inside the daemon (its log says more)"
            )
            return message, "final" if job.kind == "op" else "reply"

    def _admin(self, job: Job) -> dict[str, Any]:
        if job.cancel_requested.is_set():
            if job.cancel_reason == CANCEL_SHUTDOWN:
                return shutdown_event(job)
            return cancelled_reply(job)
        if job.kind == "unload":
            freed = self.models.unload(job.model)
            return job.reply("unloaded", model=job.model, freed_bytes=freed)
        return self._load(job)

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
    def _run_op(self, job: Job, emit: Emit) -> dict[str, Any]:
        req = job.request
        assert req is not None
        if self.start_delay:
            job.cancel_requested.wait(self.start_delay)  # TESTING ONLY
        started = time.monotonic()
        if job.cancel_requested.is_set():
            return _stopped(job)
        log.info("job %s: %s on %s started", job.id, req.op, req.preset.name)

        def sink(step: int, total: int, preview: Any) -> None:
            job.step, job.total = step, total
            event = job.envelope("progress", step=step, total=total)
            if preview is not None:
                event["preview"] = encode_image(preview)
            emit(event)
            if self.step_delay:
                time.sleep(self.step_delay)  # TESTING ONLY: a step longer than any internal timeout

        def loading(fields: dict[str, Any]) -> None:
            emit(job.envelope("loading", **fields))

        load_before = self.models.load_seconds
        try:
            with self.models.reporting(loading):
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
            return failure(job, code, f"{req.op} failed: {_first_line(exc) or type(exc).__name__}")
        ran = time.monotonic()
        fmt = req.params.get("output_format", "raw")
        images = [encode_image(p.image, fmt, x=p.x, y=p.y, seed=p.seed, **p.labels) for p in patches]
        load = self.models.load_seconds - load_before
        # `queued` and `total` are the front end's to fill in: only it saw the job accepted.
        timings = {"queued": 0.0, "load": load, "run": ran - started - load, "total": 0.0}
        log.info("job %s done in %.2f s (load %.2f s)", job.id, time.monotonic() - started, load)
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

    def state(self) -> dict[str, Any]:
        """What the front end schedules by: the presets this worker has warm, and their bytes."""
        return {"warm": self.models.warm(), "used_bytes": self.models.used_bytes()}


def _stopped(job: Job) -> dict[str, Any]:
    """The final event of a job stopped before its end: `cancelled`, or `shutting_down`."""
    if job.cancel_reason == CANCEL_SHUTDOWN:
        return shutdown_event(job)
    return job.envelope("cancelled", reason=job.cancel_reason or "client")


def shutdown_event(job: Job) -> dict[str, Any]:
    """What a job's client gets when the daemon stops before the job could finish."""
    message = "the daemon is shutting down; the job did not finish: submit it again once it is back"
    return failure(job, ErrorCode.SHUTTING_DOWN, message)


def cancelled_reply(job: Job) -> dict[str, Any]:
    """The answer to a `load`/`unload` cancelled before it ran."""
    return job.reply(
        "error", code=ErrorCode.REQUEST_CANCELLED, message=f"{job.kind} of {job.model} was cancelled"
    )


def failure(job: Job, code: str, message: str) -> dict[str, Any]:
    """A job's `error`: an event with `job` for ops, a plain reply for load/unload."""
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
