"""Rectangle math for "only the region the job needs" (PROTOCOL.md section 7), in canvas pixels."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rect:
    """An axis-aligned pixel rectangle; `right`/`bottom` are exclusive."""

    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height

    @property
    def empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    def grown(self, margin: int) -> Rect:
        return Rect(self.x - margin, self.y - margin, self.width + 2 * margin, self.height + 2 * margin)

    def intersected(self, other: Rect) -> Rect:
        x, y = max(self.x, other.x), max(self.y, other.y)
        right, bottom = min(self.right, other.right), min(self.bottom, other.bottom)
        return Rect(x, y, max(0, right - x), max(0, bottom - y))

    def translated(self, dx: int, dy: int) -> Rect:
        return Rect(self.x + dx, self.y + dy, self.width, self.height)

    def contains(self, other: Rect) -> bool:
        return (
            self.x <= other.x
            and self.y <= other.y
            and other.right <= self.right
            and other.bottom <= self.bottom
        )

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.width, self.height]


def job_region(selection: Rect | None, canvas: Rect, padding: int) -> Rect:
    """The crop sent to the daemon: the selection's bounds grown by `padding`, clamped to the canvas.

    The daemon grows the mask's bounds by the same padding inside this crop, so its region is the whole
    crop and the returned patch lands where it should once the crop's origin is added.
    Without a selection the whole canvas is the region.
    """
    if selection is None or selection.empty:
        return canvas
    return selection.grown(max(0, padding)).intersected(canvas)


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
