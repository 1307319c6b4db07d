"""What every op shares: the request it gets, the patches it returns, seeds, and per-step reporting
(progress events, previews and cancellation)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..config import Preset
from ..errors import ErrorCode, RequestError
from ..images import Region, crop_to_work, find_region, to_mask, to_patch
from ..params import MAX_SEED
from ..schedulers import fresh_scheduler


class JobCancelled(Exception):
    """Raised from the step callback to stop the pipeline; the job ends as `cancelled`."""


@dataclass
class OpRequest:
    """A validated job: preset, params with defaults filled in, and decoded input images."""

    op: str
    preset: Preset
    params: dict[str, Any]
    images: dict[str, Image.Image] = field(default_factory=dict)


@dataclass
class Patch:
    """One result image, ready to paste at (x, y) of the request's `image`."""

    image: Image.Image
    x: int
    y: int
    seed: int


# SD-1.x latent -> RGB approximation (a common public linear fit); good enough for a preview.
_LATENT_RGB = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)


def latent_preview(latents: torch.Tensor) -> Image.Image:
    """A cheap RGB preview of the first latent in a batch (1/8 of the working size)."""
    lat = latents[0, :4].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", lat, _LATENT_RGB)
    rgb = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(rgb, "RGB")


StepSink = Callable[[int, int, Image.Image | None], None]


class StepReporter:
    """Builds diffusers step callbacks that report progress and honour cancellation."""

    def __init__(self, sink: StepSink, cancelled: Callable[[], bool], preview: bool) -> None:
        self.sink = sink
        self.cancelled = cancelled
        self.preview = preview
        self.step = 0
        self.total = 0
        self.runs = 1  # pipeline calls this job makes (the latent upscaler runs once per variation)

    def _report(self, total: int, latents: torch.Tensor | None) -> None:
        if self.cancelled():
            raise JobCancelled()
        self.step += 1
        self.total = max(total * self.runs, self.step)
        image = latent_preview(latents) if self.preview and latents is not None else None
        self.sink(self.step, self.total, image)

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise JobCancelled()

    def on_step_end(self) -> dict[str, Any]:
        """kwargs for pipelines with `callback_on_step_end` (the modern diffusers API)."""

        def callback(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            self._report(int(pipe.num_timesteps), kwargs.get("latents"))
            return kwargs

        return {
            "callback_on_step_end": callback,
            "callback_on_step_end_tensor_inputs": ["latents"],
        }

    def legacy(self, pipe: Any) -> dict[str, Any]:
        """kwargs for the upscalers, which only have the older `callback(step, t, latents)`."""

        def callback(i: int, t: Any, latents: torch.Tensor) -> None:
            self._report(len(pipe.scheduler.timesteps), latents)

        return {"callback": callback, "callback_steps": 1}


def seeds_for(params: dict[str, Any]) -> list[int]:
    """Seed of every variation; a random base seed when the client gave none (always reported)."""
    if params.get("seed") is None:
        params["seed"] = random.randint(0, MAX_SEED)
    base = int(params["seed"])
    return [(base + i) % (MAX_SEED + 1) for i in range(int(params["variations"]))]


def generators(seeds: list[int]) -> list[torch.Generator]:
    """CPU generators: the same seed gives the same noise on every device."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def prepare_pipe(pipe: Any, params: dict[str, Any]) -> Any:
    """Give the pipeline view a fresh scheduler for this job."""
    pipe.scheduler = fresh_scheduler(params.get("scheduler", ""), pipe.scheduler)
    return pipe


def text_args(params: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """Arguments every SD pipeline call takes."""
    return {
        "prompt": params.get("prompt", ""),
        "negative_prompt": params.get("negative_prompt") or None,
        "num_inference_steps": params["steps"],
        "guidance_scale": params["guidance_scale"],
        "num_images_per_prompt": len(seeds),
        "generator": generators(seeds),
        "output_type": "pil",
    }


@dataclass
class Workspace:
    """The selection-aware crop of one request: region, working-size image and mask."""

    region: Region
    image: Image.Image  # RGB at working size
    mask: Image.Image | None  # full-size 8-bit mask (None = whole image)
    work_mask: Image.Image | None  # mask at working size

    def patches(self, results: list[Image.Image], seeds: list[int], feather: int) -> list[Patch]:
        return [
            Patch(to_patch(img, self.region, self.mask, feather), self.region.x, self.region.y, s)
            for img, s in zip(results, seeds, strict=True)
        ]

    def crop(self, img: Image.Image) -> Image.Image:
        """Crop another full-size image (a control image) to this workspace."""
        return crop_to_work(img, self.region)


def run_in_workspace(
    req: OpRequest,
    models: Any,
    steps: StepReporter,
    kind: str,
    call: Callable[[Workspace], dict[str, Any]],
    text: dict[str, Any] | None = None,
    controlnets: list[str] | None = None,
) -> list[Patch]:
    """The shape of every image op: crop to the selection, run pipeline view `kind` with the
    arguments `call(workspace)` gives, and return pasteable patches."""
    seeds = seeds_for(req.params)
    ws = workspace(req)
    pipe = prepare_pipe(models.view(req.preset, kind, controlnets or []), req.params)
    args = text_args(req.params, seeds) | (text or {})
    out = pipe(**args, image=ws.image, **call(ws), **steps.on_step_end())
    return ws.patches(out.images, seeds, req.params["feather"])


def workspace(req: OpRequest) -> Workspace:
    image = req.images["image"]
    mask = to_mask(req.images["mask"]) if "mask" in req.images else None
    resolution = req.params.get("resolution") or req.preset.resolution
    region = find_region(image.size, mask, req.params["padding"], resolution)
    work = crop_to_work(image.convert("RGB"), region)
    work_mask = crop_to_work(mask, region, Image.BILINEAR) if mask is not None else None
    return Workspace(region, work, mask, work_mask)


def check_same_size(req: OpRequest, name: str) -> None:
    """A mask or control image must have the size of `image` (they are cropped together)."""
    if name in req.images and "image" in req.images:
        got, want = req.images[name].size, req.images["image"].size
        if got != want:
            raise RequestError(
                ErrorCode.SIZE_MISMATCH,
                f"images.{name} is {got[0]}x{got[1]} but images.image is {want[0]}x{want[1]}",
                f"images.{name}",
            )


def check_mask(req: OpRequest) -> None:
    """A mask must match `image` and select something (else there is nothing to repaint)."""
    if "mask" not in req.images:
        return
    check_same_size(req, "mask")
    if to_mask(req.images["mask"]).getbbox() is None:
        raise RequestError(
            ErrorCode.INVALID_VALUE, "images.mask is empty: nothing is selected", "images.mask"
        )


def check_strength(req: OpRequest) -> None:
    """diffusers runs int(steps * strength) steps: at least one must remain."""
    strength = req.params.get("strength")
    if strength is not None and int(req.params["steps"] * strength) < 1:
        raise RequestError(
            ErrorCode.INVALID_VALUE,
            f"params.steps ({req.params['steps']}) x params.strength ({strength:g}) leaves no step to run",
            "params.strength",
        )


def require_image(req: OpRequest, name: str) -> None:
    if name not in req.images:
        raise RequestError(
            ErrorCode.MISSING_FIELD, f"images.{name} is required for {req.op}", f"images.{name}"
        )


def full_size(req: OpRequest) -> tuple[int, int]:
    """Output size for ops without an input image: width/height, default the preset's native."""
    w = req.params.get("width") or req.preset.resolution
    h = req.params.get("height") or req.preset.resolution
    return (w // 8 * 8, h // 8 * 8)


def whole(images: list[Image.Image], seeds: list[int]) -> list[Patch]:
    """Results that cover the whole output (txt2img, upscale): opaque, at (0, 0)."""
    return [Patch(img.convert("RGBA"), 0, 0, s) for img, s in zip(images, seeds, strict=True)]
