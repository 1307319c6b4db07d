"""Krita-only sizing; the rectangle math itself (`Rect`, `job_region`, `placement`) is shared with the
GIMP plug-in in the vendored `protocol.regions`."""

from __future__ import annotations


def working_size(
    width: int, height: int, resolution: int, multiple: int = 8, minimum: int = 64
) -> tuple[int, int]:
    """txt2img size for a width x height target: longer side = `resolution`, aspect kept, multiples of 8."""
    if width <= 0 or height <= 0:
        raise ValueError(f"empty target {width}x{height}")
    scale = resolution / max(width, height)

    def side(value: int) -> int:
        return max(minimum, int(round(value * scale / multiple)) * multiple)

    return side(width), side(height)
