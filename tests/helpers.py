"""Test helpers: real pictures and masks, and decoding results into pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from underpaint.daemon.commands.pictures import decode_result_image, image_object

PICTURE = Path(__file__).resolve().parents[1] / "daemon" / "assets" / "chelsea.png"


def picture(size: tuple[int, int] | None = None) -> Image.Image:
    img = Image.open(PICTURE).convert("RGBA")
    return img.resize(size, Image.LANCZOS) if size else img


def ellipse_mask(size: tuple[int, int], box: tuple[int, int, int, int], soften: float = 0) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return mask.filter(ImageFilter.GaussianBlur(soften)) if soften else mask


def obj(img: Image.Image) -> dict[str, Any]:
    return image_object(img)


def pixels(result_image: dict[str, Any]) -> np.ndarray:
    return np.asarray(decode_result_image(result_image))


def composite(base: Image.Image, result: dict[str, Any], index: int = 0) -> Image.Image:
    """Paste result image `index` onto a copy of `base` as an editor would."""
    out = base.convert("RGBA").copy()
    image = result["images"][index]
    out.alpha_composite(decode_result_image(image), (image["x"], image["y"]))
    return out
