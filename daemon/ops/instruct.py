"""instruct: InstructPix2Pix edits the image following a written instruction."""

from __future__ import annotations

from ..errors import ErrorCode, RequestError
from ..params import Limits
from ..serving.models import ModelManager
from .common import OpRequest, Patch, StepReporter, check_mask, require_image, run_in_workspace


def check(req: OpRequest, limits: Limits) -> None:
    require_image(req, "image")
    check_mask(req)
    if not req.params["instruction"].strip():
        raise RequestError(
            ErrorCode.INVALID_VALUE, "params.instruction is empty: say what to change", "params.instruction"
        )


def run(req: OpRequest, models: ModelManager, steps: StepReporter, **_: object) -> list[Patch]:
    return run_in_workspace(
        req,
        models,
        steps,
        "instruct",
        lambda ws: {"image_guidance_scale": req.params["image_guidance_scale"]},
        text={"prompt": req.params["instruction"]},
    )
