"""sdedit: img2img with `strength` ("Refine"), optionally restricted to a mask."""

from __future__ import annotations

from ..models import ModelManager
from ..params import Limits
from .common import (
    OpRequest,
    Patch,
    StepReporter,
    check_mask,
    check_strength,
    prepare_pipe,
    require_image,
    seeds_for,
    text_args,
    workspace,
)


def check(req: OpRequest, limits: Limits) -> None:
    require_image(req, "image")
    check_mask(req)
    check_strength(req)


def run(req: OpRequest, models: ModelManager, steps: StepReporter, **_: object) -> list[Patch]:
    seeds = seeds_for(req.params)
    ws = workspace(req)
    pipe = prepare_pipe(models.view(req.preset, "img2img"), req.params)
    out = pipe(
        **text_args(req.params, seeds),
        image=ws.image,
        strength=req.params["strength"],
        **steps.on_step_end(),
    )
    return ws.patches(out.images, seeds, req.params["feather"])
