"""Byte-level pixel helpers in pure Python (no numpy inside Krita).

Everything here works with whole-buffer slicing, which runs at C speed: Krita hands out B,G,R,A bytes,
the wire wants R,G,B,A, and masks are one byte per pixel.
"""

from __future__ import annotations

from .protocol.regions import Rect


def swap_red_blue(data: bytes | bytearray | memoryview) -> bytes:
    """B,G,R,A <-> R,G,B,A (the same swap both ways)."""
    src = bytes(data)
    if len(src) % 4:
        raise ValueError(f"4-channel pixel data expected, got {len(src)} bytes")
    out = bytearray(src)
    out[0::4] = src[2::4]
    out[2::4] = src[0::4]
    return bytes(out)


bgra_to_rgba = swap_red_blue
rgba_to_bgra = swap_red_blue


def set_alpha(pixels: bytes | bytearray, alpha: bytes | bytearray) -> bytes:
    """Replace the 4th channel of 4-channel pixels by one byte per pixel (e.g. a selection mask)."""
    if len(pixels) != 4 * len(alpha):
        raise ValueError(f"{len(pixels)} pixel bytes do not match {len(alpha)} alpha bytes")
    out = bytearray(pixels)
    out[3::4] = alpha
    return bytes(out)


def has_transparency(pixels: bytes | bytearray) -> bool:
    """True if any pixel of 4-channel data is not fully opaque."""
    alpha = bytes(pixels[3::4])
    return alpha.count(255) != len(alpha)


def mask_bounds(mask: bytes | bytearray, width: int, height: int) -> Rect | None:
    """Bounding box of the mask's non-zero bytes (None if all zero).

    Row by row with bytes.strip, so a 4096 px square costs milliseconds, not seconds.
    """
    if len(mask) != width * height:
        raise ValueError(f"mask of {len(mask)} bytes is not {width}x{height}")
    data = bytes(mask)
    top = bottom = -1
    left, right = width, 0
    for y in range(height):
        row = data[y * width : (y + 1) * width]
        stripped = row.lstrip(b"\0")
        if not stripped:
            continue
        if top < 0:
            top = y
        bottom = y
        left = min(left, width - len(stripped))
        right = max(right, len(row.rstrip(b"\0")))
    if top < 0:
        return None
    return Rect(left, top, right - left, bottom - top + 1)


def crop(data: bytes | bytearray, width: int, height: int, channels: int, rect: Rect) -> bytes:
    """Cut `rect` (inside the width x height buffer) out of row-major interleaved pixels."""
    if len(data) != width * height * channels:
        raise ValueError(f"{len(data)} bytes is not {width}x{height}x{channels}")
    if not Rect(0, 0, width, height).contains(rect):
        raise ValueError(f"{rect} is not inside {width}x{height}")
    stride, row_bytes = width * channels, rect.width * channels
    start = rect.x * channels
    return b"".join(
        bytes(data[y * stride + start : y * stride + start + row_bytes]) for y in range(rect.y, rect.bottom)
    )
