"""txt2img: a picture from text at width x height."""

from __future__ import annotations

from ..families.base import Generation
from ..params import Limits
from ..request import OpRequest
from .common import Patch, family_of, full_size, whole


def check(req: OpRequest, limits: Limits) -> None:
    """No images needed; size limits are in the param table."""


def run(gen: Generation) -> list[Patch]:
    width, height = full_size(gen.req)
    return whole(family_of(gen).txt2img(gen, width, height), gen.seeds)
