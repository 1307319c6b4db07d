"""upscale: the x4 diffusion upscaler, or the latent x2 upscaler (`factor`)."""

from __future__ import annotations

from PIL import Image

from ..errors import ErrorCode, RequestError
from ..params import Limits
from ..serving.models import ModelManager
from .common import OpRequest, Patch, StepReporter, generators, require_image, seeds_for, whole

MIN_SIDE = {4: 16, 2: 128}  # the latent upscaler needs at least 16x16 latents


def check(req: OpRequest, limits: Limits) -> None:
    require_image(req, "image")
    factor = req.params["factor"]
    role = f"upscale_x{factor}"
    if role not in req.preset.sources:
        raise RequestError(
            ErrorCode.UNSUPPORTED_OP, f"model {req.preset.name!r} has no x{factor} upscaler", "params.factor"
        )
    w, h = req.images["image"].size
    if min(w, h) < MIN_SIDE[factor]:
        raise RequestError(
            ErrorCode.INVALID_VALUE,
            f"images.image is {w}x{h}; the x{factor} upscaler needs at least {MIN_SIDE[factor]} px "
            "on each side",
            "images.image",
        )
    if w * h * factor * factor > limits.max_pixels:
        raise RequestError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"upscaling {w}x{h} by {factor} exceeds the limit of {limits.max_pixels} px",
            "images.image",
        )


def run(req: OpRequest, models: ModelManager, steps: StepReporter, **_: object) -> list[Patch]:
    params = req.params
    seeds = seeds_for(params)
    factor = params["factor"]
    image = req.images["image"].convert("RGB")
    pipe = models.view(req.preset, f"upscale_x{factor}")
    if params["scheduler"]:
        from ..schedulers import fresh_scheduler

        pipe.scheduler = fresh_scheduler(params["scheduler"], pipe.scheduler)
    common = {
        "prompt": params["prompt"],
        "negative_prompt": params["negative_prompt"] or None,
        "num_inference_steps": params["steps"],
        "guidance_scale": params["guidance_scale"],
        "output_type": "pil",
    }
    target = (image.width * factor, image.height * factor)
    work = _workable(image, _size_multiple(pipe, factor))
    results: list[Image.Image] = []
    if factor == 4:
        out = pipe(
            **common,
            image=work,
            noise_level=params["noise_level"],
            num_images_per_prompt=len(seeds),
            generator=generators(seeds),
            **steps.legacy(pipe),
        )
        results = out.images
    else:
        # The latent upscaler has no num_images_per_prompt: one call per variation.
        steps.runs = len(seeds)
        for gen in generators(seeds):
            results += pipe(**common, image=work, generator=gen, **steps.legacy(pipe)).images
    return whole([r if r.size == target else r.resize(target, Image.LANCZOS) for r in results], seeds)


def _size_multiple(pipe: object, factor: int) -> int:
    """Input sides must survive the UNet's downsampling (and, for x2, the VAE's 8x)."""
    unet_factor = 2 ** (len(pipe.unet.config.block_out_channels) - 1)  # type: ignore[attr-defined]
    return unet_factor * (pipe.vae_scale_factor if factor == 2 else 1)  # type: ignore[attr-defined]


def _workable(image: Image.Image, multiple: int) -> Image.Image:
    """Resize to the nearest sides the model accepts; the result is scaled to the exact target."""
    size = tuple(max(multiple, round(side / multiple) * multiple) for side in image.size)
    return image if size == image.size else image.resize(size, Image.LANCZOS)
