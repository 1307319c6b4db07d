"""Region math in image coordinates: which pixels a job reads, and where its results land.

Only the part of the image a job needs goes over the wire: the selection's bounds grown by `padding`
(context for the model), clamped to the image. The daemon answers in the crop's coordinates, so the
crop's origin is added back to every returned `x`, `y`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rect:
    """A pixel rectangle: top-left corner and size (size 0 = empty)."""

    x: int
    y: int
    width: int
    height: int

    @classmethod
    def from_corners(cls, x1: int, y1: int, x2: int, y2: int) -> Rect:
        return cls(x1, y1, max(0, x2 - x1), max(0, y2 - y1))

    @property
    def x2(self) -> int:
        return self.x + self.width

    @property
    def y2(self) -> int:
        return self.y + self.height

    @property
    def empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    @property
    def pixels(self) -> int:
        return max(0, self.width) * max(0, self.height)

    def grow(self, by: int) -> Rect:
        return Rect(self.x - by, self.y - by, self.width + 2 * by, self.height + 2 * by)

    def intersect(self, other: Rect) -> Rect:
        return Rect.from_corners(
            max(self.x, other.x), max(self.y, other.y), min(self.x2, other.x2), min(self.y2, other.y2)
        )

    def translate(self, dx: int, dy: int) -> Rect:
        return Rect(self.x + dx, self.y + dy, self.width, self.height)


def job_region(image: Rect, selection: Rect | None, drawable: Rect | None, padding: int) -> Rect:
    """The crop sent to the daemon.

    With a selection: its bounds grown by `padding`, clamped to the image. Without one: the source
    drawable's extent (the whole image for the visible source), clamped to the image.
    """
    if selection is not None and not selection.empty:
        return selection.grow(max(0, padding)).intersect(image)
    return (drawable or image).intersect(image)


def upscale_region(image: Rect, selection: Rect | None, drawable: Rect | None) -> Rect:
    """Upscale enlarges exactly what is selected (its bounding box), no context needed."""
    return job_region(image, selection, drawable, 0)


def placement(region: Rect, x: int, y: int) -> tuple[int, int]:
    """Image coordinates of a returned patch whose `x`, `y` are relative to the request's crop."""
    return region.x + int(x), region.y + int(y)


def generate_size(target: Rect, width: int, height: int) -> tuple[int, int]:
    """txt2img size: the requested one, else the target's rounded up to a multiple of 8 in 64..2048.

    Rounding up (the daemon rounds down) keeps the picture at least as large as the target, which
    it is then scaled to fit exactly.
    """

    def fit(value: int) -> int:
        return min(2048, max(64, -(-value // 8) * 8))

    return fit(width or target.width), fit(height or target.height)
