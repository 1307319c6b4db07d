"""One client connection as an outside tester drives it: raw frames out, every message in judged.

`Conversation` sends a case, waits for its direct reply (matched by `re`), and meanwhile routes the
events of the jobs this connection owns to their `Track`s. Anything else that arrives is a finding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from underpaint.protocol.messages import attach_frames

from .judge import Judge, Track, Verdict, scalar_id
from .messages import Case, pack
from .report import Tally

UNDECODABLE = object()


def refused_id(message: Any) -> bool:
    """An error about the request's own `id` (too long, say): it cannot carry that id back as `re`."""
    return (
        isinstance(message, dict)
        and message.get("type") == "error"
        and message.get("field") == "id"
        and "re" not in message
    )


class Peer:
    """A bare DEALER socket (PROTOCOL.md section 1)."""

    def __init__(self, endpoint: str, ctx: zmq.Context, options: dict[int, Any] | None = None) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        for option, value in (options or {}).items():
            self.sock.setsockopt(option, value)
        self.sock.connect(endpoint)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames, copy=len(frames[0]) < 65536)

    def recv(self, timeout: float) -> Any:
        """The next message (a dict with extra frames attached), UNDECODABLE, or None on timeout."""
        if not self.sock.poll(max(0, int(timeout * 1000)), zmq.POLLIN):
            return None
        parts = self.sock.recv_multipart()
        try:
            message = msgpack.unpackb(parts[0], raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException, UnicodeDecodeError):
            return UNDECODABLE
        if isinstance(message, dict) and len(parts) > 1:
            try:
                attach_frames(message, parts[1:])
            except ValueError:
                return UNDECODABLE
        return message

    def close(self) -> None:
        self.sock.close(0)


class Conversation:
    """One connection: cases in, replies and job events judged, jobs tracked until they end."""

    def __init__(
        self,
        endpoint: str,
        ctx: zmq.Context,
        judge: Judge,
        tally: Tally,
        seen_jobs: set[str],
        on_end: Callable[[Track, dict[str, Any]], None] | None = None,
        options: dict[int, Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.peer = Peer(endpoint, ctx, options)
        self.judge = judge
        self.tally = tally
        self.seen_jobs = seen_jobs
        self.tracks: dict[str, Track] = {}
        self.on_end = on_end
        self._id = 0

    def close(self) -> None:
        self.peer.close()

    def next_id(self) -> str:
        self._id += 1
        return f"r{self._id}"

    # -- incoming ----------------------------------------------------------------------------------
    def is_event(self, message: Any) -> bool:
        return (
            isinstance(message, dict)
            and message.get("job") in self.tracks
            and message.get("type") in ("progress", "loading", "result", "cancelled", "error")
        )

    def route(self, message: Any) -> None:
        """Judge a message that is not the reply being waited for."""
        if self.is_event(message):
            track = self.tracks[message["job"]]
            was_open = track.end is None
            verdict = self.judge.event(track, message)
            if message.get("type") not in ("progress", "loading"):  # when the daemon sent its final event
                track.notes["final_at"] = time.monotonic()
            self.count("event", verdict, {"job": track.job, "case": track.case.label, "event": message})
            if was_open and track.end is not None:
                self.tally.add(f"job_end:{track.end}")
                if self.on_end is not None:
                    self.on_end(track, message)
            return
        if isinstance(message, dict) and isinstance(message.get("job"), str):
            self.tally.find(
                "wrong_delivery:unknown_job_event",
                {"event": message, "note": "event for a job this connection never got"},
            )
            return
        self.tally.find(
            "undocumented:unsolicited",
            {"message": message if message is not UNDECODABLE else "<undecodable>"},
        )

    def count(self, where: str, verdict: Verdict, example: dict[str, Any]) -> None:
        self.tally.add(f"{where}:{verdict.key}")
        self.tally.add(f"class:{verdict.cls}")
        if verdict.cls != "documented" or verdict.key.startswith("wrong_delivery"):
            self.tally.find(verdict.key, {**example, "detail": verdict.detail})

    def pump(self, timeout: float) -> bool:
        """Route whatever arrives within `timeout`; False when nothing came."""
        message = self.peer.recv(timeout)
        if message is None:
            return False
        self.route(message)
        return True

    # -- outgoing ----------------------------------------------------------------------------------
    def exchange(self, case: Case, timeout: float) -> Any:
        """Send `case`, return its direct reply (None when none came in time); judge and track it."""
        started = time.monotonic()
        self.peer.send(case.frames)
        reply = self.wait_reply(case, timeout)
        if reply is None:
            return None
        self.tally.took(case.request or "other", time.monotonic() - started)
        verdict = self.judge.reply(case, reply if reply is not UNDECODABLE else "<undecodable>")
        self.count(
            "reply",
            verdict,
            {"case": case.label, "message": case.message or case.frames[0][:64], "reply": reply},
        )
        if isinstance(reply, dict) and reply.get("type") == "accepted" and isinstance(reply.get("job"), str):
            self.accept(case, reply["job"])
        return reply

    def wait_reply(self, case: Case, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            message = self.peer.recv(left)
            if message is None:
                return None
            if scalar_id(case.rid) and isinstance(message, dict) and message.get("re") == case.rid:
                return message  # first: a fetched result is the reply even though it is a job's event
            if refused_id(message):
                return message  # the daemon refused the id itself, so it could not echo it
            if self.is_event(message):
                self.route(message)
            elif not scalar_id(case.rid):
                return message
            else:
                self.route(message)

    def accept(self, case: Case, job: str) -> Track:
        if job in self.seen_jobs:
            self.tally.find("undocumented:job_id_reused", {"case": case.label, "job": job})
        self.seen_jobs.add(job)
        track = Track(job, case, time.monotonic(), run=True)
        self.tracks[job] = track
        self.tally.add("jobs_accepted")
        return track

    def request(self, type_: str, timeout: float, **fields: Any) -> Any:
        """A request of the harness itself (cancel, fetch...), judged like any other."""
        rid = self.next_id()
        message = {"type": type_, "id": rid, **fields}
        case = Case("harness", f"harness {type_}", [pack(message)], type_, rid=rid, message=message)
        reply = self.exchange(case, timeout)
        if reply is None:
            self.tally.find("undocumented:no_reply", {"case": case.label, "message": message})
        return reply

    def cancel(self, track: Track, timeout: float) -> Any:
        track.cancel_sent = True
        track.notes["cancel_at"] = time.monotonic()
        return self.request("cancel", timeout, job=track.job)

    # -- jobs --------------------------------------------------------------------------------------
    def open_tracks(self) -> list[Track]:
        return [t for t in self.tracks.values() if t.end is None]

    def drain(self, job_timeout: float, cancel_wait: float = 60.0) -> list[Track]:
        """Wait until every job has ended, cancelling those past `job_timeout`. A job that has not
        ended `cancel_wait` s after its cancel is lost: it is marked so and returned."""
        lost: list[Track] = []
        while self.open_tracks():
            now = time.monotonic()
            for track in self.open_tracks():
                if not track.cancel_sent and now - track.accepted_at > job_timeout:
                    self.tally.add("jobs_cancelled_for_time")
                    self.cancel(track, 10.0)
                elif track.cancel_sent and now - track.notes["cancel_at"] > cancel_wait:
                    track.end = "lost"
                    lost.append(track)
            self.pump(0.5)
        return lost
