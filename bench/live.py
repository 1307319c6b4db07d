"""Section 11: live painting with "latest wins" lanes (issue 10, PROTOCOL.md 9.6). A scripted painter
changes its canvas N times at a fixed rate faster than one job takes and sends every change as an
sdedit job in one lane; each newer job supersedes the older one (dropped while queued, stopped at its
next step while running). What a painter feels is the time from the last change to its result: the goal
is at most one job time plus one step (the running job's last step, then the final job), as a ratio.

Hard checks: the final picture equals a single job on the final canvas with the same seed, bit for bit;
every job ends exactly once, the last with its result; a superseded job names the job sent right after
it as `by`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from underpaint.daemon.commands.pictures import image_object
from underpaint.protocol import Client
from underpaint.protocol.messages import TERMINAL_EVENTS

from .common import SEED, Report, median, ms, photo, result_rgb

SECTION = "11. Live"
LANE = "live"
PROMPT = "a fox, oil painting"


def canvas(i: int, size: int) -> Image.Image:
    """The painter's canvas after change `i`: the photo with `i + 1` strokes, each in a new place."""
    img = photo((size, size))
    draw = ImageDraw.Draw(img)
    for k in range(i + 1):
        x = (k * 37) % size
        draw.line([(x, 0), (size - x, size - 1)], fill=(200, 40 + 20 * (k % 8), 30), width=max(2, size // 16))
    return img


@dataclass
class Painting:
    """What the painter saw of its jobs: when each was sent, how each ended, which ones ran."""

    jobs: list[str] = field(default_factory=list)
    sent_at: dict[str, float] = field(default_factory=dict)
    ends: dict[str, dict[str, Any]] = field(default_factory=dict)
    ended_at: dict[str, float] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)

    def note(self, event: dict[str, Any]) -> None:
        job = event.get("job")
        if event.get("type") == "progress":
            self.started.add(job)
        elif event.get("type") in TERMINAL_EVENTS and job not in self.ends:
            self.ends[job], self.ended_at[job] = event, time.perf_counter()


def _collect(client: Client, painting: Painting, until: float) -> None:
    """Read events until the clock reaches `until`."""
    while (left := until - time.perf_counter()) > 0:
        event = client.poll(left)
        if event is not None:
            painting.note(event)


def single(client: Client, params: dict[str, Any], img: Image.Image) -> tuple[float, float, dict[str, Any]]:
    """One job alone: (seconds submit -> result, seconds per step, the result)."""
    totals: list[int] = []
    images = {"image": image_object(img)}  # encoded before the clock starts, as in `paint`
    t0 = time.perf_counter()
    result = client.run("sdedit", params, images, on_progress=lambda e: totals.append(e["total"]))
    seconds = time.perf_counter() - t0
    return seconds, result["timings"]["run"] / max(1, totals[-1] if totals else 1), result


def paint(client: Client, params: dict[str, Any], size: int, changes: int, interval: float) -> Painting:
    """Send `changes` canvas changes `interval` s apart in one lane; wait for the last one's end."""
    painting = Painting()
    next_at = time.perf_counter()
    for i in range(changes):
        _collect(client, painting, next_at)
        image = {"image": image_object(canvas(i, size))}
        sent = time.perf_counter()
        job = client.submit("sdedit", params, image, lane=LANE)
        painting.jobs.append(job)
        painting.sent_at[job] = sent
        next_at = sent + interval
    last = painting.jobs[-1]
    while last not in painting.ends:
        event = client.poll(120)
        if event is None:
            raise TimeoutError(f"no end for the last live job {last} within 120 s")
        painting.note(event)
    _collect(client, painting, time.perf_counter() + 0.2)  # stragglers of the older jobs
    return painting


def measure(report: Report, client: Client, quick: bool) -> None:
    size, steps, changes, reps = (64, 8, 6, 1) if quick else (256, 20, 20, 5)
    params = {"prompt": PROMPT, "strength": 0.75, "steps": steps, "seed": SEED, "resolution": size}
    single(client, params, canvas(0, size))  # warm
    job_s = single(client, params, canvas(0, size))[0]
    timings, paintings = [], []
    for _ in range(reps):  # interleaved: a change of the machine's load touches both alike
        paintings.append(paint(client, params, size, changes, job_s / 3))
        timings.append(single(client, params, canvas(0, size))[:2])
    interval = job_s / 3
    job_s, step_s = median([t[0] for t in timings]), median([t[1] for t in timings])
    alone = single(client, params, canvas(changes - 1, size))[2]
    for painting in paintings:
        _check(report, alone, painting)
    _report(report, paintings, job_s, step_s, interval, changes)


def _check(report: Report, alone: dict[str, Any], painting: Painting) -> None:
    final = painting.ends[painting.jobs[-1]]
    report.check(
        "live: the final picture equals a single job on the final canvas with its seed",
        final["type"] == "result" and np.array_equal(result_rgb(final), result_rgb(alone)),
    )
    report.check("live: every job ended exactly once", set(painting.ends) == set(painting.jobs))
    following = dict(zip(painting.jobs, painting.jobs[1:], strict=False))
    report.check(
        "live: a superseded job names the job sent after it",
        all(
            e.get("by") == following.get(j)
            for j, e in painting.ends.items()
            if e.get("reason") == "superseded"
        ),
    )


def _latency(painting: Painting) -> float:
    last = painting.jobs[-1]
    return painting.ended_at[last] - painting.sent_at[last]


def _report(
    report: Report, paintings: list[Painting], job_s: float, step_s: float, interval: float, changes: int
) -> None:
    latencies = [_latency(p) for p in paintings]
    latency, goal = median(latencies), job_s + step_s
    ends = [e for p in paintings for e in p.ends.values()]
    superseded = sum(e.get("reason") == "superseded" for e in ends)
    stopped = sum(
        e.get("reason") == "superseded" and j in p.started for p in paintings for j, e in p.ends.items()
    )
    finished = sum(e["type"] == "result" for e in ends)
    started = sum(len(p.started) for p in paintings)
    sent = changes * len(paintings)
    report.add(
        SECTION,
        "last change → its result (one job alone; one step)",
        f"{ms(latency)} ({ms(job_s)}; {ms(step_s)})",
        target="≤ 1 job + 1 step",
        met=latency <= goal,
        note=f"ratio {latency / goal:.2f} of job + step, median of {len(paintings)} paintings of {changes} "
        f"changes every {ms(interval)} (a first job / 3); sdedit, one lane, one worker; job times "
        "interleaved with the paintings",
    )
    report.add(
        SECTION,
        "jobs started vs superseded",
        f"{started} started, {superseded} superseded of {sent}",
        note=f"{superseded - stopped} dropped while queued, {stopped} stopped while running, "
        f"{finished} finished",
    )
    report.data["live"] = {
        "changes": changes,
        "paintings": len(paintings),
        "interval_s": interval,
        "job_s": job_s,
        "step_s": step_s,
        "latencies_s": latencies,
        "latency_s": latency,
        "ratio": latency / goal,
        "started": started,
        "superseded": superseded,
        "stopped_running": stopped,
        "finished": finished,
    }
