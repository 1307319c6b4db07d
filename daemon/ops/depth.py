"""depth: depth-to-image. The picture is re-painted keeping its depth, estimated by the model or sent
by the client as `depth` (a depth layer: 8-bit gray, white = near)."""

from __future__ import annotations

from PIL import Image

from ..families.base import Generation
from ..params import Limits
from ..request import OpRequest
from .common import Patch, check_mask, check_same_size, check_strength, family_of, require_image, workspace


def check(req: OpRequest, limits: Limits) -> None:
    require_image(req, "image")
    check_mask(req)
    check_same_size(req, "depth")
    check_strength(req)


def run(gen: Generation) -> list[Patch]:
    ws = workspace(gen.req)
    depth = gen.req.images.get("depth")
    work_depth = ws.crop(depth.convert("L"), Image.BILINEAR) if depth is not None else None
    images = family_of(gen).depth(gen, ws.image, work_depth, gen.params["strength"])
    return ws.patches(images, gen.seeds, gen.params["feather"])
