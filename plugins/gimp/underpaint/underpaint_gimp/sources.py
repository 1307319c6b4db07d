"""What a call reads from GIMP: which layers it may work on, and the pixels of each mode.

A channel or the selection mask as the active item is refused with a message saying to pick a layer; a
layer mask stands for its layer. The pixels are read as the painter sees them (`reading`).
"""

from __future__ import annotations

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp  # noqa: E402

from .modes import SELECTED_LAYERS, Mode  # noqa: E402
from .reading import (  # noqa: E402
    drawable_rect,
    image_rect,
    read_control,
    read_gray,
    read_mask,
    read_seen,
    read_whole,
    selection_rect,
    stack_order,
)
from .region import crop_region, upscale_region  # noqa: E402
from .request import MAX_ITEMS, Pixels, UserError  # noqa: E402


def as_layer(drawable: Gimp.Drawable) -> Gimp.Drawable:
    """Work on a layer mask's layer, never on the mask itself."""
    return Gimp.Layer.from_mask(drawable) if drawable.is_layer_mask() else drawable


def not_a_layer(mode: Mode, drawable: Gimp.Drawable) -> str | None:
    """Why a channel or the selection mask cannot be the source (a layer mask stands for its layer)."""
    if drawable.is_layer_mask() or drawable.is_layer():
        return None
    if drawable.is_selection():
        what = "the selection mask"
    else:
        what = f"the channel '{drawable.get_name()}' (selected in the Channels dialog)"
    return (
        f"Underpaint {mode.title} reads and paints layers, and the active item is {what}. Click a layer "
        "in the Layers dialog (to repaint where a channel is white, use Channel to Selection first), "
        "then run it again."
    )


def check_call(mode: Mode, image: Gimp.Image, drawables: list[Gimp.Drawable]) -> None:
    """What must hold before the dialog opens: a selection where needed, one layer where one is read."""
    if mode.needs_selection and selection_rect(image) is None:
        raise UserError(
            f"{mode.title} needs a selection: select the region to repaint first "
            "(e.g. with the Ellipse Select tool), then run it again."
        )
    if mode.uses_image and len(drawables) != 1:
        raise UserError(f"{mode.title} works on exactly one layer; select one layer.")
    if mode.uses_image and (problem := not_a_layer(mode, drawables[0])):
        raise UserError(problem)
    if mode.source == SELECTED_LAYERS and not any(d.is_layer() or d.is_layer_mask() for d in drawables):
        raise UserError(f"{mode.title} blends the selected layers; select one or more layers.")


def selected_layers(image: Gimp.Image, drawables: list[Gimp.Drawable]) -> list[Gimp.Drawable]:
    """The selected layers (not groups, masks' layers for masks), top to bottom as the Layers dialog
    shows them, whatever order GIMP passed them in."""
    layers: dict[int, Gimp.Drawable] = {}
    for drawable in map(as_layer, drawables):
        if drawable.is_layer() and not drawable.is_group_layer():
            layers.setdefault(drawable.get_id(), drawable)
    return sorted(layers.values(), key=lambda item: stack_order(image, item))


def read_layers(mode: Mode, image: Gimp.Image, layers: list[Gimp.Drawable]) -> Pixels:
    """Mix: every selected layer, whole; the result fills the selection (or the image)."""
    if len(layers) > MAX_ITEMS:
        raise UserError(f"{mode.title} blends at most {MAX_ITEMS} layers: select fewer.")
    pixels = Pixels(selection_rect(image) or image_rect(image))
    for index, layer in enumerate(layers):
        try:
            pixels.layers.append(read_whole(image, layer))
        except ValueError as exc:
            raise UserError(f"{mode.title}: {exc}; move it onto the canvas or leave it out.") from None
        pixels.sources[f"layer{index + 1}"] = layer.get_name()
    return pixels


def read_pixels(mode: Mode, image: Gimp.Image, drawable: Gimp.Drawable | None, values: dict) -> Pixels:
    selection = selection_rect(image)
    whole = image_rect(image)
    if not mode.uses_image:
        return Pixels(selection or whole)
    if drawable is None:
        raise UserError(f"{mode.title} needs an active layer.")
    visible = values.get("source") == "visible"
    extent = None if visible else drawable_rect(drawable)
    if mode.new_image:
        region = upscale_region(whole, selection, extent)
    else:
        region = crop_region(whole, selection, extent, int(values.get("padding") or 0))
    if region.empty:
        raise UserError(f"{mode.title}: the selection and the layer do not overlap the image.")
    pixels = Pixels(region)
    pixels.image = read_seen(image, None if visible else drawable, region)
    pixels.sources["image"] = "the visible image" if visible else drawable.get_name()
    if selection is not None and not mode.new_image:
        pixels.mask = read_mask(image, region)
        pixels.sources["mask"] = "the selection"
    control = values.get("control-layer") if mode.has("control-layer") else None
    if control is not None:
        pixels.control = read_control(control, region)
    pixels.sources["control"] = control.get_name() if control is not None else pixels.sources["image"]
    depth = values.get("depth-layer") if mode.has("depth-layer") else None
    if depth is not None:
        pixels.depth = read_gray(depth, region)
        pixels.sources["depth"] = depth.get_name()
    return pixels
