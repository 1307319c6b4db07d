"""Judging replies and job events against PROTOCOL.md, as any client written from it would have to.

Every reply gets a verdict whose `cls` is `documented` (a well-formed reply of the expected type, or an
`error` whose code PROTOCOL.md lists), `traceback` (Python internals leaked into the reply) or
`undocumented` (no reply, wrong shape, unknown code, ...). Job events are judged the same way, and
results are checked against their request (op, preset, seeds, number and shape of images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .messages import NO_ID, Case
from .spec import EXPECTED_REPLY, RUNTIME_CODES

TRACE_MARKERS = ("Traceback (most recent call last)", "internal error", 'File "/')
# PROTOCOL.md 9.1: a final event sent less than 5 s before its connection was found dead is sent again
# on resume. Our drops are found at once (the socket closes), so 5 s plus a margin for the clocks.
RESEND_WINDOW_S = 6.0
TERMINAL = ("result", "cancelled", "error")
STATUS_JOB_FIELDS = frozenset({"job", "op", "model", "state", "position", "step", "total", "mine"})


@dataclass(frozen=True)
class Verdict:
    cls: str  # documented | undocumented | traceback
    key: str  # e.g. "error:invalid_type", "ok:accepted", "undocumented:no_reply"
    detail: str = ""


def ok(key: str) -> Verdict:
    return Verdict("documented", key)


def undocumented(key: str, detail: str = "") -> Verdict:
    return Verdict("undocumented", f"undocumented:{key}", detail)


def find_trace(node: Any, budget: list[int] | None = None) -> str | None:
    """The first text in a reply that shows Python internals (a traceback, "internal error")."""
    budget = budget if budget is not None else [400]
    budget[0] -= 1
    if budget[0] < 0:
        return None
    if isinstance(node, str):
        for marker in TRACE_MARKERS:
            if marker in node:
                return node[:300]
        return None
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        for value in node[:64]:
            found = find_trace(value, budget)
            if found:
                return found
    return None


def scalar_id(rid: Any) -> bool:
    """An id the daemon can echo and a client can match (int or str, section 3)."""
    if rid is NO_ID or isinstance(rid, bool):
        return False
    return isinstance(rid, int | str)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_image(image: Any, channels: int | None = None) -> str | None:
    """Why an image object the daemon sent is malformed (section 4), or None."""
    if not isinstance(image, dict):
        return "image not a map"
    if image.get("format") == "png":
        data = image.get("data")
        return None if isinstance(data, bytes) and data.startswith(b"\x89PNG") else "png data is not a PNG"
    width, height, chans, data = (image.get(k) for k in ("width", "height", "channels", "data"))
    if not (_int(width) and _int(height) and _int(chans)) or width <= 0 or height <= 0:
        return "image size not positive ints"
    if channels is not None and chans != channels:
        return f"image has {chans} channels, expected {channels}"
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) != width * height * chans:
        return "image data length differs from width*height*channels"
    return None


@dataclass
class Track:
    """What is known about one accepted job."""

    job: str
    case: Case
    accepted_at: float
    run: bool
    cancel_sent: bool = False
    step: int = 0
    total: int = 0
    end: str | None = None
    result: dict[str, Any] | None = None
    events: int = 0
    progress_at: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


class Judge:
    def __init__(self, codes: frozenset[str]) -> None:
        self.codes = codes

    def error(self, reply: dict[str, Any]) -> Verdict:
        code = reply.get("code")
        if not isinstance(code, str) or code not in self.codes:
            return undocumented(f"unknown_code:{code!r}"[:80], str(reply.get("message"))[:200])
        message = reply.get("message")
        if not isinstance(message, str) or not message.strip():
            return undocumented("error_without_message", code)
        if "field" in reply and not isinstance(reply["field"], str):
            return undocumented("error_field_not_str", code)
        return ok(f"error:{code}")

    def reply(self, case: Case, reply: Any) -> Verdict:
        """The verdict on the direct reply to `case` (None: no reply came)."""
        if reply is None:
            return undocumented("no_reply")
        if not isinstance(reply, dict):
            return undocumented("reply_not_a_map", repr(reply)[:120])
        trace = find_trace(reply)
        if trace:
            return Verdict("traceback", f"traceback:{reply.get('code', reply.get('type'))}", trace)
        kind = reply.get("type")
        if not isinstance(kind, str):
            return undocumented("reply_without_type")
        refused_id = kind == "error" and reply.get("field") == "id" and "re" not in reply
        if scalar_id(case.rid) and reply.get("re") != case.rid and not refused_id:
            return undocumented("re_mismatch", f"sent id {case.rid!r:.40}, got re {reply.get('re')!r:.40}")
        if kind == "error":
            verdict = self.error(reply)
            if verdict.cls == "documented" and "job" in reply and case.request not in ("submit", "fetch"):
                return undocumented("error_reply_with_job", f"{case.request} answered by an error with job")
            return verdict
        expected = EXPECTED_REPLY.get(case.request or "", frozenset())
        if case.request is None and not case.bad:
            expected = frozenset().union(*EXPECTED_REPLY.values())
        if kind not in expected:
            return undocumented(f"wrong_reply_type:{kind}"[:60], f"to {case.request!r}")
        why = self.shape(kind, reply)
        return undocumented(f"shape:{kind}", why) if why else ok(f"ok:{kind}")

    @staticmethod
    def shape(kind: str, reply: dict[str, Any]) -> str | None:
        """Why a success reply is malformed, or None (section 6)."""
        if kind == "accepted":
            job = reply.get("job")
            if not isinstance(job, str) or not 0 < len(job) <= 32:
                return "accepted without a job id of 1-32 chars"
            if not _int(reply.get("position")) or reply["position"] < 0:
                return "accepted without a position"
        elif kind == "welcome":
            if reply.get("protocol") != 1 or not isinstance(reply.get("models"), list):
                return "welcome without protocol 1 or models"
            if "sessions" in (reply.get("features") or []):
                if not isinstance(reply.get("session"), str) or not isinstance(reply.get("resumed"), bool):
                    return "welcome of a daemon with sessions lacks session/resumed"
                if not isinstance(reply.get("jobs"), list):
                    return "welcome of a daemon with sessions lacks jobs"
        elif kind == "fetched":
            state, event = reply.get("state"), reply.get("event")
            if not isinstance(reply.get("job"), str) or state not in ("queued", "running", "done"):
                return "fetched without job or a known state"
            if state == "done" and (not isinstance(event, dict) or event.get("type") not in TERMINAL):
                return "fetched done without its final event"
        elif kind == "status":
            jobs = reply.get("jobs")
            if not _int(reply.get("queued")) or not isinstance(jobs, list):
                return "status without queued/jobs"
            for entry in jobs:
                if not isinstance(entry, dict) or not isinstance(entry.get("job"), str):
                    return "status job entry malformed"
                if entry.get("mine") is False and set(entry) - STATUS_JOB_FIELDS:
                    return f"status shows another client's {sorted(set(entry) - STATUS_JOB_FIELDS)}"
        elif kind == "ack":
            if not isinstance(reply.get("job"), str):
                return "ack without job"
        elif kind == "models":
            if not isinstance(reply.get("presets"), list):
                return "models without presets"
        elif kind in ("loaded", "unloaded") and not isinstance(reply.get("model"), str):
            return f"{kind} without model"
        return None

    def event(self, track: Track, event: dict[str, Any]) -> Verdict:
        """The verdict on one job event; updates `track`."""
        track.events += 1
        kind = event.get("type")
        if track.end is not None:
            again = {"result": "result", "cancelled": "cancelled"}.get(kind, f"error:{event.get('code')}")
            if track.notes.get("dropped") and again == track.end:  # the client drops the copy
                before = track.notes.get("ended_before_drop")
                if before is None:
                    return ok("job:final_again_after_reconnect")  # ended while away: sent, and fetched
                if before <= RESEND_WINDOW_S:
                    return ok("job:final_again_after_reconnect:ended_just_before_the_drop")
                return undocumented("final_sent_again_long_after_delivery", f"{before:.1f} s before the drop")
            return undocumented("event_after_end", f"{kind} after {track.end}")
        trace = find_trace(event)
        if trace:
            track.end = "traceback"
            return Verdict("traceback", f"traceback:job:{event.get('code', kind)}", trace)
        if scalar_id(track.case.rid) and event.get("re") != track.case.rid:
            return undocumented("event_re_mismatch", f"{kind}: re {event.get('re')!r:.40}")
        if kind == "progress":
            return self.progress(track, event)
        if kind == "loading":  # 6.10: a model of the job is loading; before its steps or between them
            fine = isinstance(event.get("what"), str) and isinstance(event.get("elapsed_s"), (int, float))
            return ok("job:loading") if fine else undocumented("loading_fields", str(sorted(event))[:60])
        if kind == "cancelled":
            track.end = "cancelled"
            return ok("job:cancelled") if track.cancel_sent else undocumented("cancelled_unasked")
        if kind == "error":
            track.end = f"error:{event.get('code')}"
            verdict = self.error(event)
            if verdict.cls != "documented":
                return verdict
            code = event["code"]
            return ok(f"job:error:{code}") if code in RUNTIME_CODES or code in self.codes else verdict
        if kind == "result":
            track.end = "result"
            track.result = event
            return self.result(track, event)
        return undocumented(f"event_type:{kind}"[:60])

    @staticmethod
    def progress(track: Track, event: dict[str, Any]) -> Verdict:
        step, total = event.get("step"), event.get("total")
        if not (_int(step) and _int(total)):
            return undocumented("progress_shape", f"step {step!r} total {total!r}")
        if step < track.step or step > total or step < 1:
            return undocumented("progress_order", f"step {step}/{total} after {track.step}/{track.total}")
        track.step, track.total = step, total
        if "preview" in event:
            why = check_image(event["preview"], 3)
            if why:
                return undocumented("preview_shape", why)
        return ok("job:progress")

    @staticmethod
    def result(track: Track, event: dict[str, Any]) -> Verdict:
        images = event.get("images")
        if not isinstance(images, list) or not images:
            return undocumented("result_shape", "no images")
        for image in images:
            why = (
                check_image(image, 4 if image.get("format", "raw") == "raw" else None)
                if isinstance(image, dict)
                else "image not a map"
            )
            if why:
                return undocumented("result_shape", why)
            if not all(_int(image.get(k)) for k in ("x", "y", "seed")):
                return undocumented("result_shape", "image without x, y, seed")
        expect = track.case.submit or {}
        if expect.get("op") is not None and event.get("op") != expect["op"]:
            return Verdict("undocumented", "wrong_delivery:op", f"{event.get('op')} for {expect['op']}")
        if expect.get("model") is not None and event.get("model") != expect["model"]:
            return Verdict(
                "undocumented", "wrong_delivery:model", f"{event.get('model')} for {expect['model']}"
            )
        if expect.get("images") is not None and len(images) != expect["images"]:
            return undocumented("result_image_count", f"{len(images)} images for {expect['images']}")
        seed = event.get("seed")
        if expect.get("seed") is not None and seed != expect["seed"]:
            return Verdict("undocumented", "wrong_delivery:seed", f"seed {seed} for {expect['seed']}")
        if expect.get("op") != "compare" and _int(seed):
            seeds = [image.get("seed") for image in images]
            if seeds != [seed + i for i in range(len(images))]:
                return undocumented("result_seeds", f"image seeds {seeds[:4]} from {seed}")
        timings = event.get("timings")
        if isinstance(timings, dict) and not all(
            isinstance(v, int | float) and math.isfinite(v) for v in timings.values()
        ):
            return undocumented("result_timings", repr(timings)[:100])
        return ok("job:result")
