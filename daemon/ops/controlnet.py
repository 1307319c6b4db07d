"""controlnet: generation under one or more ControlNet units; with `image` it is img2img, with
`image` and `mask` it is inpainting (selection-aware, like the other image ops)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from ..errors import ErrorCode, RequestError
from ..params import Limits
from ..preprocessors import PREPROCESSORS, Preprocessors
from ..serving.models import ModelManager
from .common import (
    OpRequest,
    Patch,
    StepReporter,
    Workspace,
    check_mask,
    check_same_size,
    check_strength,
    full_size,
    prepare_pipe,
    run_in_workspace,
    seeds_for,
    text_args,
    whole,
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


def _unit_args(units: list[dict[str, Any]]) -> dict[str, Any]:
    """Single units take scalars, several take lists (diffusers' MultiControlNet convention)."""
    return {
        "controlnet_conditioning_scale": _pick([u["scale"] for u in units]),
        "control_guidance_start": _pick([u["start"] for u in units]),
        "control_guidance_end": _pick([u["end"] for u in units]),
    }


def _pick(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else values


def run(
    req: OpRequest,
    models: ModelManager,
    steps: StepReporter,
    preprocessors: Preprocessors,
    **_: object,
) -> list[Patch]:
    params, units = req.params, req.params["units"]
    nets = [u["model"] for u in units]

    def control_maps(fit: Callable[[Image.Image], Image.Image]) -> Any:
        """Each unit's source fitted to the working size, then preprocessed."""
        return _pick(
            [
                preprocessors.apply(u["preprocessor"], fit(req.images[u["image"]]), params["seed"])
                for u in units
            ]
        )

    if "image" not in req.images:
        seeds = seeds_for(params)
        size = full_size(req)
        pipe = prepare_pipe(models.view(req.preset, "controlnet", nets), params)
        out = pipe(
            **text_args(params, seeds),
            image=control_maps(lambda img: img.resize(size)),
            width=size[0],
            height=size[1],
            **_unit_args(units),
            **steps.on_step_end(),
        )
        return whole(out.images, seeds)

    def call(ws: Workspace) -> dict[str, Any]:
        args = {"control_image": control_maps(ws.crop), "strength": params["strength"], **_unit_args(units)}
        if ws.work_mask is not None:
            args |= {"mask_image": ws.work_mask, "width": ws.image.width, "height": ws.image.height}
        return args

    kind = "controlnet_inpaint" if "mask" in req.images else "controlnet_img2img"
    return run_in_workspace(req, models, steps, kind, call, controlnets=nets)
