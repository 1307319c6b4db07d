"""GIMP side of the pixels: read crops through Gegl buffers, add result layers, drive the progress bar.

Pixels go straight between Gegl buffers and the wire as 8-bit R'G'B'A / Y bytes (no temporary files).
Results are only ever added: new layers inside an "Underpaint" layer group, in one undo group; no
existing layer is touched.
"""

from __future__ import annotations

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402
from underpaint_protocol.regions import Rect  # noqa: E402

from .placement import GROUP_NAME, GROUP_PARASITE, PARASITE, LayerPlan  # noqa: E402

RGBA = "R'G'B'A u8"
GRAY = "Y u8"


def image_rect(image: Gimp.Image) -> Rect:
    return Rect(0, 0, image.get_width(), image.get_height())


def drawable_rect(drawable: Gimp.Drawable) -> Rect:
    _, x, y = drawable.get_offsets()
    return Rect(x, y, drawable.get_width(), drawable.get_height())


def selection_rect(image: Gimp.Image) -> Rect | None:
    """The selection's bounding box, or None when nothing is selected."""
    bounds = Gimp.Selection.bounds(image)
    if not bounds.non_empty:
        return None
    rect = Rect.from_corners(bounds.x1, bounds.y1, bounds.x2, bounds.y2)
    return None if rect.empty else rect


def _read(drawable: Gimp.Drawable, region: Rect, fmt: str) -> bytes:
    """`region` (image coordinates) of `drawable`; outside the drawable reads as transparent/zero."""
    offset = drawable_rect(drawable)
    local = region.translated(-offset.x, -offset.y)
    rect = Gegl.Rectangle.new(local.x, local.y, local.width, local.height)
    data = drawable.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.NONE)
    return bytes(data)


def read_rgba(drawable: Gimp.Drawable, region: Rect) -> bytes:
    return _read(drawable, region, RGBA)


def read_visible(image: Gimp.Image, region: Rect) -> bytes:
    """The visible composite, through a layer made from it that never enters the image."""
    layer = Gimp.Layer.new_from_visible(image, image, "underpaint-visible")
    try:
        return _read(layer, region, RGBA)
    finally:
        layer.delete()


def read_mask(image: Gimp.Image, region: Rect) -> bytes:
    """The selection as an 8-bit mask (soft edges kept)."""
    return _read(image.get_selection(), region, GRAY)


def read_gray(drawable: Gimp.Drawable, region: Rect) -> bytes:
    """`region` of a layer as 8-bit luminance (a depth map: white = near)."""
    return _read(drawable, region, GRAY)


def read_whole(drawable: Gimp.Drawable) -> tuple[int, int, bytes]:
    """A whole layer as a picture of its own (Mix blends layers, not crops): width, height, RGBA."""
    rect = drawable_rect(drawable)
    return rect.width, rect.height, _read(drawable, rect, RGBA)


def stack_order(image: Gimp.Image, item: Gimp.Item) -> tuple[int, ...]:
    """Sort key putting layers in the order the Layers dialog shows them, top to bottom."""
    path = []
    while item is not None:
        path.insert(0, image.get_item_position(item))
        item = item.get_parent()
    return tuple(path)


def _parasite(name: str, data: bytes) -> Gimp.Parasite:
    return Gimp.Parasite.new(name, Gimp.PARASITE_PERSISTENT | Gimp.PARASITE_UNDOABLE, list(data))


def _is_our_group(item: Gimp.Item | None) -> bool:
    return item is not None and item.is_group_layer() and item.get_parasite(GROUP_PARASITE) is not None


def _target_group(image: Gimp.Image, anchor: Gimp.Item | None) -> tuple[Gimp.Layer, int]:
    """Where results go: into our group above the active layer (creating the group if needed)."""
    if anchor is not None and _is_our_group(anchor):
        return anchor, 0
    if anchor is not None and _is_our_group(anchor.get_parent()):
        return anchor.get_parent(), image.get_item_position(anchor)
    group = Gimp.GroupLayer.new(image, GROUP_NAME)
    if anchor is not None and anchor.is_layer():
        image.insert_layer(group, anchor.get_parent(), image.get_item_position(anchor))
    else:
        image.insert_layer(group, None, 0)
    group.attach_parasite(_parasite(GROUP_PARASITE, b"1"))
    return group, 0


def _layer_type(image: Gimp.Image) -> Gimp.ImageType:
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    return Gimp.ImageType.GRAYA_IMAGE if gray else Gimp.ImageType.RGBA_IMAGE


def _new_layer(image: Gimp.Image, plan: LayerPlan) -> Gimp.Layer:
    layer = Gimp.Layer.new(
        image, plan.name, plan.width, plan.height, _layer_type(image), 100.0, Gimp.LayerMode.NORMAL
    )
    return layer


def _fill(layer: Gimp.Layer, plan: LayerPlan) -> None:
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, plan.width, plan.height), RGBA, plan.data)
    buffer.flush()
    layer.update(0, 0, plan.width, plan.height)


def add_result_layers(
    image: Gimp.Image, anchor: Gimp.Item | None, plans: list[LayerPlan], mask_with_selection: bool = False
) -> list[Gimp.Layer]:
    """Insert one layer per plan, first plan on top, in one undo step; return them top to bottom."""
    layers = []
    image.undo_group_start()
    try:
        parent, position = _target_group(image, anchor)
        for plan in reversed(plans):
            layer = _new_layer(image, plan)
            image.insert_layer(layer, parent, position)
            layer.set_offsets(plan.x, plan.y)
            _fill(layer, plan)
            if plan.fit is not None:
                layer.scale(plan.fit.width, plan.fit.height, False)
                layer.set_offsets(plan.fit.x, plan.fit.y)
            if mask_with_selection:
                layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION))
            layer.attach_parasite(_parasite(PARASITE, plan.parasite))
            layers.insert(0, layer)
    finally:
        image.undo_group_end()
    return layers


def new_image_with(base: Gimp.Image, plans: list[LayerPlan]) -> Gimp.Image:
    """Upscale: a new image holding the results, the source image untouched."""
    width = max(p.x + p.width for p in plans)
    height = max(p.y + p.height for p in plans)
    image = Gimp.Image.new(width, height, base.get_base_type())
    image.undo_disable()
    for plan in reversed(plans):
        layer = _new_layer(image, plan)
        image.insert_layer(layer, None, 0)
        layer.set_offsets(plan.x, plan.y)
        _fill(layer, plan)
        layer.attach_parasite(_parasite(PARASITE, plan.parasite))
    image.undo_enable()
    return image


class GimpProgress:
    """Maps the job's (fraction, text) reports onto GIMP's progress bar."""

    def __init__(self, text: str) -> None:
        Gimp.progress_init(text)
        self._text = text

    def __call__(self, fraction: float | None, text: str) -> None:
        if text != self._text:
            Gimp.progress_set_text(text)
            self._text = text
        if fraction is None:
            Gimp.progress_pulse()
        else:
            Gimp.progress_update(fraction)

    def end(self) -> None:
        Gimp.progress_end()
