"""sdedit: img2img with `strength` ("Refine"), optionally restricted to a mask."""

from __future__ import annotations

from ..params import Limits
from ..serving.models import ModelManager
from .common import (
    OpRequest,
    Patch,
    StepReporter,
    check_mask,
    check_strength,
    require_image,
    run_in_workspace,
)


def check(req: OpRequest, limits: Limits) -> None:
    require_image(req, "image")
    check_mask(req)
    check_strength(req)


def run(req: OpRequest, models: ModelManager, steps: StepReporter, **_: object) -> list[Patch]:
    return run_in_workspace(req, models, steps, "img2img", lambda ws: {"strength": req.params["strength"]})
