"""Rectangle math for "only the region the job needs" (PROTOCOL.md section 7), shared by the plugins.

A client sends only a crop of the picture: the selection's bounds grown by `padding` (context for the
model), clamped to the picture. The daemon answers in the crop's coordinates, so the crop's origin is
added back to every returned `x`, `y`. Standard library only, so it imports even where pyzmq or
msgpack are missing (the plugins need it to lay out their dialogs and layers either way).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rect:
    """A pixel rectangle: top-left corner and size; `right`/`bottom` are exclusive, size <= 0 is empty."""

    x: int
    y: int
    width: int
    height: int

    @classmethod
    def from_corners(cls, left: int, top: int, right: int, bottom: int) -> Rect:
        """From exclusive corner coordinates (GIMP's selection bounds); inverted corners give empty."""
        return cls(left, top, max(0, right - left), max(0, bottom - top))

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
        """`margin` px more on every side: the context the model sees around a selection."""
        return Rect(self.x - margin, self.y - margin, self.width + 2 * margin, self.height + 2 * margin)

    def intersected(self, other: Rect) -> Rect:
        """The overlap, empty (size 0) when there is none: clamps a crop to the picture."""
        left, top = max(self.x, other.x), max(self.y, other.y)
        return Rect.from_corners(left, top, min(self.right, other.right), min(self.bottom, other.bottom))

    def translated(self, dx: int, dy: int) -> Rect:
        """Moved by (dx, dy): between picture and layer/selection-local coordinates."""
        return Rect(self.x + dx, self.y + dy, self.width, self.height)

    def contains(self, other: Rect) -> bool:
        """Whether `other` lies wholly inside: a crop must stay within its buffer."""
        inside_x = self.x <= other.x and other.right <= self.right
        return inside_x and self.y <= other.y and other.bottom <= self.bottom

    def as_list(self) -> list[int]:
        """[x, y, width, height]: how a region is stored with a result's parameters."""
        return [self.x, self.y, self.width, self.height]


def job_region(selection: Rect | None, bounds: Rect, padding: int) -> Rect:
    """The crop sent to the daemon: the selection's bounds grown by `padding`, clamped to `bounds`.

    The daemon grows the mask's bounds by the same padding inside this crop, so its region is the whole
    crop and the returned patch lands where it should once the crop's origin is added (`placement`).
    Without a selection (None or empty) the whole of `bounds` is the region.
    """
    if selection is None or selection.empty:
        return bounds
    return selection.grown(max(0, padding)).intersected(bounds)


def placement(region: Rect, x: int, y: int) -> tuple[int, int]:
    """Picture coordinates of a returned patch whose `x`, `y` are relative to the request's crop."""
    return region.x + int(x), region.y + int(y)
