"""What Live polls each tick: a fingerprint of everything the next live job would read, kept cheap on
big canvases.

Reading every layer's pixels on every tick is too slow for a big canvas: on a 4096 x 4096 canvas with
six layers it took about 650 ms in Krita 5 (longer than a tick, so Krita would feel frozen while Live
is on). So one checksum (CRC-32, read straight from Krita's buffer without a copy) is kept per layer
and only some layers are read per tick:

- the top-level layer that holds the painter's active layer, every tick (strokes land there);
- one other layer, in turn;
- any layer not read before (new, or the job region moved).

Layer order, visibility, opacity, blending, the selection (read once per tick, for the region too)
and the form are checked every tick. So a stroke is seen on the next tick, and a change the painter
did not make on the active layer (an undo after switching layers, a script) within as many ticks as
there are layers.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict
from typing import Any

from .protocol.regions import Rect


def top_level(node: Any, root: Any) -> Any:
    """The child of `root` that holds `node` (the node itself when it is one), or None."""
    while node is not None:
        parent = node.parentNode()
        if parent is None:
            return None
        if parent == root:
            return node
        node = parent
    return None


class Fingerprint:
    """Per-layer checksums of the job region, refreshed a few layers per tick."""

    def __init__(self) -> None:
        self.sums: dict[str, int] = {}  # layer id -> CRC-32 of its pixels in `region`
        self.region: list[int] = []
        self.turn = 0  # which layer the rotation reads next
        self.reads: list[int] = []  # layers read at each tick (tests and stats: the price of polling)

    def __call__(
        self, doc: Any, form: Any, region: Rect, nodes: list[Any], selected: tuple[Rect, bytes] | None
    ) -> bytes:
        """`nodes`: every layer the job may read (top-level ones, ControlNet units, the source layer;
        none twice); `selected`: the selection's rough rectangle and its pixels (document.read_selection)."""
        active = doc.activeNode()
        painted = [top_level(active, doc.rootNode()), active]  # read on every tick
        if region.as_list() != self.region:
            self.sums, self.region = {}, region.as_list()
        ids = [node.uniqueId().toString() for node in nodes]
        self.sums = {key: value for key, value in self.sums.items() if key in ids}
        due = {i for i, key in enumerate(ids) if key not in self.sums}
        due |= {i for i, node in enumerate(nodes) if any(node == p for p in painted if p is not None)}
        others = [i for i in range(len(nodes)) if i not in due]
        if others:
            self.turn %= len(nodes)
            due.add(min(others, key=lambda i: (i - self.turn) % len(nodes)))
            self.turn += 1
        for i in due:
            data = nodes[i].projectionPixelData(region.x, region.y, region.width, region.height)
            self.sums[ids[i]] = zlib.crc32(data)
        self.reads.append(len(due))

        digest = hashlib.blake2b(digest_size=16)
        active_id = active.uniqueId().toString() if active is not None and form.source == "layer" else ""
        what = [region.as_list(), asdict(form), active_id]
        digest.update(json.dumps(what, sort_keys=True, default=str).encode())
        if selected is not None:
            rough, mask = selected
            digest.update(f"{rough.as_list()} {zlib.crc32(mask)};".encode())
        for key, node in zip(ids, nodes, strict=True):
            look = f"{key} {node.visible()} {node.opacity()} {node.blendingMode()} {self.sums[key]};"
            digest.update(look.encode())
        return digest.digest()
