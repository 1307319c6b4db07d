"""sdedit: img2img with `strength` ("Refine"), optionally restricted to a mask."""

from __future__ import annotations

from ..families.base import Generation
from ..params import Limits
from ..request import OpRequest
from .common import Patch, check_mask, check_strength, family_of, require_image, workspace


def check(req: OpRequest, limits: Limits) -> None:
    require_image(req, "image")
    check_mask(req)
    check_strength(req)


def run(gen: Generation) -> list[Patch]:
    ws = workspace(gen.req)
    images = family_of(gen).img2img(gen, ws.image, gen.params["strength"])
    return ws.patches(images, gen.seeds, gen.params["feather"])
