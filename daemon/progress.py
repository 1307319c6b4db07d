"""Per-step progress, previews and cancellation for every pipeline of every family.

diffusers pipelines report steps in three different ways (``callback_on_step_end``, the older
``callback``, or not at all: DDPM, unCLIP). What every one of them does is call its scheduler's
``step`` once per denoising step, so Underpaint watches the scheduler instead: each job gets fresh
scheduler objects (schedulers keep state between steps) whose ``step`` reports progress, builds the
optional preview from the new sample, and raises ``JobCancelled`` when the client cancelled.

A job may run several denoising loops (a prior then a decoder, a cascade of stages, one latent
upscale per variation). Each loop is a *stage*; a family announces the expected length of each stage
with ``plan``, and the true length replaces the estimate when the stage starts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image


class JobCancelled(Exception):
    """Raised inside a pipeline's step to stop it; the job ends as `cancelled`."""


#: Latent -> RGB linear fits (public approximations), good enough for a preview.
_LATENT_RGB = {
    "sd": torch.tensor(
        [
            [0.3512, 0.2297, 0.3227],
            [0.3250, 0.4974, 0.2350],
            [-0.2829, 0.1762, 0.2721],
            [-0.2120, -0.2616, -0.7177],
        ]
    ),
    "sdxl": torch.tensor(
        [
            [0.3651, 0.4232, 0.4341],
            [-0.2533, -0.0042, 0.1068],
            [0.1076, 0.1111, -0.0362],
            [-0.3165, -0.2492, -0.2188],
        ]
    ),
}
PREVIEW_MAX_SIDE = 128  # pixel-space samples are shrunk to this


def preview_image(sample: torch.Tensor, space: str) -> Image.Image | None:
    """A cheap RGB picture of the first sample of a batch; None for non-image samples (priors).

    `space`: "sd" / "sdxl" (latents with a known linear fit), "pixels" (RGB in -1 … 1),
    anything else: the first three channels, each stretched to its own range.
    """
    if sample.ndim != 4:
        return None
    x = sample[0].detach().float().cpu()
    if space in _LATENT_RGB and x.shape[0] >= 4:
        rgb = torch.einsum("chw,cr->hwr", x[:4], _LATENT_RGB[space])
        rgb = (rgb + 1.0) * 127.5
    elif space == "pixels" and x.shape[0] >= 3:
        rgb = (x[:3].permute(1, 2, 0) + 1.0) * 127.5
    else:
        x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
        low = x.amin(dim=(1, 2), keepdim=True)
        high = x.amax(dim=(1, 2), keepdim=True)
        rgb = ((x - low) / (high - low).clamp_min(1e-6) * 255.0).permute(1, 2, 0)
    image = Image.fromarray(rgb.clamp(0, 255).to(torch.uint8).numpy(), "RGB")
    if max(image.size) > PREVIEW_MAX_SIDE:
        image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    return image


StepSink = Callable[[int, int, Image.Image | None], None]


class StepReporter:
    """Counts the denoising steps of one job across all its stages and reports each one."""

    def __init__(self, sink: StepSink, cancelled: Callable[[], bool], preview: bool) -> None:
        self.sink = sink
        self.cancelled = cancelled
        self.preview = preview
        self.step = 0
        self.total = 0
        self._planned: list[int] = []  # expected lengths of the stages not started yet
        self._stage_start = 0  # steps done before the current stage
        self._stage_length = 0
        self.after = 0  # steps expected after this generation (`compare` runs several in one job)

    def plan(self, *stages: int) -> None:
        """Expected number of steps of each stage this generation will run, in order."""
        self._planned = [max(0, int(n)) for n in stages]
        self._stage_start, self._stage_length = self.step, 0
        self.total = max(self.step, self.step + sum(self._planned) + self.after)

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise JobCancelled()

    def watch(self, scheduler: Any, pipe: Any = None, space: str = "sd") -> Any:
        """Make `scheduler` (a job's own fresh copy) report every step; returns it.

        `pipe` is the pipeline that drives it: where the pipeline says how many steps its loop runs
        (after `strength` or a denoising start/end cut the schedule), that count is used.
        """
        original_set, original_step = scheduler.set_timesteps, scheduler.step
        starting = [True]

        # `wraps` keeps the signatures visible: pipelines look at `step`'s parameters to decide
        # whether to pass their generator (ancestral samplers would otherwise draw unseeded noise).
        @functools.wraps(original_set)
        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            starting[0] = True
            return original_set(*args, **kwargs)

        @functools.wraps(original_step)
        def step(*args: Any, **kwargs: Any) -> Any:
            self.check_cancelled()
            out = original_step(*args, **kwargs)
            if starting[0]:
                starting[0] = False
                self._begin_stage(_stage_length(scheduler, pipe))
            sample = out[0] if isinstance(out, tuple) else getattr(out, "prev_sample", None)
            self._advance(sample, space)
            return out

        scheduler.set_timesteps = set_timesteps
        scheduler.step = step
        return scheduler

    def _begin_stage(self, length: int) -> None:
        self._stage_start = self.step
        self._stage_length = length
        if self._planned:
            self._planned.pop(0)

    def _advance(self, sample: Any, space: str) -> None:
        self.step += 1
        in_stage = max(self._stage_length, self.step - self._stage_start)
        self.total = max(self.step, self._stage_start + in_stage + sum(self._planned) + self.after)
        image = None
        if self.preview and isinstance(sample, torch.Tensor):
            image = preview_image(sample, space)
        self.sink(self.step, self.total, image)


def _stage_length(scheduler: Any, pipe: Any) -> int:
    """Steps of the loop that just started: the pipeline's own count when it keeps one."""
    counted = getattr(pipe, "_num_timesteps", None)
    if isinstance(counted, int) and counted > 0:
        return counted
    begin = getattr(scheduler, "_begin_index", None) or 0
    return max(1, len(scheduler.timesteps) - begin)
