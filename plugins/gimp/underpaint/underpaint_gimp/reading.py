"""Reading pixels from GIMP: crops through Gegl buffers, as the painter sees them.

Pixels go straight from Gegl buffers to the wire as 8-bit R'G'B'A / Y bytes (no temporary files).
The model sees what the painter sees: a source layer with transparent (or masked) pixels is read
composited over the visible layers below it, in a throwaway duplicate of the image; where nothing is
below either, over white (as GIMP flattens). Control and depth layers count as black where they are
transparent. The user's image is only ever read here.
"""

from __future__ import annotations

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402
from underpaint_protocol.regions import Rect  # noqa: E402

RGBA = "R'G'B'A u8"
GRAY = "Y u8"
RGBA_PREMULTIPLIED = "R'aG'aB'aA u8"  # colour times alpha: composited over black
GRAY_PREMULTIPLIED = "Y'aA u8"


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


def opaque(rgba: bytes) -> bool:
    """Whether every pixel is fully opaque (so no colour hides under alpha)."""
    alpha = rgba[3::4]
    return alpha.count(255) == len(alpha)


def shows_as_is(drawable: Gimp.Drawable) -> bool:
    """A layer whose pixels are what the canvas shows of it (no mask, full opacity)."""
    if not drawable.is_layer():
        return True
    masked = drawable.get_mask() is not None and drawable.get_apply_mask()
    return not masked and drawable.get_opacity() >= 100.0


def read_seen(image: Gimp.Image, drawable: Gimp.Drawable | None, region: Rect) -> bytes:
    """`region` of the layer as the painter sees it (`drawable` None: the whole visible image).

    Opaque pixels are read as they are. Otherwise the layer is composited over the visible layers below
    it, and what is still transparent over white, so a colour hidden under alpha 0 never reaches the
    model; this happens in a duplicate of the image, deleted at once: the user's image is only read.
    """
    if drawable is None:
        layer = Gimp.Layer.new_from_visible(image, image, "underpaint-visible")
        try:
            data = _read(layer, region, RGBA)
        finally:
            layer.delete()
    else:
        data = _read(drawable, region, RGBA)
    if opaque(data) and (drawable is None or shows_as_is(drawable)):
        return data
    return _composited(image, drawable, region)


def _composited(image: Gimp.Image, drawable: Gimp.Drawable | None, region: Rect) -> bytes:
    """`region` of `drawable` over what is below it, over white, flattened in a duplicate image."""
    copy = image.duplicate()
    try:
        copy.undo_disable()
        if copy.get_base_type() == Gimp.ImageBaseType.INDEXED:
            copy.convert_rgb()
        if drawable is not None:
            _keep_below(copy, same_item(copy, image, drawable))
        white = Gimp.Layer.new(
            copy, "underpaint-white", copy.get_width(), copy.get_height(), layer_type(copy), 100.0,
            Gimp.LayerMode.NORMAL,
        )  # fmt: skip
        copy.insert_layer(white, None, len(copy.get_layers()))
        white.fill(Gimp.FillType.WHITE)
        seen = Gimp.Layer.new_from_visible(copy, copy, "underpaint-seen")
        try:
            return _read(seen, region, RGBA)
        finally:
            seen.delete()
    finally:
        copy.delete()


def same_item(copy: Gimp.Image, image: Gimp.Image, item: Gimp.Item) -> Gimp.Item:
    """`item`'s twin in a duplicate of `image` (the same place in the layer tree)."""
    twin = None
    for position in stack_order(image, item):
        siblings = copy.get_layers() if twin is None else twin.get_children()
        twin = siblings[position]
    return twin


def _keep_below(image: Gimp.Image, item: Gimp.Item) -> None:
    """Leave only `item` and what is below it visible: remove the layers above it at every level of
    the tree, and show it and its groups."""
    while item is not None:
        parent = item.get_parent()
        siblings = image.get_layers() if parent is None else parent.get_children()
        for above in siblings[: image.get_item_position(item)]:
            image.remove_layer(above)
        item.set_visible(True)
        item = parent


def read_control(drawable: Gimp.Drawable, region: Rect) -> bytes:
    """A control layer (a sketch, lines): RGBA with its transparent pixels black (no signal)."""
    data = _read(drawable, region, RGBA_PREMULTIPLIED)
    if opaque(data):
        return data
    flat = bytearray(data)
    flat[3::4] = b"\xff" * (len(flat) // 4)
    return bytes(flat)


def read_mask(image: Gimp.Image, region: Rect) -> bytes:
    """The selection as an 8-bit mask (soft edges kept)."""
    return _read(image.get_selection(), region, GRAY)


def read_gray(drawable: Gimp.Drawable, region: Rect) -> bytes:
    """`region` of a layer as 8-bit luminance (a depth map: white = near; transparent = far, black)."""
    return _read(drawable, region, GRAY_PREMULTIPLIED)[0::2]


def read_whole(image: Gimp.Image, drawable: Gimp.Drawable) -> tuple[int, int, bytes]:
    """A layer as a picture of its own (Mix blends layers, not crops), as the painter sees it within
    the canvas: width, height, RGBA."""
    rect = drawable_rect(drawable).intersected(image_rect(image))
    if rect.empty:
        raise ValueError(f"the layer '{drawable.get_name()}' lies outside the canvas")
    return rect.width, rect.height, read_seen(image, drawable, rect)


def stack_order(image: Gimp.Image, item: Gimp.Item) -> tuple[int, ...]:
    """Sort key putting layers in the order the Layers dialog shows them, top to bottom."""
    path = []
    while item is not None:
        path.insert(0, image.get_item_position(item))
        item = item.get_parent()
    return tuple(path)


def layer_type(image: Gimp.Image) -> Gimp.ImageType:
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    return Gimp.ImageType.GRAYA_IMAGE if gray else Gimp.ImageType.RGBA_IMAGE
