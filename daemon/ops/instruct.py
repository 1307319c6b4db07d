"""instruct: InstructPix2Pix edits the image following a written instruction."""

from __future__ import annotations

from ..errors import ErrorCode, RequestError
from ..models import ModelManager
from ..params import Limits
from .common import (
    OpRequest,
    Patch,
    StepReporter,
    check_mask,
    prepare_pipe,
    require_image,
    seeds_for,
    text_args,
    workspace,
)


def check(req: OpRequest, limits: Limits) -> None:
    require_image(req, "image")
    check_mask(req)
    if not req.params["instruction"].strip():
        raise RequestError(
            ErrorCode.INVALID_VALUE, "params.instruction is empty: say what to change", "params.instruction"
        )


def run(req: OpRequest, models: ModelManager, steps: StepReporter, **_: object) -> list[Patch]:
    seeds = seeds_for(req.params)
    ws = workspace(req)
    pipe = prepare_pipe(models.view(req.preset, "instruct"), req.params)
    args = text_args(req.params, seeds) | {"prompt": req.params["instruction"]}
    out = pipe(
        **args,
        image=ws.image,
        image_guidance_scale=req.params["image_guidance_scale"],
        **steps.on_step_end(),
    )
    return ws.patches(out.images, seeds, req.params["feather"])
