"""The long fuzz: many generated messages against one daemon, every reply judged, the daemon watched.

Between batches the harness waits for this connection's jobs to end, opens a fresh connection, checks
that a new client is answered in time (hang), that the process lives (death), reads its RSS and the
new part of its log (tracebacks, forged lines). A death or a hang is recorded with the messages that
came just before it, and the daemon is started again so the run can go on.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import zmq

from .daemon import TRACEBACK, Target, probe
from .judge import Judge, Track
from .messages import FORGED, Case, Generator, build_base, pack
from .peer import Conversation
from .report import Tally, failures
from .spec import Welcome, documented_codes, protocol_text

FILLER_STEPS = 60  # about a second of a tiny model: longer than any request takes to validate


@dataclass
class FuzzPlan:
    messages: int = 100_000
    seed: int = 1
    presets: str = "tiny*"
    batch: int = 250
    reply_timeout: float = 20.0
    probe_timeout: float = 5.0
    hang_timeout: float = 60.0
    job_timeout: float = 180.0
    run_cost: float = 64.0
    runs_per_label: int = 1
    max_inflight: int = 6
    max_seconds: float = 4 * 3600.0
    kinds: tuple[str, ...] = ()  # only these kinds of case (all when empty)
    progress: bool = False  # a line on stderr every 20 batches


class Fuzz:
    def __init__(
        self, target: Target, plan: FuzzPlan, tally: Tally | None = None, protocol_md: str | None = None
    ) -> None:
        self.target = target
        self.plan = plan
        self.tally = tally or Tally()
        self.judge = Judge(documented_codes(protocol_text(protocol_md)))
        self.ctx = zmq.Context.instance()
        self.rng = random.Random(plan.seed)
        self.seen_jobs: set[str] = set()
        self.runs: Counter[str] = Counter()
        self.recent: deque[Case] = deque(maxlen=5)
        self.log_offset = 0
        self.sent = 0
        self.conv: Conversation | None = None
        self.filler: Track | None = None
        self.gen: Generator | None = None
        self.welcome: Welcome | None = None

    # -- connection --------------------------------------------------------------------------------
    def connect(self) -> None:
        """A fresh connection that starts with `hello`, as a client would."""
        if self.conv is not None:
            self.conv.close()
        self.conv = Conversation(
            self.target.endpoint,
            self.ctx,
            self.judge,
            self.tally,
            self.seen_jobs,
            options=self.target.options,
        )
        reply = self.conv.request("hello", self.plan.reply_timeout, protocol=1, client="reliability-fuzz")
        if not isinstance(reply, dict) or reply.get("type") != "welcome":
            raise RuntimeError(f"the daemon at {self.target.endpoint} did not welcome us: {reply!r:.300}")
        if self.welcome is None:
            self.welcome = Welcome(reply)
            presets = self.welcome.matching(self.plan.presets)
            self.gen = Generator(self.welcome, presets)
            self.tally.info["presets fuzzed"] = ", ".join(presets)
            self.tally.info["documented codes"] = len(self.judge.codes)

    def rotate(self) -> None:
        """Let this connection's jobs end, then start a new connection (its jobs become others')."""
        assert self.conv is not None and self.gen is not None
        for track in self.conv.drain(self.plan.job_timeout):
            self.tally.find(
                "lost:job_never_ended",
                {"case": track.case.label, "job": track.job, "message": track.case.message},
            )
        self.gen.other_jobs = list(self.conv.tracks)[-50:]
        self.connect()

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> Tally:
        started = time.monotonic()
        self.sample()
        self.connect()
        assert self.gen is not None
        for index in range(self.plan.messages):
            if time.monotonic() - started > self.plan.max_seconds:
                self.tally.info["stopped early"] = f"time limit {self.plan.max_seconds:.0f} s at {index}"
                break
            kind = self.rng.choice(self.plan.kinds) if self.plan.kinds else None
            self.one(self.gen.make(self.rng, kind))
            if (index + 1) % self.plan.batch == 0:
                self.checkpoint()
                if self.plan.progress and (index + 1) % (self.plan.batch * 20) == 0:
                    self.progress(started)
        self.checkpoint()
        self.tally.info["seconds"] = round(time.monotonic() - started, 1)
        self.tally.info["daemon starts"] = getattr(self.target, "starts", 1)
        return self.tally

    def one(self, case: Case) -> None:
        assert self.conv is not None
        self.sent += 1
        self.tally.add("messages")
        self.tally.add(f"kind:{case.kind}")
        self.recent.append(case)
        if case.request == "submit" and (not case.bad or case.cost > self.plan.run_cost):
            self.ensure_ahead()  # a job likely to be accepted: what we cancel must never start
        reply = self.conv.exchange(case, self.plan.reply_timeout)
        if reply is None:
            self.no_reply(case)
            return
        if not isinstance(reply, dict):
            return
        success = reply.get("type") not in ("error", None)
        if case.bad and success:
            self.tally.find(
                f"accepted_invalid:{case.kind}", {"case": case.label, "message": case.message, "reply": reply}
            )
        if reply.get("type") == "accepted" and reply.get("job") in self.conv.tracks:
            self.decide(self.conv.tracks[reply["job"]])
        while len(self.conv.open_tracks()) >= self.plan.max_inflight:
            if not self.conv.pump(self.plan.job_timeout):
                self.conv.drain(self.plan.job_timeout)

    def decide(self, track: Track) -> None:
        """Let a cheap job run so its end is judged too, and cancel the others at once. Cheap jobs run
        when they are outside the spec (the daemon should not have taken them: what happens next?)
        and otherwise once per `run_key`."""
        assert self.conv is not None
        key = run_key(track.case)
        cheap = track.case.cost <= self.plan.run_cost
        if cheap and (track.case.bad or self.runs[key] < self.plan.runs_per_label):
            self.runs[key] += 1
            self.tally.add("jobs_run")
            return
        track.run = False
        self.tally.add("jobs_cancelled_at_once")
        self.conv.cancel(track, self.plan.reply_timeout)

    def ensure_ahead(self) -> None:
        """Keep a long cheap job of ours queued or running, so that a job we cancel right after
        `accepted` waits behind it (same client, FIFO) and never starts: cancelled at once means never
        run, whatever the timing, and an expensive job can never hold the worker."""
        assert self.conv is not None and self.welcome is not None and self.gen is not None
        filler = self.filler
        if filler is not None and filler.end is None and filler.job in self.conv.tracks:
            if not filler.total or filler.step < 0.6 * filler.total:
                return
        preset = next((p for p in self.gen.presets if "txt2img" in self.welcome.ops(p)), None)
        if preset is None:
            return
        base = build_base(self.welcome, preset, "txt2img", 7)
        base.params["steps"] = FILLER_STEPS
        msg = base.message(f"filler{self.sent}")
        expect = {"op": "txt2img", "model": preset, "seed": 7, "images": 1}
        case = Case("filler", "filler job", [pack(msg)], "submit", rid=msg["id"], message=msg, submit=expect)
        reply = self.conv.exchange(case, self.plan.reply_timeout)
        self.tally.add("filler_jobs")
        if isinstance(reply, dict) and reply.get("job") in self.conv.tracks:
            self.filler = self.conv.tracks[reply["job"]]

    # -- health --------------------------------------------------------------------------------------
    def no_reply(self, case: Case) -> None:
        """No reply in time: a dropped connection (expected for some), a death, a hang, or a lost reply."""
        if not self.target.alive():
            self.death(case)
            return
        if probe(self.target.endpoint, self.ctx, self.plan.probe_timeout, self.target.options) is None:
            if probe(self.target.endpoint, self.ctx, self.plan.hang_timeout, self.target.options) is None:
                self.hang(case)
                return
            self.tally.find("slow:no_answer_within_probe_timeout", self.example(case))
        if case.expect_reply:
            self.tally.find("undocumented:no_reply", self.example(case))
            self.tally.add("reply:undocumented:no_reply")
        self.rotate_after_loss()

    def rotate_after_loss(self) -> None:
        """Leave a connection whose state we no longer know (its jobs are judged lost if they never end)."""
        assert self.conv is not None
        open_jobs = self.conv.open_tracks()
        if open_jobs:
            self.tally.add("jobs_abandoned_with_connection", len(open_jobs))
        self.connect()

    def example(self, case: Case) -> dict[str, Any]:
        return {
            "case": case.label,
            "message": case.message if case.message is not None else case.frames[0][:64],
            "before": [c.label for c in list(self.recent)[:-1]],
        }

    def death(self, case: Case) -> None:
        code = getattr(self.target, "returncode", lambda: None)()
        self.tally.find("death", {**self.example(case), "exit_status": code, "log_tail": self.log_tail()})
        self.recover()

    def hang(self, case: Case) -> None:
        self.tally.find("hang", {**self.example(case), "log_tail": self.log_tail()})
        self.recover()

    def log_tail(self) -> str:
        text, _ = self.target.log_since(max(0, self.log_offset - 2000))
        return text[-1500:]

    def recover(self) -> None:
        """Start the daemon again (only one started here) and carry on with a new connection."""
        if not self.target.restartable:
            raise RuntimeError("the daemon died or hung and was not started here: stopping")
        self.scan_log()
        self.target.restart()
        self.log_offset = 0
        _, self.log_offset = self.target.log_since(0)
        self.conv = None
        self.connect()
        self.sample()

    def checkpoint(self) -> None:
        """Between batches: jobs ended, new connection, a fresh client answered, RSS and log read."""
        assert self.conv is not None
        if not self.target.alive():
            self.death(self.recent[-1] if self.recent else Case("none", "start", [b""], None))
            return
        self.rotate()
        latency = probe(self.target.endpoint, self.ctx, self.plan.probe_timeout, self.target.options)
        if latency is None:
            if probe(self.target.endpoint, self.ctx, self.plan.hang_timeout, self.target.options) is None:
                self.hang(self.recent[-1])
                return
            self.tally.find("slow:probe", {"note": f"no welcome within {self.plan.probe_timeout} s"})
        else:
            self.tally.took("probe", latency)
        self.sample()
        self.scan_log()

    def progress(self, started: float) -> None:
        """One line on stderr, so that a long run shows it is alive and how it goes."""
        bad = failures(self.tally)
        rss = self.tally.rss.samples[-1][2] / 2**20 if self.tally.rss.samples else 0
        print(
            f"fuzz: {self.sent}/{self.plan.messages} messages in {time.monotonic() - started:.0f} s, "
            f"RSS {rss:.0f} MB, must-be-zero findings {sum(bad.values())} {sorted(bad)[:6]}",
            file=sys.stderr,
            flush=True,
        )

    def sample(self) -> None:
        rss, hwm = self.target.rss()
        self.tally.rss.add(self.sent, rss, hwm)

    def scan_log(self) -> None:
        text, self.log_offset = self.target.log_since(self.log_offset)
        scan_log(text, self.tally)


def run_key(case: Case) -> str:
    """Which accepted jobs count as the same for the run-once rule: each choice of a param (every
    scheduler on every preset), each image variant per op and slot, otherwise each preset, op and
    field, whatever its value."""
    label = case.label
    if "=choice:" in label:
        return label
    if case.kind == "image":
        return label.split("/", 1)[-1]
    return label.split("=", 1)[0]


def scan_log(text: str, tally: Tally) -> None:
    """Count tracebacks, forged lines and oversized lines in a piece of the daemon's log."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if TRACEBACK in line:
            body = lines[i + 1 : i + 200]
            end = next((n for n, ln in enumerate(body) if ln and not ln.startswith((" ", "\t"))), len(body))
            frames = [ln.strip() for ln in body[:end] if ln.strip().startswith("File ")]
            exception = body[end] if end < len(body) else "?"
            tally.find(
                f"log_traceback:{exception.split(':', 1)[0][:60]}",
                {"exception": exception[:300], "at": frames[-2:], "logged": lines[i - 1][:300] if i else ""},
            )
        if line.startswith(FORGED):
            tally.find("log_forged_line", {"line": line[:200]})
        if len(line) > 65536:
            tally.find("log_line_over_64k", {"length": len(line), "start": line[:120]})


__all__ = ["Fuzz", "FuzzPlan", "scan_log"]
