"""The soak: many real jobs from several clients at once, some cancelled, some clients dropped.

Every accepted job must end in a result or a documented error, on the connection that owns it (or the
one that resumed its session); every result must be the one its request asked for; repeated reference
requests must give the same pixels and the same step count; the daemon's RSS is followed throughout.
"""

from __future__ import annotations

import hashlib
import random
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

from .daemon import Target, probe
from .fuzz import scan_log
from .judge import Judge, Track
from .messages import Case, build_base, expectation, pack
from .peer import Conversation
from .report import Tally, failures
from .spec import Welcome, documented_codes, protocol_text


@dataclass
class SoakPlan:
    jobs: int = 1000
    clients: int = 4
    inflight: int = 2
    cancel_rate: float = 0.1
    drop_rate: float = 0.02
    reference_rate: float = 0.08
    presets: str = "tiny*"
    seed: int = 1
    job_timeout: float = 300.0
    reply_timeout: float = 30.0
    probe_every: float = 5.0
    probe_timeout: float = 10.0
    max_seconds: float = 3 * 3600.0
    progress: bool = False  # a line on stderr every 30 s


class Soak:
    def __init__(
        self, target: Target, plan: SoakPlan, tally: Tally | None = None, protocol_md: str | None = None
    ) -> None:
        self.target = target
        self.plan = plan
        self.tally = tally or Tally()
        self.judge = Judge(documented_codes(protocol_text(protocol_md)))
        self.ctx = zmq.Context.instance()
        self.seen_jobs: set[str] = set()
        self.lock = threading.Lock()
        self.issued = 0
        self.stop = threading.Event()
        self.references: dict[str, tuple[str, int, str]] = {}
        self.welcome: Welcome | None = None
        self.pairs: list[tuple[str, str]] = []
        self.dead = False  # died or hung: nothing more will come, so the clients stop waiting

    # -- shared state --------------------------------------------------------------------------------
    def take(self) -> bool:
        with self.lock:
            if self.issued >= self.plan.jobs or self.stop.is_set():
                return False
            self.issued += 1
            return True

    @property
    def finished(self) -> int:
        """Jobs that have ended one way or another (results, errors, cancels, orphans, losses)."""
        return sum(self.tally.prefixed("job_end:").values())

    # -- the run ---------------------------------------------------------------------------------------
    def run(self) -> Tally:
        started = time.monotonic()
        conv = Conversation(
            self.target.endpoint,
            self.ctx,
            self.judge,
            self.tally,
            self.seen_jobs,
            options=self.target.options,
        )
        welcome = conv.request("hello", self.plan.reply_timeout, protocol=1, client="reliability-soak")
        conv.close()
        if not isinstance(welcome, dict) or welcome.get("type") != "welcome":
            raise RuntimeError(f"no welcome from {self.target.endpoint}: {welcome!r:.300}")
        self.welcome = Welcome(welcome)
        presets = self.welcome.matching(self.plan.presets)
        self.pairs = [(p, op) for p in presets for op in self.welcome.ops(p)]
        self.tally.info["presets soaked"] = ", ".join(presets)
        self.tally.info["resume"] = "yes (session token)" if self.welcome.session else "no (daemon has none)"
        self.sample()
        clients = [SoakClient(self, i) for i in range(self.plan.clients)]
        for client in clients:
            client.start()
        monitor = threading.Thread(target=self.watch, args=(started,), daemon=True)
        monitor.start()
        for client in clients:
            client.join()
        self.stop.set()
        monitor.join()
        self.sample()
        text, _ = self.target.log_since(0)
        scan_log(text, self.tally)
        self.tally.info["seconds"] = round(time.monotonic() - started, 1)
        self.tally.info["jobs per second"] = round(self.finished / max(time.monotonic() - started, 1e-9), 2)
        return self.tally

    def watch(self, started: float) -> None:
        """RSS every second; every few seconds a fresh client must be answered (hang) and the process
        must live (death). The soak stops at a death or a hang, or at its time limit."""
        last_probe = last_line = time.monotonic()
        while not self.stop.wait(1.0):
            self.sample()
            if self.plan.progress and time.monotonic() - last_line > 30:
                last_line = time.monotonic()
                bad = failures(self.tally)
                print(
                    f"soak: {self.finished}/{self.plan.jobs} jobs ended in {last_line - started:.0f} s, "
                    f"must-be-zero findings {sum(bad.values())} {sorted(bad)[:6]}",
                    file=sys.stderr,
                    flush=True,
                )
            if time.monotonic() - started > self.plan.max_seconds:
                self.tally.info["stopped early"] = f"time limit {self.plan.max_seconds:.0f} s"
                self.stop.set()
            if time.monotonic() - last_probe < self.plan.probe_every:
                continue
            last_probe = time.monotonic()
            if not self.target.alive():
                self.tally.find("death", {"jobs_finished": self.finished})
                self.dead = True
                self.stop.set()
            elif (
                latency := probe(self.target.endpoint, self.ctx, self.plan.probe_timeout, self.target.options)
            ) is None:
                self.tally.find(
                    "hang",
                    {
                        "jobs_finished": self.finished,
                        "note": f"no welcome within {self.plan.probe_timeout} s",
                    },
                )
                self.dead = True
                self.stop.set()
            else:
                self.tally.took("probe", latency)

    def sample(self) -> None:
        rss, hwm = self.target.rss()
        self.tally.rss.add(self.finished, rss, hwm)

    # -- requests ----------------------------------------------------------------------------------------
    def job_case(self, rng: random.Random, rid: str) -> tuple[Case, str | None]:
        """A random valid job (or, sometimes, a reference job whose pixels must always be the same)."""
        assert self.welcome is not None
        preset, op = rng.choice(self.pairs)
        spec = self.welcome.spec(preset, op)
        ps = spec["params"]
        reference = rng.random() < self.plan.reference_rate
        base = build_base(self.welcome, preset, op, 4242 if reference else rng.randrange(2**32 - 16))
        msg = base.message(rid)
        key = None
        if reference:
            key = f"{preset}/{op}"
        else:
            params = msg["params"]
            if "steps" in ps:
                params["steps"] = rng.randint(params["steps"], max(params["steps"], 4))
            if "variations" in ps and rng.random() < 0.2:
                params["variations"] = 2
            if "scheduler" in ps and rng.random() < 0.15:
                params["scheduler"] = rng.choice(ps["scheduler"].get("choices") or [""])
            if "output_format" in ps and rng.random() < 0.1:
                params["output_format"] = "png"
            if (
                "mask" in spec["images"]
                and "mask" not in msg["images"]
                and "image" in msg["images"]
                and rng.random() < 0.4
            ):
                from .images import mask

                msg["images"]["mask"] = mask(*base.size, box=(0.1, 0.2, 0.6, 0.9))
            if rng.random() < 0.2:
                msg["preview"] = True
            if rng.random() < 0.1:
                msg["frames"] = True
        case = Case(
            "soak",
            f"{preset}/{op}" + (" (reference)" if key else ""),
            [pack(msg)],
            "submit",
            rid=rid,
            message=msg,
            submit=expectation(self.welcome, msg),
        )
        case.notes["size"] = base.size
        return case, key

    def check_reference(self, track: Track, result: dict[str, Any]) -> None:
        key = track.notes.get("reference")
        if not key:
            return
        digest = hashlib.sha256(b"".join(bytes(i.get("data", b"")) for i in result["images"])).hexdigest()
        with self.lock:
            first = self.references.setdefault(key, (digest, track.total, track.job))
        self.tally.add("reference_results")
        if first[0] != digest:
            self.tally.find(
                "nondeterministic:pixels", {"request": key, "first_job": first[2], "job": track.job}
            )
        if first[1] != track.total:
            self.tally.find(
                "nondeterministic:total",
                {"request": key, "first_total": first[1], "total": track.total, "job": track.job},
            )

    def check_placement(self, track: Track, result: dict[str, Any]) -> None:
        """Result images lie where section 7 says: inside the request's image, or at (0, 0)."""
        message = track.case.message or {}
        width, height = track.case.notes.get("size", (0, 0))
        has_image = "image" in (message.get("images") or {}) and message.get("op") != "mix"
        for image in result["images"]:
            x, y = image["x"], image["y"]
            w, h = image_size(image)
            if message.get("op") == "upscale":
                good = (x, y) == (0, 0) and w > width and h > height
            elif has_image:
                good = x >= 0 and y >= 0 and x + w <= width and y + h <= height
            else:
                good = (x, y) == (0, 0)
            if not good:
                self.tally.find(
                    "wrong_delivery:placement",
                    {"case": track.case.label, "x": x, "y": y, "w": w, "h": h, "image": f"{width}x{height}"},
                )


def image_size(image: dict[str, Any]) -> tuple[int, int]:
    """Width and height of a result image, raw or PNG (read from the PNG's IHDR chunk)."""
    if image.get("format") == "png":
        data = bytes(image["data"])
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return image["width"], image["height"]


class SoakClient(threading.Thread):
    """One client: keeps a few jobs in flight, cancels some, drops its connection now and then."""

    def __init__(self, soak: Soak, index: int) -> None:
        super().__init__(name=f"soak-client-{index}", daemon=True)
        self.soak = soak
        self.index = index
        self.rng = random.Random(soak.plan.seed * 1000 + index)
        self.session: str | None = None
        self.conv: Conversation | None = None
        self.counter = 0
        self.dropped_at = 0.0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self.loop()
        except BaseException as exc:  # a harness bug must show in the report, not vanish in a thread
            self.failure = exc
            self.soak.tally.find("harness_error", {"client": self.index, "error": repr(exc)})
            self.soak.stop.set()

    def connect(self, resume: bool = False) -> None:
        old = self.conv
        conv = Conversation(
            self.soak.target.endpoint,
            self.soak.ctx,
            self.soak.judge,
            self.soak.tally,
            self.soak.seen_jobs,
            on_end=self.on_end,
            options=self.soak.target.options,
        )
        fields: dict[str, Any] = {"protocol": 1, "client": f"reliability-soak-{self.index}"}
        if resume and self.session:
            fields["session"] = self.session
        welcome = conv.request("hello", self.soak.plan.reply_timeout, **fields)
        welcome = welcome if isinstance(welcome, dict) else {}
        if isinstance(welcome.get("session"), str):
            self.session = welcome["session"]
        self.conv = conv
        if old is None:
            return
        if not (resume and welcome.get("resumed")):
            if resume and "session" in fields:
                self.soak.tally.find(
                    "lost:resume_refused", {"client": self.index, "welcome_resumed": welcome.get("resumed")}
                )
            for track in old.open_tracks():  # their events go nowhere now: nothing can follow them
                track.end = "orphaned"
                self.soak.tally.add("job_end:orphaned")
            return
        self.adopt(old, welcome)

    def adopt(self, old: Conversation, welcome: dict[str, Any]) -> None:
        """The resumed session's jobs follow it: those still running report here, finished ones are
        fetched, and one the daemon no longer knows is lost."""
        assert self.conv is not None
        self.soak.tally.add("sessions_resumed")
        known = {j.get("job"): j for j in welcome.get("jobs") or [] if isinstance(j, dict)}
        self.conv.tracks.update(old.tracks)
        for track in old.tracks.values():
            track.notes["dropped"] = True  # a final event may come again on the new connection
            if track.end is not None:  # how long before this drop its final event last came
                final_at = track.notes.get("final_at", self.dropped_at)
                track.notes["ended_before_drop"] = self.dropped_at - final_at
        for track in old.open_tracks():
            entry = known.get(track.job)
            if entry is None:
                track.end = "lost"
                self.soak.tally.add("job_end:lost")
                self.soak.tally.find(
                    "lost:forgotten_on_resume",
                    {"case": track.case.label, "job": track.job, "jobs_in_welcome": list(known)[:8]},
                )
            elif entry.get("state") == "done":
                self.fetch(track)

    def on_end(self, track: Track, event: dict[str, Any]) -> None:
        """Results are checked; a valid job that fails is a finding even with a documented code."""
        if event.get("type") == "result" and track.end == "result":
            self.on_result(track, event)
        elif event.get("type") == "error":
            self.soak.tally.find(
                f"job_error:{event.get('code')}",
                {"case": track.case.label, "message": track.case.message, "error": event.get("message")},
            )

    def loop(self) -> None:
        plan = self.soak.plan
        self.connect()
        assert self.conv is not None
        while not self.soak.stop.is_set():
            while len(self.conv.open_tracks()) < plan.inflight and self.soak.take():
                self.submit()
                if self.rng.random() < plan.drop_rate:
                    self.drop()
            if not self.conv.open_tracks():
                break
            self.conv.pump(0.2)
            self.cancel_some()
        self.finish()

    def submit(self) -> None:
        assert self.conv is not None
        self.counter += 1
        case, reference = self.soak.job_case(self.rng, f"c{self.index}-{self.counter}")
        reply = self.conv.exchange(case, self.soak.plan.reply_timeout)
        self.soak.tally.add("jobs_submitted")
        if not isinstance(reply, dict) or reply.get("type") != "accepted":
            if reply is None:
                self.soak.tally.find("undocumented:no_reply", {"case": case.label})
            else:
                self.soak.tally.find(
                    "refused:valid_job", {"case": case.label, "reply": reply, "message": case.message}
                )
            return
        track = self.conv.tracks[reply["job"]]
        if reference:
            track.notes["reference"] = reference
        if self.rng.random() < self.soak.plan.cancel_rate:
            track.notes["cancel_when"] = self.rng.choice(["accepted", "progress"])

    def cancel_some(self) -> None:
        assert self.conv is not None
        for track in self.conv.open_tracks():
            when = track.notes.get("cancel_when")
            if when and not track.cancel_sent and (when == "accepted" or track.step > 0):
                reply = self.conv.cancel(track, self.soak.plan.reply_timeout)
                self.soak.tally.add("jobs_cancel_requested")
                if isinstance(reply, dict) and reply.get("type") == "ack":
                    track.notes["acked"] = True

    def on_result(self, track: Track, result: dict[str, Any]) -> None:
        if track.notes.get("acked"):
            self.soak.tally.find(
                "undocumented:result_after_cancel_ack", {"case": track.case.label, "job": track.job}
            )
        self.soak.check_placement(track, result)
        self.soak.check_reference(track, result)

    def drop(self) -> None:
        """Vanish without a word (an editor restart) and come back on a new connection."""
        assert self.conv is not None
        self.soak.tally.add("connections_dropped")
        self.soak.tally.add("jobs_in_flight_at_drop", len(self.conv.open_tracks()))
        self.dropped_at = time.monotonic()
        self.conv.close()
        self.connect(resume=True)

    def finish(self) -> None:
        """Wait for every job still open, after asking by id for those that a drop interrupted."""
        assert self.conv is not None
        if self.soak.dead:
            for track in self.conv.open_tracks():
                track.end = "lost"
                self.soak.tally.add("job_end:lost")
                self.soak.tally.find("lost:daemon_gone", {"case": track.case.label, "job": track.job})
            self.conv.close()
            return
        if self.session:
            for track in self.conv.open_tracks():
                if track.notes.get("dropped"):
                    self.fetch(track)
        for track in self.conv.drain(self.soak.plan.job_timeout):
            self.soak.tally.add("job_end:lost")
            self.soak.tally.find(
                "lost:job_never_ended", {"case": track.case.label, "job": track.job, "client": self.index}
            )
        self.conv.close()

    def fetch(self, track: Track) -> None:
        """Ask for a job's outcome by id (`fetched`: its state and, once done, its final event)."""
        assert self.conv is not None
        reply = self.conv.request("fetch", self.soak.plan.reply_timeout, job=track.job)
        self.soak.tally.add("fetch_requests")
        if not isinstance(reply, dict) or track.end is not None:
            return
        event = reply.get("event") if reply.get("type") == "fetched" else None
        if reply.get("type") == "error" and reply.get("code") != "unknown_type":
            event = {**reply, "job": track.job}  # e.g. result_expired: the job's documented end
        if isinstance(event, dict):
            self.conv.route({**event, "re": track.case.rid, "job": track.job})
