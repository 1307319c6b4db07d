"""Section 1: one job through the daemon vs the same diffusers call made in-process.

Same model folder, seed, size, steps and thread count; the runs alternate (ABBA) so load from other
processes hits both sides alike. The daemon side is the whole trip a plugin sees: client submit ->
validation -> queue -> pipeline -> result encoded, sent, received and decoded in the client. The
in-process side is the bare pipeline call with no callback. Pixels must match bit for bit.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

from underpaint.daemon.commands.pictures import image_object
from underpaint.protocol import Client

from .common import PROMPT, SEED, Report, interleaved, median, photo, progress, result_rgb, secs, timed

GUIDANCE = 7.5


@dataclass(frozen=True)
class Case:
    """One comparison: `op` is txt2img (nothing in) or sdedit (an image in, the same size out)."""

    op: str
    size: int
    steps: int
    strength: float = 0.5
    target: float | None = None  # max daemon/in-process ratio, where the issue sets one

    def label(self, preset: str) -> str:
        what = f"{self.steps} steps" + (f", strength {self.strength}" if self.op == "sdedit" else "")
        return f"{preset} {self.op} {self.size}x{self.size}, {what}"


def load_direct(
    base_dir: Path, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> StableDiffusionPipeline:
    """The in-process baseline: the preset's own base folder, loaded as any script would."""
    pipe = StableDiffusionPipeline.from_pretrained(
        str(base_dir), torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _setup(case: Case, base: StableDiffusionPipeline) -> tuple[Any, dict, dict, dict]:
    """(pipeline, its call args, daemon params, daemon images) for one case."""
    params: dict[str, Any] = {"prompt": PROMPT, "steps": case.steps, "seed": SEED, "guidance_scale": GUIDANCE}
    if case.op == "txt2img":
        return (
            base,
            {"width": case.size, "height": case.size},
            params | {"width": case.size, "height": case.size},
            {},
        )
    image = photo((case.size, case.size))
    img2img = StableDiffusionImg2ImgPipeline(**base.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    # resolution = the image size and no mask: the daemon works on the image as is (no resize)
    params |= {"strength": case.strength, "resolution": case.size, "padding": 0, "feather": 0}
    return img2img, {"image": image, "strength": case.strength}, params, {"image": image_object(image)}


@dataclass
class Run:
    wall: float  # seconds, client submit -> decoded result (or the bare call)
    cpu: float  # CPU seconds of every process involved (daemon + client, or the one process)
    rgb: np.ndarray
    timings: dict[str, float] | None = None


def measure(
    report: Report,
    client: Client,
    preset: str,
    base: StableDiffusionPipeline,
    case: Case,
    reps: int,
    daemon_pid: int,
    section: str = "1. Daemon overhead",
    strict_pixels: bool = True,
) -> float:
    """Warm both sides, run `reps` interleaved pairs, add rows; returns the median paired CPU ratio.

    Wall time is what a user feels, but on a shared machine it mostly measures the neighbours: a
    process waiting for a core gains wall time, not CPU time. So both are reported, and the target is
    judged on CPU time (daemon process + client process vs the one in-process run).
    """
    pipe, call_args, params, images = _setup(case, base)

    def direct() -> Run:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # as the daemon does
        cpu0 = time.process_time()
        with timed() as t:
            out = pipe(
                prompt=PROMPT,
                negative_prompt=None,
                num_inference_steps=case.steps,
                guidance_scale=GUIDANCE,
                num_images_per_prompt=1,
                generator=[torch.Generator("cpu").manual_seed(SEED)],
                output_type="pil",
                **call_args,
            )
            rgb = np.asarray(out.images[0].convert("RGB"))
        return Run(t[0], time.process_time() - cpu0, rgb)

    def daemon() -> Run:
        cpu0, dcpu0 = time.process_time(), cpu_seconds(daemon_pid)
        with timed() as t:
            result = client.run(case.op, params, images, model=preset)
            rgb = result_rgb(result)
        cpu = time.process_time() - cpu0 + cpu_seconds(daemon_pid) - dcpu0
        return Run(t[0], cpu, rgb, result["timings"])

    label = case.label(preset)
    bar = progress(f"overhead {label}", 2 * reps + 2)
    warm_direct, warm_daemon = direct(), daemon()
    bar.update(2)
    runs_direct, runs_daemon = interleaved(direct, daemon, reps, bar)
    bar.close()
    identical = all(np.array_equal(r.rgb, warm_direct.rgb) for r in runs_direct + runs_daemon + [warm_daemon])
    varied = float(warm_direct.rgb.std()) > 0  # a constant picture would make "identical" meaningless
    if strict_pixels:
        report.check(f"pixels identical: {label}", identical and varied)
    cpu_ratio = median([b.cpu / a.cpu for a, b in zip(runs_direct, runs_daemon, strict=True)])
    wall_ratio = median([b.wall / a.wall for a, b in zip(runs_direct, runs_daemon, strict=True)])
    walls = [r.wall for r in runs_direct]
    spread = (max(walls) - min(walls)) / median(walls)
    fixed = median([r.wall - r.timings["run"] for r in runs_daemon if r.timings])
    target = f"<= {case.target:.2f}" if case.target else ""
    report.add(
        section,
        f"{label}: daemon / in-process, CPU time",
        f"{cpu_ratio:.3f}x ({secs(median([r.cpu for r in runs_daemon]))} vs "
        f"{secs(median([r.cpu for r in runs_direct]))}; median of {reps} pairs)",
        target,
        (cpu_ratio <= case.target) if case.target else None,
        f"daemon side = daemon process + client process; outside the pipeline the daemon trip "
        f"costs {fixed * 1000:.0f} ms wall (queue, protocol, transfer, encode/decode)",
    )
    report.add(
        section,
        f"{label}: daemon / in-process, wall time",
        f"{wall_ratio:.3f}x ({secs(median([r.wall for r in runs_daemon]))} vs {secs(median(walls))}); "
        f"best runs {min(r.wall for r in runs_daemon) / min(walls):.3f}x",
        note=f"in-process runs alone vary by {spread:.0%} here (shared machine)",
    )
    report.add(
        section,
        f"{label}: pixels identical",
        "yes" if identical else "NO",
        "identical" if strict_pixels else "",
        identical if strict_pixels else None,
        "" if varied else "output is constant: check is void",
    )
    report.data.setdefault("overhead", {})[label] = {
        "direct": [(r.wall, r.cpu) for r in runs_direct],
        "daemon": [(r.wall, r.cpu, r.timings) for r in runs_daemon],
        "identical": identical,
    }
    return cpu_ratio


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
