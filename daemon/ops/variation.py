"""variation: new pictures like the image (or like the selected part of it), pasted back where the
selection is."""

from __future__ import annotations

from ..families.base import Generation
from ..params import Limits
from ..request import OpRequest
from .common import Patch, check_mask, family_of, require_image, workspace


def check(req: OpRequest, limits: Limits) -> None:
    require_image(req, "image")
    check_mask(req)


def run(gen: Generation) -> list[Patch]:
    ws = workspace(gen.req)
    return ws.patches(family_of(gen).variation(gen, ws.image), gen.seeds, gen.params["feather"])
