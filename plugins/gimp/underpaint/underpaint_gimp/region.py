"""GIMP's choices of crop and size, built on the rectangle math shared with the Krita plugin.

`Rect`, `job_region` and `placement` live in the vendored `underpaint_protocol.regions`
(PROTOCOL.md section 7); what stays here is what only this plug-in does: fall back to the source
layer's extent without a selection, send Upscale's selection without context, and pick Generate's size.
"""

from __future__ import annotations

from underpaint_protocol.regions import Rect, job_region


def crop_region(image: Rect, selection: Rect | None, drawable: Rect | None, padding: int) -> Rect:
    """The crop sent to the daemon: the shared `job_region` within the image, except that without a
    selection it is the source drawable's extent (the whole image for the visible source), clamped."""
    has_selection = selection is not None and not selection.empty
    bounds = image if has_selection else (drawable or image).intersected(image)
    return job_region(selection, bounds, padding)


def upscale_region(image: Rect, selection: Rect | None, drawable: Rect | None) -> Rect:
    """Upscale enlarges exactly what is selected (its bounding box), no context needed."""
    return crop_region(image, selection, drawable, 0)


def generate_size(target: Rect, width: int, height: int) -> tuple[int, int]:
    """txt2img size: the requested one, else the target's rounded up to a multiple of 8 in 64..2048.

    Rounding up (the daemon rounds down) keeps the picture at least as large as the target, which
    it is then scaled to fit exactly.
    """

    def fit(value: int) -> int:
        return min(2048, max(64, -(-value // 8) * 8))

    return fit(width or target.width), fit(height or target.height)
