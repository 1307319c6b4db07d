"""controlnet: generation under one or more ControlNet units; with `image` it is img2img, with
`image` and `mask` it is inpainting (selection-aware, like the other image ops)."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from ..errors import ErrorCode, RequestError
from ..families.base import Generation
from ..params import Limits
from ..preprocessors import PREPROCESSORS
from ..request import OpRequest
from .common import Patch, check_mask, check_same_size, check_strength, family_of, full_size, whole, workspace


def check(req: OpRequest, limits: Limits) -> None:
    if "mask" in req.images and "image" not in req.images:
        raise RequestError(
            ErrorCode.MISSING_FIELD, "images.image is required with images.mask", "images.image"
        )
    check_mask(req)
    if "image" in req.images and req.params["strength"] is None:
        # img2img keeps some of the picture by default; inpainting repaints the masked area fully
        req.params["strength"] = 1.0 if "mask" in req.images else 0.75
    check_strength(req)
    for i, unit in enumerate(req.params["units"]):
        path = f"params.units.{i}"
        if unit["model"] not in req.preset.controlnets:
            raise RequestError(
                ErrorCode.UNKNOWN_CONTROLNET,
                f"{path}.model is {unit['model']!r}; model {req.preset.name!r} has "
                f"{sorted(req.preset.controlnets)}",
                f"{path}.model",
            )
        if unit["preprocessor"] not in PREPROCESSORS:
            raise RequestError(
                ErrorCode.UNKNOWN_PREPROCESSOR,
                f"{path}.preprocessor is {unit['preprocessor']!r}; known: {list(PREPROCESSORS)}",
                f"{path}.preprocessor",
            )
        if unit["image"] not in req.images:
            raise RequestError(
                ErrorCode.MISSING_FIELD,
                f"{path}.image names images.{unit['image']}, which was not sent",
                f"images.{unit['image']}",
            )
        check_same_size(req, unit["image"])


def run(gen: Generation) -> list[Patch]:
    req, units = gen.req, gen.params["units"]
    assert gen.preprocessors is not None

    def control_maps(fit: Callable[[Image.Image], Image.Image]) -> list[Image.Image]:
        """Each unit's source fitted to the working size, then preprocessed."""
        return [
            gen.preprocessors.apply(u["preprocessor"], fit(req.images[u["image"]]), gen.params["seed"])
            for u in units
        ]

    family = family_of(gen)
    if "image" not in req.images:
        size = full_size(req)
        gen.seeds  # noqa: B018 - the seed is drawn before the preprocessors use it
        images = family.controlnet(gen, units, control_maps(lambda img: img.resize(size)), size)
        return whole(images, gen.seeds)
    ws = workspace(req)
    maps = control_maps(ws.crop)
    images = family.controlnet(gen, units, maps, ws.image.size, image=ws.image, mask=ws.work_mask)
    return ws.patches(images, gen.seeds, gen.params["feather"])
