"""Section 4: cancel latency, and what per-step previews cost.

Cancel is sent half a step after a progress event (mid-step, where a user's click lands on average);
the `cancelled` event must follow within one step and no further progress or result may arrive.
Previews: the same job with `preview: true` and without, interleaved; the ratio of wall times.
"""

from __future__ import annotations

import time
from typing import Any

from underpaint.protocol import Client

from .common import Report, interleaved, median, ms, progress, secs, timed

SECTION = "4. Cancel and previews"
PREVIEW_TARGET = 1.05
SLACK_S = 0.02  # message transit both ways, on top of the one step the daemon may finish


def cancel_latency(
    report: Report, client: Client, preset: str, params: dict[str, Any], cancel_at: int = 4
) -> None:
    """Cancel half a step after progress `cancel_at`; the daemon may finish the step it is in, no more."""
    job = client.submit("txt2img", params, model=preset)
    stamps: list[float] = []
    t_cancel = t_done = step_time = 0.0
    seen_at_cancel = last_step = 0
    got_result = False
    for event in client.events(job, timeout=3600):
        now = time.perf_counter()
        if event["type"] == "progress":
            stamps.append(now)
            last_step = event["step"]
            if not t_cancel and event["step"] >= cancel_at:
                # step 1 includes text encoding: time steps from the intervals after it
                step_time = median([b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)])
                time.sleep(step_time / 2)
                t_cancel, seen_at_cancel = time.perf_counter(), event["step"]
                client.send("cancel", job=job)
        elif event["type"] == "cancelled":
            t_done = now
        elif event["type"] == "result":
            got_result = True
    latency = t_done - t_cancel
    steps = latency / step_time if step_time else float("inf")
    # A step's progress event may already be on its way when the cancel is sent: one more is allowed.
    more = last_step - seen_at_cancel
    ok = report.check(f"cancel delivers `cancelled` and no result ({preset})", t_done > 0 and not got_result)
    report.add(
        SECTION,
        f"{preset} txt2img {params['width']}x{params['height']}: cancel latency (sent mid-step)",
        f"{ms(latency)} = {steps:.2f} steps; {more} more step(s) reported after cancel",
        "within one step",
        ok and more <= 1 and latency <= step_time + SLACK_S,
        f"one step = {secs(step_time)}; cancel sent after step {seen_at_cancel}/{params['steps']}",
    )
    report.data.setdefault("cancel", {})[preset] = {
        "latency_s": latency,
        "step_s": step_time,
        "steps_after": more,
        "stamps": stamps,
        "t_cancel": t_cancel,
    }


def preview_cost(report: Report, client: Client, preset: str, params: dict[str, Any], reps: int) -> None:
    previews: list[int] = []

    def run(preview: bool) -> tuple[float, float]:
        seen = [0]

        def count(event: dict[str, Any]) -> None:
            seen[0] += "preview" in event

        with timed() as t:
            result = client.run("txt2img", params, model=preset, preview=preview, on_progress=count)
        if preview:
            previews.append(seen[0])
        return t[0], result["timings"]["run"]

    bar = progress(f"previews {preset}", 2 * reps + 2)
    run(False), run(True)
    bar.update(2)
    off, on = interleaved(lambda: run(False), lambda: run(True), reps, bar)
    bar.close()
    ratio = median([b[0] / a[0] for a, b in zip(off, on, strict=True)])
    report.check(f"previews arrive with every step ({preset})", bool(previews) and min(previews) > 0)
    report.add(
        SECTION,
        f"{preset} txt2img {params['width']}x{params['height']}, {params['steps']} steps: previews on / off",
        f"{ratio:.3f}x ({secs(median([r[0] for r in on]))} vs {secs(median([r[0] for r in off]))})",
        f"<= {PREVIEW_TARGET}",
        ratio <= PREVIEW_TARGET,
        f"{previews[-1] if previews else 0} previews per job; median of {reps}",
    )
    report.data.setdefault("previews", {})[preset] = {"off": off, "on": on, "previews": previews}
