"""Run inside Krita by bench/krita_poll.py (through the test runner plugin): Live's per-tick polling on
a big canvas, the plugin's Fingerprint against reading every layer on every tick, interleaved.

Writes its numbers to ctx.results; the bench process turns them into rows and checks.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from krita import Krita
from underpaint_krita.live_fingerprint import Fingerprint
from underpaint_krita.modes import FormValues
from underpaint_krita.protocol.regions import Rect


def read_all(nodes: list[Any], region: Rect) -> bytes:
    """The baseline: every layer's pixels in the region, hashed, on every tick."""
    digest = hashlib.blake2b(digest_size=16)
    for node in nodes:
        digest.update(bytes(node.projectionPixelData(region.x, region.y, region.width, region.height)))
    return digest.digest()


def ms_of(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def scenario(ctx: Any):
    size, count, reps = int(ctx.config["size"]), int(ctx.config["layers"]), int(ctx.config["reps"])
    krita = Krita.instance()
    doc = krita.createDocument(size, size, "poll", "RGBA", "U8", "", 72.0)
    krita.activeWindow().addView(doc)
    yield 0.5
    root = doc.rootNode()
    row = os.urandom(size * 4)
    for i in range(count - 1):  # plus the background Krita made: `count` layers, all painted
        node = doc.createNode(f"Layer {i + 1}", "paintlayer")
        root.addChildNode(node, None)
    nodes = list(root.childNodes())
    for node in nodes:
        node.setPixelData(row * size, 0, 0, size, size)
    doc.setActiveNode(nodes[-1])
    doc.refreshProjection()
    yield 0.5
    form, region, watch = FormValues(mode="refine"), Rect(0, 0, size, size), Fingerprint()
    first_ms = ms_of(lambda: watch(doc, form, region, nodes, None))
    base, new = [], []
    for i in range(reps):  # alternate which goes first, so drift cancels out
        pair = [
            lambda: base.append(ms_of(lambda: read_all(nodes, region))),
            lambda: new.append(ms_of(lambda: watch(doc, form, region, nodes, None))),
        ]
        for run in pair if i % 2 == 0 else pair[::-1]:
            run()
        yield 0.01  # let Krita's event loop breathe, as between timer ticks

    # What polling must still see: a stroke on the painter's layer at the next tick, a change on a
    # layer the painter is not on within as many ticks as there are layers.
    quiet = watch(doc, form, region, nodes, None)
    nodes[-1].setPixelData(bytes(4 * 16 * 16), 10, 10, 16, 16)
    stroke_next_tick = watch(doc, form, region, nodes, None) != quiet
    quiet = watch(doc, form, region, nodes, None)
    nodes[0].setPixelData(bytes(4 * 16 * 16), 40, 40, 16, 16)
    seen_at = next((t + 1 for t in range(count + 1) if watch(doc, form, region, nodes, None) != quiet), None)
    ctx.results.update(
        size=size,
        layers=count,
        first_ms=first_ms,
        baseline_ms=base,
        fingerprint_ms=new,
        reads=watch.reads,
        stroke_next_tick=stroke_next_tick,
        other_layer_seen_at_tick=seen_at,
    )
    doc.setModified(False)
    doc.close()
