"""The daemon's I/O loop: one ROUTER socket, answers every request except device work itself.

Handshake, status, cancel, fetch and model listing are answered here directly, so they take
milliseconds even while every worker is busy. Device work goes to a pool of workers (serving/pool:
one thread, local child processes, or Ray actors), one job per worker at a time, in the fair queue's
order. A submit is checked for its shape and counted against
the budgets here, then validated and its images decoded in a small decode pool (a big PNG never
stalls the loop); its `accepted` or `error` reply is sent when that is done. Jobs belong to
sessions (sessions.py); their final events are kept for a while (results.py), so a client that lost
its connection resumes and gets them. Shutdown ends every job with a `shutting_down` error and never
waits on the device for longer than its grace period.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from ...protocol.messages import (
    HEARTBEAT_IVL_MS,
    HEARTBEAT_TIMEOUT_MS,
    HEARTBEAT_TTL_MS,
    MAX_LANE_CHARS,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    attach_frames,
    pack,
    split_frames,
)
from .. import __version__, preprocessors, prompts
from ..errors import ErrorCode, RequestError
from ..families import family
from ..images import decode_image
from ..ops import OPS, compare
from ..params import Limits
from ..request import OpRequest
from ..schedulers import SCHEDULER_NAMES
from .admission import Budget, admit, image_bytes
from .catalog import META_OPS, Catalog
from .intake import (
    Inbox,
    check_finite,
    check_nesting,
    check_request_id,
    decoded_estimate,
    loggable,
    unpack_request,
)
from .jobs import CANCEL_ABANDONED, CANCEL_CLIENT, CANCEL_SHUTDOWN, CANCEL_SUPERSEDED, FairQueue, Job
from .models import ModelManager
from .policy import Policy
from .pool.base import Pool, WorkerSpec
from .pool.dispatch import Dispatcher
from .results import ResultStore
from .security import Keys, allow, secure
from .sessions import Connection, Session, Sessions
from .worker import Executor, cancelled_reply, shutdown_event

log = logging.getLogger("underpaint.server")

#: A final event sent this shortly before its connection was found dead may not have arrived: it is
#: sent again when the session resumes (the heartbeat's timeout, plus margin).
REDELIVER_S = HEARTBEAT_TIMEOUT_MS / 1000 + 2.0
HOUSEKEEPING_S = 0.5
#: How long closing the socket may take to flush the last events to live clients.
FLUSH_MS = 1000
#: Requests handled in a row before the loop forwards the worker's events and checks the rest.
RECEIVE_BATCH = 256


@dataclass(eq=False)
class Pending:
    """A submit waiting for (or in) the decode pool."""

    conn: Connection
    msg: dict[str, Any]
    reserved: int  # bytes counted against the budgets until it is decoded


@dataclass
class Prepared:
    request: OpRequest
    preview: bool
    frames: bool
    lane: str | None = None


class Server:
    def __init__(
        self,
        endpoint: str,
        models: ModelManager,
        limits: Limits | None = None,
        policy: Policy | None = None,
        keys: Keys | None = None,
        step_delay: float = 0.0,
        pool: Pool | None = None,
    ) -> None:
        """Without `pool`, one worker thread runs jobs on `models` (the daemon's own model cache);
        `step_delay` is for that worker only (a pool's workers get theirs from their spec)."""
        self.endpoint = endpoint
        self.models = models
        self.limits = limits or Limits()
        self.policy = policy or Policy()
        self.keys = keys
        self.catalog = Catalog(models.config, self.limits, SCHEDULER_NAMES)
        prompts.use_models(models)  # validation counts tokens with the files this daemon loads
        self.context = zmq.Context()
        self.router = self._router_socket()
        self.auth = secure(self.context, self.router, keys) if keys is not None else None
        self.router.bind(endpoint)
        self.monitor = self.router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.inbox = Inbox()
        self.queue = FairQueue(on_take=self._left_queue)
        self.jobs: dict[str, Job] = {}  # queued and running jobs (I/O thread only)
        self.budget = Budget(self.policy, self.limits.max_queued_per_client)
        self.sessions = Sessions(
            self.policy.session_grace_s,
            self.policy.max_connections,
            self.policy.max_connections_per_client,
            on_drop=self._connection_lost,
        )
        self.results = ResultStore(self.policy.results_ttl_s, self.policy.results_bytes)
        self.decoders = ThreadPoolExecutor(max(1, self.policy.decode_threads), "underpaint-decode")
        self._check_lock = threading.Lock()  # validation (tokenizers) runs one request at a time
        if pool is None:
            from .pool.local import LocalPool

            pool = LocalPool([WorkerSpec(models.config)], "thread", Executor(models, step_delay))
        self.pool = pool
        self.dispatcher = Dispatcher(pool, self.queue, self._on_worker)
        self._started = False
        self.all_ops = [*OPS, *META_OPS]
        self.closing_at: float | None = None
        self._finalized: set[str] = set()  # jobs whose final message shutdown sent for the worker
        self._after_reply: list[Any] = []
        self._next_housekeeping = 0.0
        self._reload_keys = False
        self.handlers = {
            "hello": self.on_hello,
            "submit": self.on_submit,
            "cancel": self.on_cancel,
            "status": self.on_status,
            "fetch": self.on_fetch,
            "models": self.on_models,
            "load": self.on_load,
            "unload": self.on_unload,
        }

    def _router_socket(self) -> zmq.Socket:
        router = self.context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        # Past twice the advertised limit ZeroMQ drops the peer before we ever buffer the frame.
        router.setsockopt(zmq.MAXMSGSIZE, 2 * self.limits.max_message_bytes)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a gone peer fails: we know it was lost
        router.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        router.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        router.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TTL_MS)
        return router

    def reload_keys(self) -> None:
        """Re-read the allowed client keys at the loop's next turn (safe from a signal handler)."""
        self._reload_keys = True

    @property
    def bound_endpoint(self) -> str:
        return self.router.getsockopt_string(zmq.LAST_ENDPOINT)

    # -- loop ----------------------------------------------------------------------------------
    def start_workers(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Start the pool and wait until every worker is ready or given up; False when none could
        start (or `stop` was set meanwhile). Requests wait in the socket until `serve` runs."""
        if not self._started:
            self._started = True
            self.pool.start(self.dispatcher)
        poller = zmq.Poller()
        for item in self.pool.pollables():
            poller.register(item, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            states = [slot.state for slot in self.dispatcher.slots.values()]
            if "starting" not in states:
                return "idle" in states
            ready = dict(poller.poll(100))
            if ready:
                self.pool.on_ready(ready)
        return any(slot.state == "idle" for slot in self.dispatcher.slots.values())

    def serve(self, stop: threading.Event) -> None:
        """Run until `stop` is set and shutdown is done (PROTOCOL.md 9.4)."""
        if not self._started:
            self._started = True
            self.pool.start(self.dispatcher)
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        poller.register(self.inbox.fd, zmq.POLLIN)
        pool_items = self.pool.pollables()
        for item in pool_items:
            poller.register(item, zmq.POLLIN)
        log.info(
            "listening on %s (%s%s)",
            self.bound_endpoint,
            self._workers_said(),
            ", CurveZMQ keys" if self.keys else "",
        )
        try:
            while True:
                if stop.is_set() and self.closing_at is None:
                    self._begin_shutdown()
                if self.closing_at is not None and self._shutdown_over():
                    break
                ready = dict(poller.poll(100))
                self._drain_monitor()
                self._drain_inbox()
                if any(item in ready for item in pool_items):
                    self._from_pool(ready)
                if self.router in ready:
                    self._receive()
                self._housekeeping()
        finally:
            self._close()

    def _from_pool(self, ready: dict[Any, int]) -> None:
        """What the workers said; a bug of ours in handling it must not take the front end down."""
        try:
            self.pool.on_ready(ready)
        except Exception:
            log.exception("internal error handling a worker's message")

    def _workers_said(self) -> str:
        devices = self.dispatcher.devices()
        return f"{len(devices)} worker{'s' * (len(devices) != 1)} ({self.pool.kind}): {', '.join(devices)}"

    def _receive(self) -> None:
        for _ in range(RECEIVE_BATCH):  # then the loop's other duties get a turn
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            # A disconnection the monitor reported before this message arrived must be known
            # before the message is trusted (a newcomer may reuse the departed client's routing id).
            self._drain_monitor()
            self._handle(frames[0].bytes, frames[1:])

    def _drain_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.sessions.disconnected(int(event["value"]))

    def _connection_lost(self, conn: Connection) -> None:
        """Final events sent just before `conn` died count as undelivered (9.1). A session that was
        already taken over by a live connection gets them there at once, not at its next resume."""
        for sid in self.results.unsend_recent(conn, time.monotonic() - REDELIVER_S):
            session = self.sessions.by_id.get(sid)
            if session is not None and session.conn is not None and session.conn is not conn:
                self._push_undelivered(session)

    def _drain_inbox(self) -> None:
        for item in self.inbox.take():
            if item[0] == "prepared":
                self._on_prepared(*item[1:])

    # -- sending -------------------------------------------------------------------------------
    def _send(self, route: bytes, message: dict[str, Any], frames: bool = False) -> bool:
        """Send without ever blocking; False when the peer is gone or its buffer is full."""
        if frames:
            header, payloads = split_frames(message)
            parts = [route, pack(header), *payloads]
        else:
            parts = [route, pack(message)]
        try:
            self.router.send_multipart(parts, zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:
            log.debug("dropped a message to a client: %s", exc)
            return False

    def _deliver(self, session: Session | None, message: dict[str, Any], frames: bool = False) -> bool:
        """Send a job's event to its session's current connection, if it has one."""
        if session is None or session.conn is None:
            return False
        return self._send(session.conn.route, message, frames)

    def _answer(
        self, conn: Connection, msg: dict[str, Any], reply: dict[str, Any], frames: bool = False
    ) -> None:
        """A direct reply to request `msg`, with `re`, sent to the connection that asked."""
        if msg.get("id") is not None:
            reply["re"] = msg["id"]
        if self.sessions.conns.get(conn.route) is conn:
            self._send(conn.route, reply, frames)

    # -- requests ------------------------------------------------------------------------------
    def _handle(self, route: bytes, frames: list[Any]) -> None:
        if not frames:
            return
        msg: Any = None
        conn: Connection | None = None
        reply: dict[str, Any] | None
        try:
            size = sum(len(frame.buffer) for frame in frames)
            if size > self.limits.max_message_bytes:
                raise RequestError(
                    ErrorCode.MESSAGE_TOO_LARGE,
                    f"message is {size} bytes, limit is {self.limits.max_message_bytes}",
                )
            msg = unpack_request(frames[0].buffer)
            check_request_id(msg)
            check_nesting(msg)
            conn = self.sessions.connection(route, _fd(frames[0]), self._user(frames[0]))
            if len(frames) > 1:  # feature "frames": binary payloads after the header (zero-copy)
                try:
                    attach_frames(msg, [frame.buffer for frame in frames[1:]])
                except ValueError as exc:
                    raise RequestError(ErrorCode.MALFORMED_MESSAGE, str(exc)) from None
            if "type" not in msg:
                raise RequestError(ErrorCode.MISSING_FIELD, "type is required", "type")
            kind = msg["type"]
            handler = self.handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise RequestError(
                    ErrorCode.UNKNOWN_TYPE,
                    f"type {loggable(kind, 40)!r} is not one of {sorted(self.handlers)}",
                    "type",
                )
            reply = handler(conn, msg, size)
        except RequestError as exc:
            reply = exc.to_message()
        except Exception as exc:  # a bug of ours must not take the daemon down
            log.exception("internal error handling a request")
            reply = _internal(exc)
        if reply is not None:
            if isinstance(msg, dict) and msg.get("id") is not None:
                reply["re"] = msg["id"]
            self._send(route, reply)
        after, self._after_reply = self._after_reply, []
        for action in after:
            action()

    def _user(self, frame: Any) -> str | None:
        """The client's CURVE public key (z85), as the ZAP handler vouched for it."""
        if self.keys is None:
            return None
        try:
            return str(frame.get("User-Id"))
        except zmq.ZMQError:
            return None

    def on_hello(self, conn: Connection, msg: dict[str, Any], size: int) -> dict[str, Any]:
        version = _field(msg, "protocol", int, required=True)
        if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
            err = RequestError(
                ErrorCode.PROTOCOL_MISMATCH,
                f"client speaks protocol {loggable(version, 20)}, this daemon ({__version__}) speaks "
                f"{list(SUPPORTED_VERSIONS)}: update the older side",
                "protocol",
            ).to_message()
            err["supported"] = list(SUPPORTED_VERSIONS)
            return err
        token = _field(msg, "session", str)
        name = _field(msg, "client", str) or "a client"
        resumed = bool(token) and self.sessions.resume(conn, token) is not None
        session = self.sessions.session_of(conn)
        log.info("hello from %s (%s)", loggable(name), "session resumed" if resumed else "new session")
        if resumed:  # its final events that found no connection follow the welcome
            self._after_reply.append(lambda: self._push_undelivered(session))
        return self._welcome(session, resumed)

    def _welcome(self, session: Session, resumed: bool) -> dict[str, Any]:
        return {
            "type": "welcome",
            "protocol": PROTOCOL_VERSION,
            "daemon": __version__,
            "device": self._device(),
            "dtype": self._dtype(),
            "workers": len(self.dispatcher.slots),
            "pool": self.pool.kind,
            "default_model": self.models.config.default,
            "models": self._describe_presets(),
            "unusable": self._unusable(),
            "ops": {name: spec.to_wire() for name, spec in self.catalog.common.items()},
            "preprocessors": preprocessors.describe(),
            "schedulers": SCHEDULER_NAMES,
            "limits": {**self.limits.to_wire(), **self.policy.to_wire()},
            "features": ["frames", "sessions", "lanes"],
            "session": session.token,
            "resumed": resumed,
            "jobs": self._session_jobs(session),
        }

    def _session_jobs(self, session: Session) -> list[dict[str, Any]]:
        """The session's jobs the daemon still knows: queued, running, and finished with a kept event."""
        out = [
            {"job": job.id, "op": job.shown_op, "state": job.state}
            for job in sorted(
                (self.jobs[j] for j in session.jobs if j in self.jobs), key=lambda job: job.accepted_at
            )
        ]
        out += [
            {"job": k.job, "op": k.op, "state": "done", "event": k.message["type"]}
            for k in self.results.of_session(session.id)
        ]
        return out

    def _push_undelivered(self, session: Session) -> None:
        for kept in self.results.undelivered(session.id):
            if self._deliver(session, kept.message, kept.frames):
                kept.sent_to, kept.sent_at = session.conn, time.monotonic()

    # -- submit --------------------------------------------------------------------------------
    def on_submit(self, conn: Connection, msg: dict[str, Any], size: int) -> None:
        """Count the submit against the budgets now; validate and decode it in the pool, in order."""
        self._refuse_when_closing()
        session = self.sessions.session_of(conn)
        waiting = len(session.pending) + (session.decoding is not None)
        self.budget.check_job(session.identity, waiting=waiting)
        reserved = size + decoded_estimate(msg.get("images"), self.limits.max_pixels)
        self.budget.reserve_bytes(session.identity, reserved)
        session.pending.append(Pending(conn, msg, reserved))
        self._pump(session)
        return None

    def _pump(self, session: Session) -> None:
        """Start the session's next submit in the decode pool (one at a time: accepted in order)."""
        if session.decoding is not None or not session.pending or self.closing_at is not None:
            return
        pending = session.pending.popleft()
        session.decoding = pending
        future = self.decoders.submit(self._prepare, pending.msg)
        future.add_done_callback(lambda f: self.inbox.put(("prepared", session, pending, f)))

    def _prepare(self, msg: dict[str, Any]) -> Prepared:
        """Validate a submit completely and decode its images (decode pool thread)."""
        with self._check_lock:
            op = _field(msg, "op", str, required=True)
            if op not in self.all_ops:
                raise RequestError(
                    ErrorCode.UNKNOWN_OP, f"op {loggable(op, 40)!r} is not one of {self.all_ops}", "op"
                )
            preset = self.models.preset(_field(msg, "model", str))
            raw_params = msg.get("params", {})
            check_finite(raw_params)
            params = self.catalog.validate(preset, op, raw_params)
            raw_images = _field(msg, "images", dict) or {}
            preview = _field(msg, "preview", bool) or False
            frames = _field(msg, "frames", bool) or False
            lane = _lane(msg)

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
            admit(request, self.policy)
            return Prepared(request, preview, frames, lane)

    def _decode_images(self, op: str, params: dict[str, Any], raw: dict[str, Any]) -> dict:
        """Decode the image slots the op knows and the images its units or items name. Called with
        the check lock held; decoding itself runs without it (several submits decode at once)."""
        names = set(self.catalog.common[op].images)
        names.update(u["image"] for u in params.get("units") or [])
        names.update(i["image"] for i in params.get("items") or [] if i["image"] is not None)
        self._check_lock.release()
        try:
            return {
                name: decode_image(raw[name], f"images.{name}", self.limits.max_pixels)
                for name in sorted(names)
                if name in raw
            }
        finally:
            self._check_lock.acquire()

    def _on_prepared(self, session: Session, pending: Pending, future: Future[Prepared]) -> None:
        session.decoding = None
        self.budget.release_bytes(session.identity, pending.reserved)
        if self.closing_at is not None:
            return  # shutdown has answered it
        reply: dict[str, Any] | None
        try:
            reply = self._accept(session, pending, future.result())
        except RequestError as exc:
            reply = exc.to_message()
        except Exception as exc:
            log.error("internal error validating a submit", exc_info=exc)
            reply = _internal(exc)
        if reply is not None:
            self._answer(pending.conn, pending.msg, reply)
        self.dispatcher.pump()  # after `accepted`, so that it goes before the job's first event
        self._pump(session)

    def _accept(self, session: Session, pending: Pending, prepared: Prepared) -> dict[str, Any] | None:
        request = prepared.request
        if session.conn is not pending.conn:
            # Its socket is gone (or another took the session over): nobody would learn the job's id,
            # so it is not run later for nobody.
            log.info("a submit's connection left before it was accepted: dropped")
            return None
        self.budget.check_job(session.identity)
        charged = sum(image_bytes(img) for img in request.images.values())
        self.budget.reserve_bytes(session.identity, charged)
        job = Job(
            session.id,
            session.identity,
            "op",
            request,
            request.preset.name,
            request.op,
            pending.msg.get("id"),
            prepared.preview,
            prepared.frames,
            charged,
            lane=prepared.lane,
        )
        older = self._lane_jobs(job)
        waiting = [old for old in older if self.queue.remove(old.id) is not None]  # before the position
        self._track(session, job)
        position = self.queue.put(job) + len(self.dispatcher.retry)
        log.info("job %s: %s on %s accepted at position %d", job.id, job.op, job.model, position)
        self._answer(pending.conn, pending.msg, {"type": "accepted", "job": job.id, "position": position})
        self._supersede(job, older, waiting)
        return None

    def _lane_jobs(self, job: Job) -> list[Job]:
        """The queued, retrying or running jobs that `job` replaces: its session's, in its lane, not
        already being stopped for another reason."""
        if job.lane is None:
            return []
        return [
            old
            for old in self.jobs.values()
            if old.session == job.session
            and old.lane == job.lane
            and old.kind == "op"
            and not old.cancel_requested.is_set()
        ]

    def _supersede(self, new: Job, older: list[Job], waiting: list[Job]) -> None:
        """Latest wins (PROTOCOL.md 9.6): end the older jobs of `new`'s lane, after its `accepted`.
        Queued (already out of the queue: `waiting`) and retrying ones end now; running ones at their
        next step, their worker's `cancelled` gets `by` in `_on_worker`."""
        for old in older:
            old.supersede(new.id)
            final = old.envelope("cancelled", reason=CANCEL_SUPERSEDED, by=new.id)
            if old in waiting:
                self._end_queued(old, final)
            elif self.dispatcher.take_retry(old.id) is not None:
                self._end(old, final)
            else:
                self.dispatcher.cancel(old)
            log.info("job %s superseded by %s in its lane", old.id, new.id)

    def _track(self, session: Session, job: Job) -> None:
        self.budget.add_job(job.identity)
        self.jobs[job.id] = job
        session.jobs.add(job.id)

    def _left_queue(self, job: Job) -> None:
        """A job stopped waiting (the worker took it, or it was removed): release what it held.
        Runs on the worker's thread for taken jobs (the budget is thread-safe)."""
        self.budget.remove_job(job.identity)
        if job.charged_bytes:
            self.budget.release_bytes(job.identity, job.charged_bytes)
            job.charged_bytes = 0

    def _forget(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        session = self.sessions.by_id.get(job.session)
        if session is not None:
            session.jobs.discard(job.id)

    # -- job messages from the workers ---------------------------------------------------------------
    def _on_worker(self, job: Job, message: dict[str, Any], kind: str) -> None:
        if job.id in self._finalized:
            return
        session = self.sessions.by_id.get(job.session)
        if kind == "event":
            self._deliver(session, message, job.frames)
        elif kind == "reply":
            self._forget(job)
            self._deliver(session, message)
        else:
            if message.get("type") == "cancelled" and job.superseded_by is not None:
                message["by"] = job.superseded_by
            self._finish(job, message)

    def _finish(self, job: Job, message: dict[str, Any]) -> None:
        """A job's final event: forget the job, keep the event for its session, send it if we can."""
        self._forget(job)
        kept = self.results.keep(job.id, job.session, job.shown_op, message, job.frames)
        session = self.sessions.by_id.get(job.session)
        if self._deliver(session, message, job.frames):
            assert session is not None
            kept.sent_to, kept.sent_at = session.conn, time.monotonic()

    def _end_queued(self, job: Job, final: dict[str, Any]) -> None:
        """End a job that was taken out of the queue with `final` (its event, or a load's reply)."""
        self._left_queue(job)
        self._end(job, final)

    def _end(self, job: Job, final: dict[str, Any]) -> None:
        """End a job that no worker runs with `final` (queued, or waiting for its retry)."""
        if job.kind == "op":
            self._finish(job, final)
        else:
            self._forget(job)
            self._deliver(self.sessions.by_id.get(job.session), final)

    # -- other requests --------------------------------------------------------------------------
    def on_cancel(self, conn: Connection, msg: dict[str, Any], size: int) -> dict[str, Any] | None:
        session = self.sessions.session_of(conn)
        job = self._own_job(session, _field(msg, "job", str, required=True))
        job.cancel(CANCEL_CLIENT)
        queued = self.queue.remove(job.id) is not None
        retrying = not queued and self.dispatcher.take_retry(job.id) is not None
        if not (queued or retrying):
            self.dispatcher.cancel(job)
            return {"type": "ack", "job": job.id}  # running: its worker sends `cancelled`
        # Waiting: it never reaches a worker, so its end is ours to send, after the ack.
        self._answer(conn, msg, {"type": "ack", "job": job.id})
        final = job.envelope("cancelled", reason=CANCEL_CLIENT) if job.kind == "op" else cancelled_reply(job)
        if queued:
            self._end_queued(job, final)
        else:
            self._end(job, final)  # it left the queue (and its budget) before its first try
        return None

    def _own_job(self, session: Session, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise RequestError(
                ErrorCode.UNKNOWN_JOB, f"no queued or running job {loggable(job_id, 40)!r}", "job"
            )
        if job.session != session.id:
            raise RequestError(ErrorCode.NOT_OWNER, f"job {job_id} belongs to another client", "job")
        return job

    def on_status(self, conn: Connection, msg: dict[str, Any], size: int) -> dict[str, Any]:
        session = self.sessions.session_of(conn)
        wanted = _field(msg, "job", str)
        running = [job for job in self.dispatcher.running_jobs() if job.id in self.jobs]
        jobs = [_job_info(job, session, 0) for job in running]
        for position, job in enumerate([*self.dispatcher.retry, *self.queue.order()]):
            jobs.append(_job_info(job, session, position))
        if wanted is not None:
            jobs = [j for j in jobs if j["job"] == wanted]
            if not jobs:
                raise RequestError(
                    ErrorCode.UNKNOWN_JOB, f"no queued or running job {loggable(wanted, 40)!r}", "job"
                )
        return {
            "type": "status",
            "device": self._device(),
            "queued": len(self.queue) + len(self.dispatcher.retry),
            "running": running[0].id if running else None,
            "jobs": jobs,
            "workers": self.dispatcher.describe(),
        }

    def on_fetch(self, conn: Connection, msg: dict[str, Any], size: int) -> dict[str, Any] | None:
        """A job of this session by id: its state, and its final event once it has one."""
        session = self.sessions.session_of(conn)
        job_id = _field(msg, "job", str, required=True)
        frames = _field(msg, "frames", bool) or False
        job = self.jobs.get(job_id)
        if job is not None:
            self._own_job(session, job_id)
            return {
                "type": "fetched",
                "job": job.id,
                "state": job.state,
                "step": job.step,
                "total": job.total,
            }
        kept = self.results.get(job_id)
        if kept is not None:
            if kept.session != session.id:
                raise RequestError(ErrorCode.NOT_OWNER, f"job {job_id} belongs to another client", "job")
            reply = {"type": "fetched", "job": job_id, "state": "done", "event": kept.message}
            self._answer(conn, msg, reply, frames)
            kept.sent_to, kept.sent_at = conn, time.monotonic()
            return None
        owner = self.results.evicted_owner(job_id)
        if owner is not None and owner != session.id:
            raise RequestError(ErrorCode.NOT_OWNER, f"job {job_id} belongs to another client", "job")
        if owner is not None:
            raise RequestError(
                ErrorCode.RESULT_EXPIRED,
                f"job {job_id} finished, but its result was no longer kept (kept "
                f"{self.policy.results_ttl_s:g} s within {self.policy.results_bytes // 2**20} MiB)",
                "job",
            )
        raise RequestError(ErrorCode.UNKNOWN_JOB, f"no job {loggable(job_id, 40)!r} is known", "job")

    def on_models(self, conn: Connection, msg: dict[str, Any], size: int) -> dict[str, Any]:
        self.sessions.session_of(conn)
        return {
            "type": "models",
            "default": self.models.config.default,
            "presets": self._describe_presets(),
            "unusable": self._unusable(),
            "memory": self.dispatcher.memory(),
        }

    def _unusable(self) -> list[dict[str, str]]:
        """Files of the painter's models dir that made no preset, with the reason (PROTOCOL.md 6.7)."""
        return [dict(item) for item in self.models.config.unusable]

    def _describe_presets(self) -> list[dict[str, Any]]:
        return [
            self.catalog.describe(p, self.dispatcher.loaded_roles(p.name))
            for p in self.models.config.presets.values()
        ]

    def _device(self) -> str:
        """The workers' device, or their devices joined by commas when they differ."""
        devices = list(dict.fromkeys(d for d in self.dispatcher.devices() if d != "?"))
        return ",".join(devices) if devices else str(self.models.device)

    def _dtype(self) -> str:
        dtypes = list(dict.fromkeys(str(s.info["dtype"]) for s in self.dispatcher.slots.values() if s.info))
        return ",".join(dtypes) if dtypes else str(self.models.dtype).removeprefix("torch.")

    def on_load(self, conn: Connection, msg: dict[str, Any], size: int) -> None:
        return self._queue_admin(conn, msg, "load")

    def on_unload(self, conn: Connection, msg: dict[str, Any], size: int) -> None:
        return self._queue_admin(conn, msg, "unload")

    def _queue_admin(self, conn: Connection, msg: dict[str, Any], kind: str) -> None:
        """`load`/`unload` use the device, so they wait their turn like jobs (counted as jobs, shown
        in status, cancellable while queued); the worker answers them."""
        self._refuse_when_closing()
        session = self.sessions.session_of(conn)
        preset = self.models.preset(_field(msg, "model", str, required=True))
        op = _field(msg, "op", str) or next(iter(self.catalog.specs[preset.name]))  # the preset's first op
        if kind == "load":
            if op not in OPS:
                raise RequestError(
                    ErrorCode.UNKNOWN_OP, f"op {loggable(op, 40)!r} is not one of {list(OPS)}", "op"
                )
            self.catalog.spec(preset, op)  # unsupported_op, naming the presets that can
        self.budget.check_job(session.identity)
        job = Job(session.id, session.identity, kind, None, preset.name, op, msg.get("id"))
        self._track(session, job)
        self.queue.put(job)
        self.dispatcher.pump()
        return None

    def _refuse_when_closing(self) -> None:
        if self.closing_at is not None:
            raise RequestError(ErrorCode.SHUTTING_DOWN, "the daemon is shutting down: no new work is taken")

    # -- housekeeping ----------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + HOUSEKEEPING_S
        if self._reload_keys and self.auth is not None and self.keys is not None:
            self._reload_keys = False
            allow(self.auth, self.keys)
        for session in self.sessions.abandoned(now):
            self._abandon(session)
        self.results.expire(now)
        self.sessions.forget_idle(now, self.results.sessions())

    def _abandon(self, session: Session) -> None:
        """Nobody came back for these jobs within the grace period: stop them, keep their ends."""
        for job in self.queue.remove_session(session.id):
            job.cancel(CANCEL_ABANDONED)
            final = (
                job.envelope("cancelled", reason=CANCEL_ABANDONED)
                if job.kind == "op"
                else cancelled_reply(job)
            )
            self._end_queued(job, final)
            log.info("job %s cancelled: its client did not come back", job.id)
        for job in [j for j in self.dispatcher.retry if j.session == session.id]:
            self.dispatcher.take_retry(job.id)
            job.cancel(CANCEL_ABANDONED)
            self._end(
                job,
                job.envelope("cancelled", reason=CANCEL_ABANDONED)
                if job.kind == "op"
                else cancelled_reply(job),
            )
        for running in self.dispatcher.running_jobs():
            if running.session == session.id and not running.cancel_requested.is_set():
                running.cancel(CANCEL_ABANDONED)
                self.dispatcher.cancel(running)
                log.info("job %s stopping: its client did not come back", running.id)

    # -- shutdown --------------------------------------------------------------------------------
    def _begin_shutdown(self) -> None:
        """Take no new work; end the queued jobs now and the running one at its next step."""
        self.closing_at = time.monotonic()
        log.info("shutting down (grace %.1f s)", self.policy.shutdown_grace_s)
        for job in self.queue.drain():
            job.cancel(CANCEL_SHUTDOWN)
            self._end_queued(job, shutdown_event(job))
        for job in self.dispatcher.stop():
            job.cancel(CANCEL_SHUTDOWN)
            self._end(job, shutdown_event(job))
        for running in self.dispatcher.running_jobs():
            running.cancel(CANCEL_SHUTDOWN)
            self.dispatcher.cancel(running)
        self.queue.close()
        refusal = RequestError(ErrorCode.SHUTTING_DOWN, "the daemon is shutting down: no new work is taken")
        for session in list(self.sessions.by_id.values()):
            waiting = ([session.decoding] if session.decoding is not None else []) + list(session.pending)
            session.pending.clear()
            for pending in waiting:
                self._answer(pending.conn, pending.msg, refusal.to_message())

    def _shutdown_over(self) -> bool:
        """True once no worker runs a job, or the grace is over (then their jobs are ended for them)."""
        self._drain_inbox()
        if not self.dispatcher.busy():
            return True
        assert self.closing_at is not None
        if time.monotonic() - self.closing_at < self.policy.shutdown_grace_s:
            return False
        for running in self.dispatcher.running_jobs() + self.dispatcher.abandon_unloads():
            self.dispatcher.forget(running)
            if running.id not in self.jobs:
                continue
            log.warning(
                "job %s is still inside a step after %.1f s: ending it without waiting",
                running.id,
                self.policy.shutdown_grace_s,
            )
            self._finalized.add(running.id)
            self._end(running, shutdown_event(running))
        return True

    def _close(self) -> None:
        self.pool.close(self.policy.shutdown_grace_s)
        self.decoders.shutdown(wait=False, cancel_futures=True)
        self.router.disable_monitor()
        self.monitor.close(0)
        self.router.close(linger=FLUSH_MS)  # the last events still reach live clients
        if self.auth is not None:
            self.auth.stop()
        self.context.term()
        # The inbox's pipe stays open until the process ends: a decode still running may post to it.
        log.info("stopped")


def _fd(frame: Any) -> int:
    try:
        return int(frame.get(zmq.SRCFD))
    except (zmq.ZMQError, TypeError, ValueError):
        return -1


def _field(msg: dict[str, Any], name: str, kind: type, required: bool = False) -> Any:
    value = msg.get(name)
    if value is None:
        if required:
            raise RequestError(ErrorCode.MISSING_FIELD, f"{name} is required", name)
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RequestError(
            ErrorCode.INVALID_TYPE, f"{name} must be {kind.__name__}, got {type(value).__name__}", name
        )
    return value


def _lane(msg: dict[str, Any]) -> str | None:
    """A submit's `lane`: absent or nil = none; else a str of 1 … MAX_LANE_CHARS characters."""
    lane = _field(msg, "lane", str)
    if lane is not None and not 1 <= len(lane) <= MAX_LANE_CHARS:
        raise RequestError(
            ErrorCode.OUT_OF_RANGE, f"lane must have 1 … {MAX_LANE_CHARS} characters, got {len(lane)}", "lane"
        )
    return lane


def _internal(exc: BaseException) -> dict[str, Any]:
    """A bug of ours, said without Python's internals (the log has the traceback)."""
    return {
        "type": "error",
        "code": ErrorCode.JOB_FAILED,
        "message": "the daemon could not handle this request (an internal error; its log says more)",
    }


def _job_info(job: Job, session: Session, position: int) -> dict[str, Any]:
    """What status shows of a job: never its prompt, params or images (other clients see it too)."""
    return {
        "job": job.id,
        "op": job.shown_op,
        "model": job.model,
        "state": job.state,
        "position": position,
        "step": job.step,
        "total": job.total,
        "mine": job.session == session.id,
    }
