"""The daemon's I/O loop: one ROUTER socket, answers every request except device work itself.

Handshake, status, cancel and model listing are answered here directly, so they take milliseconds
even while the worker is busy. Submits are validated completely here (params, images, sizes) before
they are accepted, so the worker only ever sees well-formed jobs.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import zmq

from ...protocol.messages import PROTOCOL_VERSION, SUPPORTED_VERSIONS, attach_frames, pack, unpack
from .. import __version__, preprocessors
from ..errors import ErrorCode, RequestError
from ..families import family
from ..images import decode_image
from ..ops import OPS, compare
from ..params import Limits
from ..request import OpRequest
from ..schedulers import SCHEDULER_NAMES
from .catalog import META_OPS, Catalog
from .jobs import FairQueue, Job
from .models import ModelManager
from .worker import EVENTS_ENDPOINT, Worker

log = logging.getLogger("underpaint.server")


class Server:
    def __init__(self, endpoint: str, models: ModelManager, limits: Limits | None = None) -> None:
        self.endpoint = endpoint
        self.models = models
        self.limits = limits or Limits()
        self.catalog = Catalog(models.config, self.limits, SCHEDULER_NAMES)
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        # Past twice the advertised limit ZeroMQ drops the peer before we ever buffer the frame.
        self.router.setsockopt(zmq.MAXMSGSIZE, 2 * self.limits.max_message_bytes)
        self.router.bind(endpoint)
        self.events = self.context.socket(zmq.PULL)
        self.events.bind(EVENTS_ENDPOINT)
        self.queue = FairQueue()
        self.jobs: dict[str, Job] = {}
        self._jobs_lock = threading.Lock()
        self.worker = Worker(self.queue, models, self.context, self._job_done)
        self.all_ops = [*OPS, *META_OPS]
        self.handlers = {
            "hello": self.on_hello,
            "submit": self.on_submit,
            "cancel": self.on_cancel,
            "status": self.on_status,
            "models": self.on_models,
            "load": self.on_load,
            "unload": self.on_unload,
        }

    @property
    def bound_endpoint(self) -> str:
        return self.router.getsockopt_string(zmq.LAST_ENDPOINT)

    # -- loop ----------------------------------------------------------------------------------
    def serve(self, stop: threading.Event) -> None:
        """Run until `stop` is set."""
        self.worker.start()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.events, zmq.POLLIN)
        log.info("listening on %s (device %s)", self.bound_endpoint, self.models.device)
        try:
            while not stop.is_set():
                ready = dict(poller.poll(100))
                if self.events in ready:
                    self._forward_events()
                if self.router in ready:
                    self._receive()
        finally:
            self._shutdown()

    def _forward_events(self) -> None:
        while True:
            try:
                frames = self.events.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._send_frames(frames)

    def _send_frames(self, frames: list[Any]) -> None:
        try:
            self.router.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:  # peer gone or its buffer full: drop, never block
            log.debug("dropped a message to a client: %s", exc)

    def _receive(self) -> None:
        while True:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            reply = self._handle(identity, frames[1:])
            if reply is not None:
                self._send_frames([identity, pack(reply)])

    def _handle(self, identity: bytes, frames: list[Any]) -> dict[str, Any] | None:
        msg: Any = None
        try:
            size = sum(len(frame.buffer) for frame in frames)
            if size > self.limits.max_message_bytes:
                raise RequestError(
                    ErrorCode.MESSAGE_TOO_LARGE,
                    f"message is {size} bytes, limit is {self.limits.max_message_bytes}",
                )
            try:
                msg = unpack(frames[0].buffer)
            except Exception as exc:
                raise RequestError(ErrorCode.MALFORMED_MESSAGE, f"not msgpack: {exc}") from None
            if not isinstance(msg, dict):
                raise RequestError(
                    ErrorCode.MALFORMED_MESSAGE, f"message must be a msgpack map, got {type(msg).__name__}"
                )
            if len(frames) > 1:  # feature "frames": binary payloads after the header (zero-copy)
                try:
                    attach_frames(msg, [frame.buffer for frame in frames[1:]])
                except ValueError as exc:
                    raise RequestError(ErrorCode.MALFORMED_MESSAGE, str(exc)) from None
            kind = msg.get("type")
            if "type" not in msg:
                raise RequestError(ErrorCode.MISSING_FIELD, "type is required", "type")
            handler = self.handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise RequestError(
                    ErrorCode.UNKNOWN_TYPE, f"type {kind!r} is not one of {sorted(self.handlers)}", "type"
                )
            reply = handler(identity, msg)
        except RequestError as exc:
            reply = exc.to_message()
        except Exception as exc:  # a bug of ours must not take the daemon down
            log.exception("internal error handling a request")
            reply = {
                "type": "error",
                "code": ErrorCode.JOB_FAILED,
                "message": f"internal error: {type(exc).__name__}: {exc}",
            }
        if reply is not None and isinstance(msg, dict) and msg.get("id") is not None:
            reply["re"] = msg["id"]
        return reply

    def _shutdown(self) -> None:
        with self._jobs_lock:
            for job in self.jobs.values():
                job.cancel_requested.set()
        self.queue.close()
        self.worker.join(timeout=30)
        self._forward_events()
        self.router.close(0)
        self.events.close(0)
        self.context.term()
        log.info("stopped")

    def _job_done(self, job: Job) -> None:
        with self._jobs_lock:
            self.jobs.pop(job.id, None)

    # -- handlers ------------------------------------------------------------------------------
    def on_hello(self, identity: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        version = msg.get("protocol")
        if version not in SUPPORTED_VERSIONS:
            err = RequestError(
                ErrorCode.PROTOCOL_MISMATCH,
                f"client speaks protocol {version!r}, this daemon ({__version__}) speaks "
                f"{list(SUPPORTED_VERSIONS)}: update the older side",
                "protocol",
            ).to_message()
            err["supported"] = list(SUPPORTED_VERSIONS)
            return err
        log.info("hello from %s", msg.get("client") or "a client")
        return {
            "type": "welcome",
            "protocol": PROTOCOL_VERSION,
            "daemon": __version__,
            "device": str(self.models.device),
            "dtype": str(self.models.dtype).removeprefix("torch."),
            "default_model": self.models.config.default,
            "models": self._describe_presets(),
            "ops": {name: spec.to_wire() for name, spec in self.catalog.common.items()},
            "preprocessors": preprocessors.describe(),
            "schedulers": SCHEDULER_NAMES,
            "limits": self.limits.to_wire(),
            "features": ["frames"],
        }

    def on_submit(self, identity: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        op = _field(msg, "op", str, required=True)
        if op not in self.all_ops:
            raise RequestError(ErrorCode.UNKNOWN_OP, f"op {op!r} is not one of {self.all_ops}", "op")
        preset = self.models.preset(_field(msg, "model", str))
        raw_params = msg.get("params", {})
        params = self.catalog.validate(preset, op, raw_params)
        raw_images = _field(msg, "images", dict) or {}
        preview = _field(msg, "preview", bool) or False

        def decode(inner_op: str, inner_params: dict[str, Any]) -> dict[str, Any]:
            return self._decode_images(inner_op, inner_params, raw_images)

        if op == "compare":
            request: OpRequest = compare.prepare(
                params, raw_params, self.catalog, self.models, decode, self.limits, OPS
            )
        else:
            request = OpRequest(op, preset, params, decode(op, params))
            OPS[op].check(request, self.limits)
            family(preset.family).check(request)
        if self.queue.count(identity) >= self.limits.max_queued_per_client:
            raise RequestError(
                ErrorCode.QUEUE_FULL, f"you already have {self.limits.max_queued_per_client} jobs queued"
            )
        job = Job(identity, "op", request, request.preset.name, op, msg.get("id"), preview)
        job.frames = _field(msg, "frames", bool) or False
        with self._jobs_lock:
            self.jobs[job.id] = job
        position = self.queue.put(job)
        log.info("job %s: %s on %s accepted at position %d", job.id, op, request.preset.name, position)
        return {"type": "accepted", "job": job.id, "position": position}

    def _decode_images(self, op: str, params: dict[str, Any], raw: dict[str, Any]) -> dict:
        """Decode the image slots the op knows and the images its units or items name."""
        names = set(self.catalog.common[op].images)
        names.update(u["image"] for u in params.get("units") or [])
        names.update(i["image"] for i in params.get("items") or [] if i["image"] is not None)
        return {
            name: decode_image(raw[name], f"images.{name}", self.limits.max_pixels)
            for name in sorted(names)
            if name in raw
        }

    def on_cancel(self, identity: bytes, msg: dict[str, Any]) -> dict[str, Any] | None:
        job_id = _field(msg, "job", str, required=True)
        with self._jobs_lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise RequestError(ErrorCode.UNKNOWN_JOB, f"no queued or running job {job_id!r}", "job")
        if job.client != identity:
            raise RequestError(ErrorCode.NOT_OWNER, f"job {job_id} belongs to another client", "job")
        job.cancel_requested.set()
        if self.queue.remove(job_id) is not None:
            # Queued: it never reaches the worker, so the cancelled event is ours to send.
            self._job_done(job)
            ack = {"type": "ack", "job": job_id}
            if msg.get("id") is not None:
                ack["re"] = msg["id"]
            self._send_frames([identity, pack(ack)])
            self._send_frames([identity, pack(job.envelope("cancelled"))])
            return None
        return {"type": "ack", "job": job_id}

    def on_status(self, identity: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        wanted = _field(msg, "job", str)
        running = self.worker.current
        jobs = []
        if running is not None and running.kind == "op":
            jobs.append(_job_info(running, identity, 0))
        for position, job in enumerate(self.queue.order()):
            jobs.append(_job_info(job, identity, position))
        if wanted is not None:
            jobs = [j for j in jobs if j["job"] == wanted]
            if not jobs:
                raise RequestError(ErrorCode.UNKNOWN_JOB, f"no queued or running job {wanted!r}", "job")
        return {
            "type": "status",
            "device": str(self.models.device),
            "queued": len(self.queue),
            "running": running.id if running is not None else None,
            "jobs": jobs,
        }

    def on_models(self, identity: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "models",
            "default": self.models.config.default,
            "presets": self._describe_presets(),
            "memory": {"budget_bytes": self.models.budget_bytes, "used_bytes": self.models.used_bytes()},
        }

    def _describe_presets(self) -> list[dict[str, Any]]:
        return [
            self.catalog.describe(p, self.models.loaded_roles(p)) for p in self.models.config.presets.values()
        ]

    def on_load(self, identity: bytes, msg: dict[str, Any]) -> None:
        return self._queue_admin(identity, msg, "load")

    def on_unload(self, identity: bytes, msg: dict[str, Any]) -> None:
        return self._queue_admin(identity, msg, "unload")

    def _queue_admin(self, identity: bytes, msg: dict[str, Any], kind: str) -> None:
        """`load`/`unload` touch the device, so they wait their turn on the worker; it replies."""
        preset = self.models.preset(_field(msg, "model", str, required=True))
        op = _field(msg, "op", str) or next(iter(self.catalog.specs[preset.name]))  # the preset's first op
        if kind == "load":
            if op not in OPS:
                raise RequestError(ErrorCode.UNKNOWN_OP, f"op {op!r} is not one of {list(OPS)}", "op")
            self.catalog.spec(preset, op)  # unsupported_op, naming the presets that can
        self.queue.put(Job(identity, kind, None, preset.name, op, msg.get("id")))
        return None


def _field(msg: dict[str, Any], name: str, kind: type, required: bool = False) -> Any:
    value = msg.get(name)
    if value is None:
        if required:
            raise RequestError(ErrorCode.MISSING_FIELD, f"{name} is required", name)
        return None
    if not isinstance(value, kind):
        raise RequestError(
            ErrorCode.INVALID_TYPE, f"{name} must be {kind.__name__}, got {type(value).__name__}", name
        )
    return value


def _job_info(job: Job, identity: bytes, position: int) -> dict[str, Any]:
    return {
        "job": job.id,
        "op": job.op,
        "model": job.model,
        "state": job.state,
        "position": position,
        "step": job.step,
        "total": job.total,
        "mine": job.client == identity,
    }
