"""instruct: InstructPix2Pix edits the image following a written instruction."""

from __future__ import annotations

from ..errors import ErrorCode, RequestError
from ..families.base import Generation
from ..params import Limits
from ..request import OpRequest
from .common import Patch, check_mask, family_of, require_image, workspace


def check(req: OpRequest, limits: Limits) -> None:
    require_image(req, "image")
    check_mask(req)
    if not req.params["instruction"].strip():
        raise RequestError(
            ErrorCode.INVALID_VALUE, "params.instruction is empty: say what to change", "params.instruction"
        )


def run(gen: Generation) -> list[Patch]:
    ws = workspace(gen.req)
    return ws.patches(family_of(gen).instruct(gen, ws.image), gen.seeds, gen.params["feather"])
