"""GIMP side of the results: add the result layers, make new images, drive the progress bar.

Result pixels go straight from the wire into Gegl buffers as 8-bit R'G'B'A bytes. Results are only
ever added: new layers inside an "Underpaint" layer group, in one undo group; no existing layer is
touched (an indexed image gets them in an RGB copy).
"""

from __future__ import annotations

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402
from underpaint_protocol.regions import Rect  # noqa: E402

from .pending import mask_over  # noqa: E402
from .placement import GROUP_NAME, GROUP_PARASITE, PARASITE, LayerPlan  # noqa: E402
from .reading import GRAY, RGBA, drawable_rect, layer_type, same_item  # noqa: E402
from .region import cover  # noqa: E402

Mask = tuple[Rect, bytes]  # an 8-bit selection over a rectangle of the image


def _parasite(name: str, data: bytes) -> Gimp.Parasite:
    return Gimp.Parasite.new(name, Gimp.PARASITE_PERSISTENT | Gimp.PARASITE_UNDOABLE, list(data))


def _is_our_group(item: Gimp.Item | None) -> bool:
    return item is not None and item.is_group_layer() and item.get_parasite(GROUP_PARASITE) is not None


def _target_group(image: Gimp.Image, anchor: Gimp.Item | None) -> tuple[Gimp.Layer, int]:
    """Where results go: on top of our group, newest first. The group is the active layer itself, the
    one holding it, or the one a previous run put just above it; else a new one above the active layer
    (at the top of the image when there is none)."""
    if anchor is not None and _is_our_group(anchor):
        return anchor, 0
    if anchor is not None and _is_our_group(anchor.get_parent()):
        return anchor.get_parent(), 0
    if anchor is not None:
        parent = anchor.get_parent()
        siblings = image.get_layers() if parent is None else parent.get_children()
        position = image.get_item_position(anchor)
        if position > 0 and _is_our_group(siblings[position - 1]):
            return siblings[position - 1], 0
    elif image.get_layers() and _is_our_group(image.get_layers()[0]):
        return image.get_layers()[0], 0
    group = Gimp.GroupLayer.new(image, GROUP_NAME)
    if anchor is not None and anchor.is_layer():
        image.insert_layer(group, anchor.get_parent(), image.get_item_position(anchor))
    else:
        image.insert_layer(group, None, 0)
    group.attach_parasite(_parasite(GROUP_PARASITE, b"1"))
    return group, 0


def _new_layer(image: Gimp.Image, plan: LayerPlan) -> Gimp.Layer:
    layer = Gimp.Layer.new(
        image, plan.name, plan.width, plan.height, layer_type(image), 100.0, Gimp.LayerMode.NORMAL
    )
    return layer


def _fill(layer: Gimp.Layer, plan: LayerPlan) -> None:
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, plan.width, plan.height), RGBA, plan.data)
    buffer.flush()
    layer.update(0, 0, plan.width, plan.height)


def add_result_layers(
    image: Gimp.Image, anchor: Gimp.Item | None, plans: list[LayerPlan], mask: Mask | None = None
) -> list[Gimp.Layer]:
    """Insert one layer per plan, first plan on top, in one undo step; return them top to bottom.
    `mask`: the selection the job was sent with, as each layer's layer mask (a picture filling it)."""
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
                _cover(layer, plan)
            if mask is not None:
                _mask_with(layer, *mask)
            layer.attach_parasite(_parasite(PARASITE, plan.parasite))
            layer.set_visible(plan.visible)
            layers.insert(0, layer)
    finally:
        image.undo_group_end()
    return layers


def add_layer_above(image: Gimp.Image, source: Gimp.Layer, plan: LayerPlan) -> Gimp.Layer:
    """One result layer right above `source`, in one undo step, masked like it (Reword: the edit
    stacks on the picture it edits)."""
    image.undo_group_start()
    try:
        layer = _new_layer(image, plan)
        image.insert_layer(layer, source.get_parent(), image.get_item_position(source))
        layer.set_offsets(plan.x, plan.y)
        _fill(layer, plan)
        if plan.fit is not None:
            _cover(layer, plan)
        mask = source.get_mask()
        if mask is not None:
            rect = drawable_rect(source)
            whole = Gegl.Rectangle.new(0, 0, rect.width, rect.height)  # mask pixels are the layer's
            _mask_with(layer, rect, bytes(mask.get_buffer().get(whole, 1.0, GRAY, Gegl.AbyssPolicy.NONE)))
        layer.attach_parasite(_parasite(PARASITE, plan.parasite))
    finally:
        image.undo_group_end()
    return layer


def _mask_with(layer: Gimp.Layer, region: Rect, selection: bytes) -> None:
    """A layer mask holding the selection as it was when the job was sent (the one shown now may
    differ: the painter went on working, or the result is placed after a restart)."""
    rect = drawable_rect(layer)
    layer_mask = layer.create_mask(Gimp.AddMaskType.WHITE)
    layer.add_mask(layer_mask)
    buffer = layer_mask.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, rect.width, rect.height), GRAY, mask_over(selection, region, rect))
    buffer.flush()
    layer_mask.update(0, 0, rect.width, rect.height)


def _cover(layer: Gimp.Layer, plan: LayerPlan) -> None:
    """Scale the layer uniformly to cover `plan.fit` and crop it to exactly that (never stretch)."""
    assert plan.fit is not None
    width, height, left, top = cover(plan.width, plan.height, plan.fit)
    if (width, height) != (plan.width, plan.height):
        layer.scale(width, height, False)
    if (left, top) != (0, 0) or (width, height) != (plan.fit.width, plan.fit.height):
        layer.resize(plan.fit.width, plan.fit.height, -left, -top)
    layer.set_offsets(plan.fit.x, plan.fit.y)


def rgb_copy(image: Gimp.Image) -> Gimp.Image:
    """An RGB duplicate of an indexed image to hold the results (the indexed image is left as it is:
    a palette cannot hold a model's colours)."""
    copy = image.duplicate()
    copy.undo_disable()
    copy.convert_rgb()
    copy.undo_enable()
    return copy


def twin_of(copy: Gimp.Image, image: Gimp.Image, item: Gimp.Item | None) -> Gimp.Item | None:
    """The layer of a duplicate at the place `item` has in `image` (None stays None)."""
    return None if item is None else same_item(copy, image, item)


def new_image_with(base: Gimp.Image, plans: list[LayerPlan]) -> Gimp.Image:
    """Upscale: a new image holding the results, the source image untouched (RGB for an indexed one)."""
    width = max(p.x + p.width for p in plans)
    height = max(p.y + p.height for p in plans)
    gray = base.get_base_type() == Gimp.ImageBaseType.GRAY
    image = Gimp.Image.new(width, height, Gimp.ImageBaseType.GRAY if gray else Gimp.ImageBaseType.RGB)
    image.undo_disable()
    for plan in reversed(plans):
        layer = _new_layer(image, plan)
        image.insert_layer(layer, None, 0)
        layer.set_offsets(plan.x, plan.y)
        _fill(layer, plan)
        layer.attach_parasite(_parasite(PARASITE, plan.parasite))
        layer.set_visible(plan.visible)
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
