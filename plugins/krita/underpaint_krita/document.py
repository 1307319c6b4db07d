"""Reading what a job needs from a Krita document: selection mask, region pixels, control layers.

Reads only; nothing here changes the document. Krita's `pixelData` gives B,G,R,A bytes; the wire
wants R,G,B,A (PROTOCOL.md section 4), and only the job's region is read and sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import qimages
from .modes import FormValues, Mode
from .pixels import bgra_to_rgba, has_transparency, mask_bounds
from .protocol.regions import Rect, job_region
from .regions import working_size

MIX_SIDE = 768  # px: longer side of a layer sent to Mix


class InputError(Exception):
    """The document or selection cannot make this job; the message is for the painter."""


@dataclass
class Capture:
    """What was read for one job: the region (canvas px), its mask and the wire images."""

    region: Rect
    mask: bytes | None  # region-sized, one byte per pixel, or None without a selection
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # txt2img working size
    source: str = ""
    source_layers: list[str] = field(default_factory=list)  # control, depth or mixed layers, by name


def document_problem(doc: Any) -> str | None:
    """Underpaint reads and writes RGBA 8-bit pixels: say so for anything else."""
    if doc is None:
        return "Open a document first."
    model, depth = doc.colorModel(), doc.colorDepth()
    if (model, depth) != ("RGBA", "U8"):
        return (
            f"This document is {model} {depth}; Underpaint works on RGBA 8-bit documents. Convert a copy "
            "with Image > Convert Image Color Space (RGB/Alpha, 8-bit integer) and generate there."
        )
    return None


def canvas_rect(doc: Any) -> Rect:
    return Rect(0, 0, int(doc.width()), int(doc.height()))


def read_selection(doc: Any) -> tuple[Rect, bytes] | None:
    """The selection's rough rectangle within the canvas and its 8-bit pixels there (zero outside
    it), or None without a selection."""
    selection = doc.selection()
    if selection is None:
        return None
    rough = Rect(int(selection.x()), int(selection.y()), int(selection.width()), int(selection.height()))
    rough = rough.intersected(canvas_rect(doc))
    if rough.empty:
        return None
    return rough, bytes(selection.pixelData(rough.x, rough.y, rough.width, rough.height))


def selection_bounds(doc: Any, selected: tuple[Rect, bytes] | None | bool = True) -> Rect | None:
    """Exact bounds of the selection's non-zero pixels (soft edges included), or None; `selected`:
    what read_selection already read (True: read it now)."""
    if selected is True:
        selected = read_selection(doc)
    if not selected:
        return None
    rough, data = selected
    exact = mask_bounds(data, rough.width, rough.height)
    return exact.translated(rough.x, rough.y) if exact else None


def read_mask(doc: Any, region: Rect) -> bytes:
    """The selection over `region` as an 8-bit mask (0 keep, 255 repaint, soft edges kept)."""
    data = bytes(doc.selection().pixelData(region.x, region.y, region.width, region.height))
    if len(data) != region.width * region.height:
        raise InputError(
            f"Krita returned {len(data)} selection bytes for a {region.width}x{region.height} region"
        )
    return data


def read_pixels(doc: Any, node: Any | None, region: Rect) -> bytes:
    """B,G,R,A pixels of the projection (node None) or of a layer's projection, flattened on white."""
    x, y, w, h = region.x, region.y, region.width, region.height
    data = bytes(doc.pixelData(x, y, w, h) if node is None else node.projectionPixelData(x, y, w, h))
    if len(data) != w * h * 4:
        raise InputError(f"Krita returned {len(data)} bytes for a {w}x{h} RGBA region")
    return qimages.flatten_on_white(data, w, h) if has_transparency(data) else data


def raw_rgba(bgra: bytes, region: Rect) -> dict[str, Any]:
    return {
        "format": "raw",
        "width": region.width,
        "height": region.height,
        "channels": 4,
        "data": bgra_to_rgba(bgra),
    }


def find_node(doc: Any, unique_id: str) -> Any | None:
    """The node with this uniqueId (text form) anywhere in the layer tree."""
    stack = list(doc.rootNode().childNodes())
    while stack:
        node = stack.pop()
        if node.uniqueId().toString() == unique_id:
            return node
        stack.extend(node.childNodes())
    return None


def capture(doc: Any, form: FormValues, resolution: int) -> Capture:
    """Read the region, mask, image and extra images the job needs (PROTOCOL.md section 7).

    `resolution` is the preset's native size, used for the working size of txt2img and mix.
    Compare reads what its base mode reads.
    """
    problem = document_problem(doc)
    if problem:
        raise InputError(problem)
    mode: Mode = form.run_mode()
    doc.waitForDone()  # pending strokes/filters must land before we read
    canvas = canvas_rect(doc)
    selected = selection_bounds(doc)
    if mode.needs_selection and selected is None:
        raise InputError(
            f"{mode.label} repaints the selection: select a region first (any shape, soft edges ok)."
        )
    region = job_region(selected, canvas, form.padding if mode.padded else 0)
    mask = read_mask(doc, region) if selected is not None and mode.op != "upscale" else None
    result = Capture(region=region, mask=mask)
    if mode.sized:
        result.size = working_size(region.width, region.height, form.resolution or resolution)
    if mode.key == "mix":
        result.images.update(read_mix_layers(doc, form))
        result.source_layers = [layer.name for layer in form.mix_layers]
    if not mode.sends_image:
        return result
    node = None
    if form.source == "layer":
        node = doc.activeNode()
        if node is None:
            raise InputError("No active layer to read; choose 'Visible image' as the source.")
        result.source = f"layer:{node.name()}"
    else:
        result.source = "visible"
    result.images["image"] = raw_rgba(read_pixels(doc, node, region), region)
    if mask is not None:
        result.images["mask"] = gray_image(mask, region)
    if mode.key == "controlnet":
        for i, unit in enumerate(form.active_units()):
            control_node = find_node(doc, unit.layer_id)
            if control_node is None:
                raise InputError(f"ControlNet unit {i + 1}: the layer {unit.layer_name!r} is gone.")
            pixels = read_pixels(doc, control_node, region)
            if unit.invert:
                pixels = qimages.inverted(pixels, region.width, region.height)
            result.images[f"control{i}"] = raw_rgba(pixels, region)
            result.source_layers.append(control_node.name())
    if mode.key == "depth" and form.depth_layer_id:
        depth_node = find_node(doc, form.depth_layer_id)
        if depth_node is None:
            raise InputError(f"Depth: the layer {form.depth_layer_name!r} is gone; pick another one.")
        pixels = read_pixels(doc, depth_node, region)
        result.images["depth"] = gray_image(qimages.to_gray(pixels, region.width, region.height), region)
        result.source_layers.append(depth_node.name())
    return result


def gray_image(data: bytes, region: Rect) -> dict[str, Any]:
    return {"format": "raw", "width": region.width, "height": region.height, "channels": 1, "data": data}


def read_mix_layers(doc: Any, form: FormValues) -> dict[str, dict[str, Any]]:
    """Each layer Mix blends, as a picture of its own content (its bounds on the canvas, flattened
    on white, at most MIX_SIDE px: the daemon only reads its look through a small image encoder)."""
    images: dict[str, dict[str, Any]] = {}
    canvas = canvas_rect(doc)
    for i, layer in enumerate(form.mix_layers):
        node = find_node(doc, layer.layer_id)
        if node is None:
            raise InputError(f"Mix: the layer {layer.name!r} is gone; select the layers again.")
        x, y, w, h = node.bounds().getRect()
        bounds = Rect(int(x), int(y), int(w), int(h)).intersected(canvas)
        if bounds.empty:
            raise InputError(f"Mix: the layer {layer.name!r} is empty inside the canvas.")
        pixels = read_pixels(doc, node, bounds)
        pixels, width, height = qimages.fit_within(pixels, bounds.width, bounds.height, MIX_SIDE)
        images[f"layer{i}"] = raw_rgba(pixels, Rect(0, 0, width, height))
    return images
