"""upscale: the preset's upscaler (`factor`); the result is exactly `factor` times the input."""

from __future__ import annotations

from PIL import Image

from ..errors import ErrorCode, RequestError
from ..families.base import Generation
from ..params import Limits
from ..request import OpRequest
from .common import Patch, family_of, require_image, whole

MIN_SIDE = {4: 16, 2: 128}  # the latent upscaler needs at least 16x16 latents


def check(req: OpRequest, limits: Limits) -> None:
    require_image(req, "image")
    factor = req.params["factor"]  # the preset's spec offers only the factors it has upscalers for
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


def run(gen: Generation) -> list[Patch]:
    factor = gen.params["factor"]
    image = gen.req.images["image"].convert("RGB")
    target = (image.width * factor, image.height * factor)
    results = family_of(gen).upscale(gen, image, factor)
    return whole([r if r.size == target else r.resize(target, Image.LANCZOS) for r in results], gen.seeds)
