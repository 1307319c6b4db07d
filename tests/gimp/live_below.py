"""Runs inside gimp-console (python-fu-eval): Live's canvas watch on a real GIMP image, where the source
layer is partly transparent and layers (one of them a group) lie below it.

The plug-in's own LiveCanvas (underpaint_gimp/live.py) is imported from the installed plug-in folder
named in UNDERPAINT_LIVE_SPEC ({"plugin_dir", "out"}); what its fingerprint saw goes to
<out>/result.json for pytest to check (tests/test_gimp_plugin.py).
"""

import json
import os
import sys
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402

SPEC = json.loads(open(os.environ["UNDERPAINT_LIVE_SPEC"]).read())
OUT = SPEC["out"]
W, H = 64, 48
RESULT = {"done": False}


def new_layer(image, name, parent, position):
    layer = Gimp.Layer.new(image, name, W, H, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, parent, position)
    return layer


def paint(layer, rect, rgba):
    x, y, w, h = rect
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(x, y, w, h), "R'G'B'A u8", bytes(rgba) * (w * h))
    buffer.flush()
    layer.update(x, y, w, h)


def ticks_until_changed(canvas, values, before, limit):
    """How many ticks (fingerprint calls) until the fingerprint differs from `before` (None: never)."""
    for tick in range(1, limit + 1):
        if canvas.fingerprint(values) != before:
            return tick
    return None


def main():
    sys.path.insert(0, SPEC["plugin_dir"])
    from underpaint_gimp.live import LiveCanvas

    image = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    background = new_layer(image, "Background", None, 0)
    paint(background, (0, 0, W, H), (255, 255, 255, 255))
    group = Gimp.GroupLayer.new(image, "Group")
    image.insert_layer(group, None, 0)
    inner = new_layer(image, "Inner", group, 0)
    paint(inner, (0, 0, W // 2, H), (0, 0, 255, 255))
    middle = new_layer(image, "Middle", None, 0)
    source = new_layer(image, "Source", None, 0)  # the painter's layer: opaque on the left half only
    paint(source, (0, 0, W // 2, H), (200, 30, 30, 255))
    values = {"padding": 0, "prompt": "a cat"}
    canvas = LiveCanvas(image, source)
    first = canvas.fingerprint(values)
    RESULT["stable"] = canvas.fingerprint(values) == canvas.fingerprint(values) == first
    layers = 3  # Middle, Group, Background
    # A stroke on a layer below, where the source is transparent: seen within as many ticks as layers.
    quiet = canvas.fingerprint(values)
    paint(background, (40, 10, 6, 6), (0, 120, 0, 255))
    RESULT["background_seen_at"] = ticks_until_changed(canvas, values, quiet, layers + 1)
    quiet = canvas.fingerprint(values)
    paint(inner, (5, 5, 4, 4), (255, 255, 0, 255))  # inside the group: the group's pixels change
    RESULT["group_child_seen_at"] = ticks_until_changed(canvas, values, quiet, layers + 1)
    quiet = canvas.fingerprint(values)
    middle.set_visible(False)
    RESULT["visibility_seen_at"] = ticks_until_changed(canvas, values, quiet, layers + 1)
    quiet = canvas.fingerprint(values)
    paint(source, (50, 20, 3, 3), (9, 9, 9, 255))  # the painter's own stroke
    RESULT["source_seen_at"] = ticks_until_changed(canvas, values, quiet, 1)
    RESULT["reads_after_first"] = canvas.below.reads[1:]
    RESULT["reads_first"] = canvas.below.reads[0]
    # An opaque source hides everything below it: nothing below is read, and a change there is no change.
    paint(source, (0, 0, W, H), (200, 30, 30, 255))
    reads = len(canvas.below.reads)
    quiet = canvas.fingerprint(values)
    paint(background, (10, 10, 6, 6), (0, 0, 0, 255))
    RESULT["hidden_change_seen_at"] = ticks_until_changed(canvas, values, quiet, layers + 1)
    RESULT["reads_while_opaque"] = len(canvas.below.reads) - reads
    image.delete()
    RESULT["done"] = True


try:
    main()
except Exception:
    RESULT["exception"] = traceback.format_exc()
with open(os.path.join(OUT, "result.json"), "w") as f:
    json.dump(RESULT, f)
