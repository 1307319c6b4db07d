"""controlnet: generation under one or more ControlNet units; with `image` it is img2img, with
`image` and `mask` it is inpainting (selection-aware, like the other image ops)."""

from __future__ import annotations

from typing import Any

from PIL import Image

from ..errors import ErrorCode, RequestError
from ..models import ModelManager
from ..params import Limits
from ..preprocessors import PREPROCESSORS, Preprocessors
from .common import (
    OpRequest,
    Patch,
    StepReporter,
    check_mask,
    check_same_size,
    check_strength,
    full_size,
    prepare_pipe,
    seeds_for,
    text_args,
    whole,
    workspace,
)


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


def _kind(req: OpRequest) -> str:
    if "image" not in req.images:
        return "controlnet"
    return "controlnet_inpaint" if "mask" in req.images else "controlnet_img2img"


def _unit_args(units: list[dict[str, Any]], maps: list[Image.Image]) -> dict[str, Any]:
    """Single units take scalars, several take lists (diffusers' MultiControlNet convention)."""

    def pick(values: list[Any]) -> Any:
        return values[0] if len(values) == 1 else values

    return {
        "controlnet_conditioning_scale": pick([u["scale"] for u in units]),
        "control_guidance_start": pick([u["start"] for u in units]),
        "control_guidance_end": pick([u["end"] for u in units]),
        "_maps": pick(maps),
    }


def run(
    req: OpRequest,
    models: ModelManager,
    steps: StepReporter,
    preprocessors: Preprocessors,
    **_: object,
) -> list[Patch]:
    params, units = req.params, req.params["units"]
    seeds = seeds_for(params)
    kind = _kind(req)
    pipe = prepare_pipe(models.view(req.preset, kind, [u["model"] for u in units]), params)
    args = text_args(params, seeds)
    if kind == "controlnet":
        size = full_size(req)
        maps = [
            preprocessors.apply(u["preprocessor"], req.images[u["image"]].resize(size), seeds[0])
            for u in units
        ]
        extra = _unit_args(units, maps)
        out = pipe(
            **args, image=extra.pop("_maps"), width=size[0], height=size[1], **extra, **steps.on_step_end()
        )
        return whole(out.images, seeds)
    ws = workspace(req)
    maps = [preprocessors.apply(u["preprocessor"], ws.crop(req.images[u["image"]]), seeds[0]) for u in units]
    extra = _unit_args(units, maps)
    control = extra.pop("_maps")
    if kind == "controlnet_img2img":
        out = pipe(
            **args,
            image=ws.image,
            control_image=control,
            strength=params["strength"],
            **extra,
            **steps.on_step_end(),
        )
    else:
        out = pipe(
            **args,
            image=ws.image,
            mask_image=ws.work_mask,
            control_image=control,
            width=ws.image.width,
            height=ws.image.height,
            strength=params["strength"],
            **extra,
            **steps.on_step_end(),
        )
    return ws.patches(out.images, seeds, params["feather"])
