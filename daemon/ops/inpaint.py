"""inpaint: repaint the masked area, with the preset's inpainting UNet when it has one."""

from __future__ import annotations

from typing import Any

from ..params import Limits
from ..serving.models import ModelManager
from .common import (
    OpRequest,
    Patch,
    StepReporter,
    Workspace,
    check_mask,
    check_strength,
    require_image,
    run_in_workspace,
)


def check(req: OpRequest, limits: Limits) -> None:
    require_image(req, "image")
    require_image(req, "mask")
    check_mask(req)
    check_strength(req)


def run(req: OpRequest, models: ModelManager, steps: StepReporter, **_: object) -> list[Patch]:
    def args(ws: Workspace) -> dict[str, Any]:
        # Without width/height the pipeline would work at the model's native size, not the crop's.
        return {
            "mask_image": ws.work_mask,
            "width": ws.image.width,
            "height": ws.image.height,
            "strength": req.params["strength"],
        }

    return run_in_workspace(req, models, steps, "inpaint", args)
