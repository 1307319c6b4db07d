"""Image objects (PROTOCOL.md section 4): good ones for base requests, and every wrong shape of one.

Payloads that claim to be PNG but are not (EPS, GIF, JPEG, ...) and PNGs that decode far larger than
they travel are built here, in memory, with Pillow or by hand (a PNG is a few chunks and a zlib stream).
"""

from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache
from typing import Any

import msgpack
from PIL import Image

from .values import Value, wrong_kinds


def pattern(size: int, salt: int = 0) -> bytes:
    """`size` deterministic bytes that are not constant (a model sees a picture, not a flat field)."""
    row = bytes((i * 7 + salt * 13 + (i >> 5) * 3) & 0xFF for i in range(4099))
    return (row * (size // len(row) + 1))[:size]


def raw(width: int, height: int, channels: int = 3, salt: int = 0) -> dict[str, Any]:
    return {
        "format": "raw",
        "width": width,
        "height": height,
        "channels": channels,
        "data": pattern(width * height * channels, salt),
    }


def mask(width: int, height: int, box: tuple[float, float, float, float] = (0.25, 0.25, 0.75, 0.75)) -> dict:
    """A one-channel mask with a rectangle of 255 (the share of the picture given by `box`)."""
    x0, y0, x1, y1 = (int(box[0] * width), int(box[1] * height), int(box[2] * width), int(box[3] * height))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    rows = bytearray(width * height)
    for y in range(y0, min(y1, height)):
        rows[y * width + x0 : y * width + min(x1, width)] = b"\xff" * (min(x1, width) - x0)
    return {"format": "raw", "width": width, "height": height, "channels": 1, "data": bytes(rows)}


def encode(width: int, height: int, mode: str = "RGB", fmt: str = "PNG", **kw: Any) -> bytes:
    img = Image.frombytes("RGB", (width, height), pattern(width * height * 3)).convert(mode)
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


@lru_cache(maxsize=8)
def png_bomb(width: int, height: int, color_type: int = 0) -> bytes:
    """A valid PNG of zeros: a few hundred KiB on the wire, `width*height` pixels once decoded."""
    channels = {0: 1, 2: 3, 6: 4}[color_type]
    row = b"\x00" * (1 + width * channels)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    )


def png_declared(width: int, height: int) -> bytes:
    """A PNG header that declares `width`x`height` and carries almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


EPS_DRAWING = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
    b"newpath 0 0 moveto 64 64 lineto stroke showpage\n%%EOF\n"
)
# PostScript that never ends: a decoder that runs it without a time limit never comes back.
EPS_LOOP = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n{ 1 pop } loop\n%%EOF\n"


@lru_cache(maxsize=1)
def not_png_payloads() -> dict[str, bytes]:
    """Payloads sent with `format: "png"` that are not PNG files (each must be `invalid_image`)."""
    good = encode(16, 16)
    bad_crc = bytearray(good)
    bad_crc[29] ^= 0xFF  # inside the IHDR chunk's CRC
    return {
        "eps": EPS_DRAWING,
        "eps_loop": EPS_LOOP,
        "eps_binary_header": b"\xc5\xd0\xd3\xc6"
        + struct.pack("<IIIIII", 30, len(EPS_LOOP), 0, 0, 0, 0)
        + b"\xff\xff"
        + EPS_LOOP,
        "gif": encode(16, 16, "P", "GIF"),
        "jpeg": encode(16, 16, "RGB", "JPEG"),
        "bmp": encode(16, 16, "RGB", "BMP"),
        "tiff": encode(16, 16, "RGB", "TIFF"),
        "webp": encode(16, 16, "RGB", "WEBP"),
        "ico": encode(16, 16, "RGB", "ICO"),
        "ppm": encode(16, 16, "RGB", "PPM"),
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"/>',
        "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "empty": b"",
        "signature_only": b"\x89PNG\r\n\x1a\n",
        "truncated": good[: len(good) // 2],
        "bad_crc": bytes(bad_crc),
        "text": b"not a png at all",
    }


def png_variants(width: int, height: int) -> list[tuple[str, bytes, bool]]:
    """(tag, PNG bytes, bad) for every PNG kind the spec allows plus declared-huge ones."""
    return [
        ("png_rgb", encode(width, height, "RGB"), False),
        ("png_rgba", encode(width, height, "RGBA"), False),
        ("png_gray", encode(width, height, "L"), False),
        ("png_la", encode(width, height, "LA"), False),
        ("png_1bit", encode(width, height, "1"), False),
        ("png_palette", encode(width, height, "P"), False),
        ("png_16bit", encode(width, height, "I;16"), False),
        ("png_interlaced", encode(width, height, "RGB", optimize=False, interlace=1), False),
        ("png_declares_huge", png_declared(16384, 16384), True),
        ("png_declares_2^31", png_declared(2**31 - 1, 2**31 - 1), True),
        ("png_declares_zero", png_declared(0, 0), True),
    ]


def image_values(width: int, height: int, max_pixels: int) -> list[Value]:
    """Every wrong (and a few right but odd) image objects for a slot whose base image is
    `width`x`height` RGB. `bad` means the spec requires an error (PROTOCOL.md section 4)."""
    good = raw(width, height)
    data = good["data"]
    out: list[Value] = [
        Value("raw_rgba", raw(width, height, 4), False),
        Value("raw_gray", raw(width, height, 1), False),
        Value("raw_default_format", {k: v for k, v in good.items() if k != "format"}, False),
        Value("raw_extra_key", {**good, "colour_space": "srgb"}, False),
        Value("data_short", {**good, "data": data[:-1]}, True),
        Value("data_long", {**good, "data": data + b"\x00"}, True),
        Value("data_empty", {**good, "data": b""}, True),
        Value("data_missing", {k: v for k, v in good.items() if k != "data"}, True),
        Value("data_str", {**good, "data": "x" * len(data)}, True),
        Value("data_list", {**good, "data": list(data[:16])}, True),
        Value("data_nil", {**good, "data": None}, True),
        Value("data_ext", {**good, "data": msgpack.ExtType(1, data)}, True),
        Value("format_jpeg", {**good, "format": "jpeg"}, True),
        Value("format_empty", {**good, "format": ""}, True),
        Value("format_int", {**good, "format": 1}, True),
        Value("format_upper", {**good, "format": "RAW"}, True),
        Value("oversized_declared", {**good, "width": 16384, "height": 16384, "data": data}, True),
        Value("oversized_2^31", {**good, "width": 2**31, "height": 2**31}, True),
        Value("oversized_2^64", {**good, "width": 2**64 - 1, "height": 2**64 - 1}, True),
        Value(
            "over_max_pixels",
            {**good, "width": max_pixels + 1, "height": 1, "channels": 1, "data": b"\x00" * 16},
            True,
        ),
        Value("width_zero", {**good, "width": 0, "data": b""}, True),
        Value("height_zero", {**good, "height": 0, "data": b""}, True),
        Value("width_negative", {**good, "width": -width}, True),
        Value("width_float", {**good, "width": float(width)}, True),
        Value("width_nan", {**good, "width": float("nan")}, True),
        Value("width_str", {**good, "width": str(width)}, True),
        Value("width_nil", {**good, "width": None}, True),
        Value("width_true", {**good, "width": True}, True),
        Value("channels_0", {**good, "channels": 0}, True),
        Value("channels_2", {**good, "channels": 2, "data": data[: width * height * 2]}, True),
        Value("channels_5", {**good, "channels": 5, "data": data + data[: width * height * 2]}, True),
        Value("channels_-3", {**good, "channels": -3}, True),
        Value("channels_float", {**good, "channels": 3.0}, True),
        Value("swapped_sides", {**good, "width": height, "height": width}, False),
        Value("one_pixel", raw(1, 1), False),
        Value("one_row", raw(min(2048, width * 16), 1), False),
        Value("one_column", raw(1, min(2048, height * 16)), False),
        Value("frame_and_data", {**good, "frame": 1}, False),
    ]
    out += [
        Value(f"not_a_map:{v.tag}", v.value, True) for v in wrong_kinds() if v.tag not in ("map", "map_empty")
    ]
    out.append(Value("not_a_map:empty_map", {}, True))
    for tag, payload in not_png_payloads().items():
        out.append(Value(f"png_payload:{tag}", {"format": "png", "data": payload}, True))
    for tag, payload, bad in png_variants(width, height):
        out.append(Value(tag, {"format": "png", "data": payload}, bad))
    out.append(
        Value(
            "png_with_raw_fields",
            {"format": "png", "data": encode(width, height), "width": 1, "height": 1, "channels": 1},
            False,
        )
    )
    out.append(Value("png_data_str", {"format": "png", "data": "\x89PNG"}, True))
    return out


def bomb_values(max_pixels: int) -> list[Value]:
    """PNGs that are small on the wire but large once decoded: at the pixel limit and just over it."""
    side = int(max_pixels**0.5)
    out = [Value("png_bomb_at_limit", {"format": "png", "data": png_bomb(side, side)}, False)]
    out.append(Value("png_bomb_over_limit", {"format": "png", "data": png_bomb(side + 1, side)}, True))
    out.append(
        Value("png_bomb_rgba_quarter", {"format": "png", "data": png_bomb(side // 2, side // 2, 6)}, False)
    )
    return out
