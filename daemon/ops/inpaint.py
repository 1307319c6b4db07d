"""inpaint: repaint the masked area, with the preset's inpainting model when it has one."""

from __future__ import annotations

from ..families.base import Generation
from ..params import Limits
from ..request import OpRequest
from .common import Patch, check_mask, check_strength, family_of, require_image, workspace


def check(req: OpRequest, limits: Limits) -> None:
    require_image(req, "image")
    require_image(req, "mask")
    check_mask(req)
    check_strength(req)


def run(gen: Generation) -> list[Patch]:
    ws = workspace(gen.req)
    assert ws.work_mask is not None
    images = family_of(gen).inpaint(gen, ws.image, ws.work_mask, gen.params["strength"])
    return ws.patches(images, gen.seeds, gen.params["feather"])
