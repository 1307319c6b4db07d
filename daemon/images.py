"""Wire image objects <-> PIL images, and the selection-aware crop / feather of PROTOCOL.md §7."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .errors import ErrorCode, RequestError

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def decode_image(obj: Any, path: str, max_pixels: int) -> Image.Image:
    """Turn an image object into a PIL image (L, RGB or RGBA), checking every field."""
    if not isinstance(obj, dict):
        raise RequestError(ErrorCode.INVALID_IMAGE, f"{path} must be an image map", path)
    fmt = obj.get("format", "raw")
    data = obj.get("data")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RequestError(ErrorCode.INVALID_IMAGE, f"{path}.data must be bin", f"{path}.data")
    if fmt == "png":
        return _decode_png(data, path, max_pixels)
    if fmt != "raw":
        raise RequestError(
            ErrorCode.INVALID_IMAGE,
            f"{path}.format is {fmt!r}, expected 'raw' or 'png'",
            f"{path}.format",
        )
    dims = {}
    for key in ("width", "height", "channels"):
        value = obj.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise RequestError(ErrorCode.INVALID_IMAGE, f"{path}.{key} must be an int", f"{path}.{key}")
        dims[key] = value
    w, h, c = dims["width"], dims["height"], dims["channels"]
    if c not in _MODES:
        raise RequestError(
            ErrorCode.INVALID_IMAGE, f"{path}.channels is {c}, expected 1, 3 or 4", f"{path}.channels"
        )
    if w < 1 or h < 1:
        raise RequestError(ErrorCode.INVALID_IMAGE, f"{path} is {w}x{h}: sizes must be >= 1", path)
    _check_pixels(w, h, path, max_pixels)
    if len(data) != w * h * c:
        raise RequestError(
            ErrorCode.INVALID_IMAGE,
            f"{path}.data has {len(data)} bytes, expected width*height*channels = {w * h * c}",
            f"{path}.data",
        )
    # No copy: the image reads the received buffer (msgpack bytes or a ZeroMQ frame) directly.
    return Image.frombuffer(_MODES[c], (w, h), data, "raw", _MODES[c], 0, 1)


def _decode_png(data: bytes | bytearray | memoryview, path: str, max_pixels: int) -> Image.Image:
    """PNG only (Pillow would otherwise open any format it knows, EPS through Ghostscript included),
    with the declared size checked before anything is decompressed."""
    size = png_size(data)
    if size is None:
        raise RequestError(ErrorCode.INVALID_IMAGE, f"{path}: not a PNG file", path)
    _check_pixels(size[0], size[1], path, max_pixels)
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG"])
        _check_pixels(img.width, img.height, path, max_pixels)
        img.load()
    except RequestError:
        raise
    except Exception as exc:  # Pillow raises many types for broken files
        raise RequestError(ErrorCode.INVALID_IMAGE, f"{path}: undecodable PNG ({exc})", path) from None
    if img.mode not in ("L", "RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    return img


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """Width and height a PNG declares in its header (IHDR), without decompressing anything."""
    head = bytes(data[:24])
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _check_pixels(w: int, h: int, path: str, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise RequestError(
            ErrorCode.IMAGE_TOO_LARGE, f"{path} is {w}x{h} = {w * h} px, limit is {max_pixels}", path
        )


def encode_image(img: Image.Image, fmt: str = "raw", **extra: Any) -> dict[str, Any]:
    """PIL image -> wire image object (raw or PNG), with extra fields such as x, y, seed."""
    if fmt == "png":
        buf = io.BytesIO()
        img.save(buf, "PNG", compress_level=1)
        return {"format": "png", "data": buf.getvalue(), **extra}
    channels = len(img.getbands())
    return {
        "format": "raw",
        "width": img.width,
        "height": img.height,
        "channels": channels,
        "data": img.tobytes(),
        **extra,
    }


def to_mask(img: Image.Image) -> Image.Image:
    """Masks are 8-bit gray; colour masks are converted by luminance (alpha ignored)."""
    return img if img.mode == "L" else img.convert("RGB").convert("L")


@dataclass(frozen=True)
class Region:
    """The part of the input the model works on, and the working size it is scaled to."""

    x: int
    y: int
    width: int
    height: int
    work_width: int
    work_height: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.x + self.width, self.y + self.height)


def working_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """Scale (width, height) so the longer side is `resolution`, both multiples of 8."""
    scale = resolution / max(width, height)
    return (max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8))


def find_region(size: tuple[int, int], mask: Image.Image | None, padding: int, resolution: int) -> Region:
    """Mask bounding box grown by `padding` (clamped to the image); the whole image without mask."""
    w, h = size
    if mask is None:
        x0, y0, x1, y1 = 0, 0, w, h
    else:
        bbox = mask.getbbox()
        if bbox is None:
            raise RequestError(
                ErrorCode.INVALID_VALUE, "images.mask is empty: nothing is selected", "images.mask"
            )
        x0, y0 = max(0, bbox[0] - padding), max(0, bbox[1] - padding)
        x1, y1 = min(w, bbox[2] + padding), min(h, bbox[3] + padding)
    ww, wh = working_size(x1 - x0, y1 - y0, resolution)
    return Region(x0, y0, x1 - x0, y1 - y0, ww, wh)


def crop_to_work(img: Image.Image, region: Region, resample: int = Image.LANCZOS) -> Image.Image:
    """Crop `img` to the region and scale it to the working size."""
    return img.crop(region.box).resize((region.work_width, region.work_height), resample)


def feathered_alpha(mask: Image.Image, feather: int) -> Image.Image:
    """Alpha = min(mask, blur(mask)): soft inwards, and exactly 0 wherever the mask is 0."""
    if feather <= 0:
        return mask
    blurred = mask.filter(ImageFilter.GaussianBlur(feather / 2))
    return Image.fromarray(np.minimum(np.asarray(mask), np.asarray(blurred)))


def to_patch(result: Image.Image, region: Region, mask: Image.Image | None, feather: int) -> Image.Image:
    """Scale a working-size result back to the region and give it the alpha that makes it pasteable."""
    rgb = result.convert("RGB")
    if rgb.size != (region.width, region.height):
        rgb = rgb.resize((region.width, region.height), Image.LANCZOS)
    alpha = Image.new("L", rgb.size, 255) if mask is None else feathered_alpha(mask.crop(region.box), feather)
    rgb.putalpha(alpha)
    return rgb
