"""Section 9: what a reword costs (issue 11). A `reword` (Prompt-to-Prompt: the source prompt and the
edited one denoised side by side, the edited branch attending with the source's maps) against the plain
txt2img job it edits, same preset, size, steps and seed, interleaved: the ratio of job times (submit ->
result in the client) and of the daemon's peak resident memory above what it held before the job.

Peak memory is the daemon's VmHWM, reset before each job through /proc/PID/clear_refs (Linux), minus
its VmRSS at that moment. The daemon of this section runs with glibc's mmap threshold fixed at 64 KiB
(`MALLOC_MMAP_THRESHOLD_`), so every tensor is its own mapping and is given back when freed: RSS then
follows what the job holds, and one job's freed memory does not hide the next one's. On a GPU this
measures host memory only (device memory is the GPU's own business).

Hard checks: the reword with weight 1 gives the source's pixels bit for bit, and injecting for 0 % of
the steps gives the plain re-run of the edited prompt bit for bit.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from underpaint.protocol import Client

from .common import PROMPT, SEED, Report, interleaved, median, ms, progress, result_rgb, rss_bytes

SECTION = "9. Reword"
EDITED = PROMPT.replace("fox", "cat")
#: What the section's daemon needs in its environment (see the module doc).
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def peak_bytes(pid: int) -> int:
    """VmHWM: the most resident memory the process held since its peak was last reset."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def reset_peak(pid: int) -> bool:
    """Start VmHWM again from the current RSS; False where the kernel does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Jobs:
    """Jobs on one preset, each measured for time and peak memory."""

    def __init__(self, client: Client, pid: int, preset: str, params: dict[str, Any]) -> None:
        self.client, self.pid, self.preset, self.params = client, pid, preset, params

    def run(self, op: str, extra: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
        """(seconds from submit to result, peak bytes above the job's start, the result)."""
        resettable = reset_peak(self.pid)
        before = rss_bytes(self.pid)
        t0 = time.perf_counter()
        result = self.client.run(op, {**self.params, **extra}, model=self.preset)
        seconds = time.perf_counter() - t0
        peak = peak_bytes(self.pid) - before if resettable else 0
        return seconds, max(0, peak), result

    def measured(self, op: str, extra: dict[str, Any]) -> Any:
        return lambda: self.run(op, extra)[:2]


def measure(
    report: Report, client: Client, pid: int, presets: list[str], reps: int, size: int, steps: int
) -> None:
    bar = progress("reword", len(presets) * (2 * reps + 4) + 2 * reps)
    params = {"prompt": PROMPT, "seed": SEED, "steps": steps, "width": size, "height": size}
    report.data["reword"] = {}
    for i, preset in enumerate(presets):
        jobs = Jobs(client, pid, preset, params)
        _check(report, jobs)
        bar.update(4)
        cases = [("replace", {"new_prompt": EDITED})]
        if i == 0:
            cases.append(("replace + local blend", {"new_prompt": EDITED, "blend": ["fox", "cat"]}))
        report.data["reword"][preset] = {
            name: _case(report, jobs, name, extra, reps, bar) for name, extra in cases
        }
    bar.close()


def _case(report: Report, jobs: Jobs, name: str, extra: dict[str, Any], reps: int, bar: Any) -> dict:
    plain_runs, reword_runs = interleaved(
        jobs.measured("txt2img", {}), jobs.measured("reword", extra), reps, bar
    )
    times = [r[0] / p[0] for p, r in zip(plain_runs, reword_runs, strict=True)]
    peaks = [(p[1], r[1]) for p, r in zip(plain_runs, reword_runs, strict=True)]
    plain_peak, reword_peak = median([p for p, _ in peaks]), median([r for _, r in peaks])
    memory = f", {reword_peak / plain_peak:.2f}x peak memory" if plain_peak > 0 else ""
    size, steps = jobs.params["width"], jobs.params["steps"]
    report.add(
        SECTION,
        f"{jobs.preset}: reword ({name}; maps injected 80 % / 40 % of the steps) vs its plain txt2img, "
        f"{size}x{size}, {steps} steps",
        f"{median(times):.2f}x job time{memory}",
        note=f"{ms(median([r[0] for r in reword_runs]))} vs {ms(median([p[0] for p in plain_runs]))}; peak "
        f"above the job's start {reword_peak / 2**20:.1f} vs {plain_peak / 2**20:.1f} MiB; {reps} "
        "interleaved pairs",
    )
    return {"plain": plain_runs, "reword": reword_runs}


def _check(report: Report, jobs: Jobs) -> None:
    """The hard checks (these first jobs also warm the preset up)."""
    source = result_rgb(jobs.run("txt2img", {})[2])
    plain = result_rgb(jobs.run("txt2img", {"prompt": EDITED})[2])
    same = result_rgb(jobs.run("reword", {"weights": {"fox": 1.0}})[2])
    zero = result_rgb(jobs.run("reword", {"new_prompt": EDITED, "inject_cross": 0.0, "inject_self": 0.0})[2])
    report.check(
        f"reword: weight 1 gives the source's pixels ({jobs.preset})",
        np.array_equal(same, source) and source.std() > 0,
    )
    report.check(
        f"reword: 0 % injection gives the plain re-run's pixels ({jobs.preset})", np.array_equal(zero, plain)
    )
