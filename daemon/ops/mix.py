"""mix: blend several prompts and pictures, each with a weight, into new pictures (Kandinsky's prior
interpolates their CLIP embeddings)."""

from __future__ import annotations

from PIL import Image

from ..errors import ErrorCode, RequestError
from ..families.base import Generation
from ..params import Limits
from ..request import OpRequest
from .common import Patch, family_of, full_size, whole


def check(req: OpRequest, limits: Limits) -> None:
    for i, item in enumerate(req.params["items"]):
        name = item["image"]
        if name is not None and name not in req.images:
            raise RequestError(
                ErrorCode.MISSING_FIELD,
                f"params.items.{i}.image names images.{name}, which was not sent",
                f"images.{name}",
            )


def run(gen: Generation) -> list[Patch]:
    items: list[tuple[str | Image.Image, float]] = [
        (
            item["prompt"] if item["image"] is None else gen.req.images[item["image"]].convert("RGB"),
            item["weight"],
        )
        for item in gen.params["items"]
    ]
    return whole(family_of(gen).mix(gen, items, full_size(gen.req)), gen.seeds)
