"""GIMP's choices of crop and size, built on the rectangle math shared with the Krita plugin.

`Rect`, `job_region` and `placement` live in the vendored `underpaint_protocol.regions`
(PROTOCOL.md section 7); what stays here is what only this plug-in does: fall back to the source
layer's extent without a selection, send Upscale's selection without context, pick Generate's size,
and fit a picture into its target without stretching it.
"""

from __future__ import annotations

from underpaint_protocol.regions import Rect, job_region

MIN_SIDE, MAX_SIDE = 64, 2048  # the daemon's txt2img width/height range
MULTIPLE = 8  # the daemon rounds sizes down to a multiple of 8


def crop_region(image: Rect, selection: Rect | None, drawable: Rect | None, padding: int) -> Rect:
    """The crop sent to the daemon: the shared `job_region` within the image, except that without a
    selection it is the source drawable's extent (the whole image for the visible source), clamped."""
    has_selection = selection is not None and not selection.empty
    bounds = image if has_selection else (drawable or image).intersected(image)
    return job_region(selection, bounds, padding)


def upscale_region(image: Rect, selection: Rect | None, drawable: Rect | None) -> Rect:
    """Upscale enlarges exactly what is selected (its bounding box), no context needed."""
    return crop_region(image, selection, drawable, 0)


def _side(value: float) -> int:
    return min(MAX_SIDE, max(MIN_SIDE, int(value / MULTIPLE + 0.5) * MULTIPLE))


def generate_size(target: Rect, width: int, height: int, resolution: int | None) -> tuple[int, int]:
    """txt2img size for `target` (the selection's box or the image).

    Nothing asked (0, 0): the model's own working size with the target's shape, its longer side the
    preset's native `resolution` (a model paints best there, and a canvas of any size fits); the
    picture is then scaled to cover the target (`cover`). One side asked: the other follows the
    target's aspect ratio. Sides are multiples of 8 within the daemon's 64 … 2048.
    """
    longer = max(target.width, target.height, 1)
    if width and height:
        return _side(width), _side(height)
    if width:
        return _side(width), _side(width * target.height / max(1, target.width))
    if height:
        return _side(height * target.width / max(1, target.height)), _side(height)
    scale = min(resolution or longer, MAX_SIDE) / longer
    return _side(target.width * scale), _side(target.height * scale)


def cover(width: int, height: int, target: Rect) -> tuple[int, int, int, int]:
    """Scale a width x height picture uniformly so it covers `target`, centred: returns the scaled
    size and how far its top-left corner lies left of and above the target's (what is cropped).

    One factor for both sides, so a picture whose shape differs from the target's (multiples of 8,
    the 64 px minimum, a model that paints at its own size) is cropped, never stretched.
    """
    scale = max(target.width / max(1, width), target.height / max(1, height))
    scaled_w = max(target.width, int(round(width * scale)))
    scaled_h = max(target.height, int(round(height * scale)))
    return scaled_w, scaled_h, (scaled_w - target.width) // 2, (scaled_h - target.height) // 2
