"""What shows through a transparent source layer, watched cheaply for Live.

Where the source layer is transparent (or masked, or not fully opaque), a live job composites the
visible layers below it (reading.read_seen), so Live watches them too. Reading every layer below on
every 150 ms tick would cost as much as the stack is deep, so one checksum per layer below is kept:
one layer is read per tick in turn (and any layer not read before at once), while their visibility,
opacity and mode are checked on every tick. A stroke on a layer below is seen within as many ticks
as there are layers below it.
"""

from __future__ import annotations

import zlib

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp  # noqa: E402
from underpaint_protocol.regions import Rect  # noqa: E402

from .reading import read_rgba  # noqa: E402


def layers_below(image: Gimp.Image, item: Gimp.Item) -> list[Gimp.Layer]:
    """The layers `read_seen` composites under `item`: its siblings below it, then those below each of
    its groups, top to bottom (a group stands for its children: its pixels are theirs composited)."""
    found: list[Gimp.Layer] = []
    while item is not None:
        parent = item.get_parent()
        siblings = image.get_layers() if parent is None else parent.get_children()
        found += siblings[image.get_item_position(item) + 1 :]
        item = parent
    return found


class BelowWatch:
    """Per-layer checksums of the layers below the source over the job's area, a layer per tick."""

    def __init__(self) -> None:
        self.sums: dict[int, int] = {}  # layer id -> CRC-32 of its pixels over `area`
        self.area: list[int] = []
        self.turn = 0
        self.reads: list[int] = []  # layers read at each call (tests: the price of watching)

    def key(self, image: Gimp.Image, source: Gimp.Item, area: Rect) -> str:
        """Text that changes when anything below `source` within `area` changes (a tick or more later)."""
        if area.as_list() != self.area:
            self.sums, self.area = {}, area.as_list()
        below = layers_below(image, source)
        ids = [layer.get_id() for layer in below]
        self.sums = {key: value for key, value in self.sums.items() if key in ids}
        due = [i for i, key in enumerate(ids) if key not in self.sums]
        if below and not due:
            self.turn %= len(below)
            due = [self.turn]
            self.turn += 1
        for i in due:
            self.sums[ids[i]] = zlib.crc32(read_rgba(below[i], area))
        self.reads.append(len(due))
        looks = [
            f"{key}:{layer.get_visible()}:{layer.get_opacity()}:{int(layer.get_mode())}:{self.sums[key]}"
            for key, layer in zip(ids, below, strict=True)
        ]
        return ";".join(looks)
