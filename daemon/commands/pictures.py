"""Client-side picture helpers (Pillow only): files to image objects, results back to pictures."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from ...protocol.messages import raw_image


def image_object(img: Image.Image) -> dict[str, Any]:
    """A PIL image as a raw wire image object (L, RGB or RGBA kept; others converted to RGBA)."""
    if img.mode not in ("L", "RGB", "RGBA"):
        img = img.convert("RGBA")
    return raw_image(img.width, img.height, len(img.getbands()), img.tobytes())


def decode_result_image(obj: dict[str, Any]) -> Image.Image:
    """A result image object (raw or PNG) as a PIL RGBA image."""
    if obj.get("format") == "png":
        return Image.open(io.BytesIO(obj["data"])).convert("RGBA")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[obj["channels"]]
    return Image.frombytes(mode, (obj["width"], obj["height"]), obj["data"]).convert("RGBA")


def result_images(result: dict[str, Any]) -> list[tuple[Image.Image, int, int]]:
    """(patch, x, y) for every image of a `result` event."""
    return [(decode_result_image(o), int(o.get("x", 0)), int(o.get("y", 0))) for o in result["images"]]


def paste_results(base: Image.Image | None, patches: list[tuple[Image.Image, int, int]]) -> list[Image.Image]:
    """Each patch alpha-composited onto a copy of `base` (or the patch itself without a base)."""
    if base is None:
        return [patch for patch, _, _ in patches]
    out = []
    for patch, x, y in patches:
        picture = base.copy()
        picture.alpha_composite(patch, (x, y))
        out.append(picture)
    return out
