"""Writing results into Krita: the "Underpaint" group, the live preview layer and the result layers.

Only ever adds nodes (and removes the ones it added itself): existing layers are never touched.

Undo: every Node.addChildNode into the image is one "Add Layer" step of Krita's undo history, and
Krita's Python API cannot bundle several into one (no undo macro). What it can do: a node that is not
in the image yet takes children (Node.setChildNodes) and pixels (setPixelData) without any undo step,
so a new "Underpaint" group is built with its first layers and then inserted as one step. Names,
pixels, visibility and locks of our own new layers are never undo steps.

Krita makes a newly added node the active one; the painter's active layer is restored after each
insertion so their next brush stroke lands where they expect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PyQt5.QtCore import QByteArray, QTimer

from . import qimages
from .modes import ANNOTATION_DESCRIPTION, ANNOTATION_TYPE, GROUP_NAME, PREVIEW_NAME
from .pixels import rgba_to_bgra, set_alpha
from .protocol.regions import Rect, placement
from .records import best_image, merge_records

MASK_TYPES = frozenset({"selectionmask", "transparencymask", "filtermask", "transformmask", "colorizemask"})


def alive(node: Any) -> bool:
    """Still in the document's tree (the painter may have deleted it)?"""
    try:
        return node is not None and node.parentNode() is not None
    except RuntimeError:  # the C++ object is gone
        return False


def layers_of(parent: Any) -> list[Any]:
    """Child layers, without selection/effect masks (doc.setSelection adds a mask node to the root)."""
    return [n for n in parent.childNodes() if n.type() not in MASK_TYPES]


def is_group(node: Any) -> bool:
    return node is not None and node.type() == "grouplayer" and node.name() == GROUP_NAME


@dataclass
class Target:
    """Where results of one job go: the group, and the layer they are stacked above.

    A group this job creates stays out of the image (`parent` set) until its first layer is ready,
    then goes in with that layer as one undo step."""

    doc: Any
    group: Any
    created_group: bool
    restore_active: Any = None
    added: list[Any] = field(default_factory=list)
    parent: Any = None  # where the new group goes; None once the group is in the image
    above: Any = None

    def top(self) -> Any | None:
        children = layers_of(self.group)
        return children[-1] if children else None

    def add_layers(self, names: list[str], fill: Callable[[Any, int], None]) -> list[Any]:
        """New paint layers on top of the group, bottom to top; `fill(node, i)` gives each its pixels
        before it enters the image (no undo step for them)."""
        nodes = []
        for i, name in enumerate(names):
            node = self.doc.createNode(name, "paintlayer")
            fill(node, i)
            nodes.append(node)
        if self.parent is not None:  # a new group: built with its layers, inserted as one step
            self.group.setChildNodes(nodes)
            self.parent.addChildNode(self.group, self.above)
            self.parent = self.above = None
        else:  # an existing group: one "Add Layer" step per layer (Krita's API has no undo macro)
            for node in nodes:
                self.group.addChildNode(node, self.top())
        self.added.extend(nodes)
        self.restore()
        return nodes

    def restore(self) -> None:
        """Give the painter their active layer back, now and after Krita's own (queued) activation."""
        self._restore_if_ours()
        QTimer.singleShot(0, self._restore_if_ours)
        QTimer.singleShot(200, self._restore_if_ours)

    def _restore_if_ours(self) -> None:
        try:
            if not alive(self.restore_active):
                return
            active = self.doc.activeNode()
            # Krita activates a neighbour when it removes a layer: any result in the group counts.
            ours = [self.group, *self.added, *(layers_of(self.group) if alive(self.group) else [])]
            if active is None or any(active == node for node in ours if node is not None):
                self.doc.setActiveNode(self.restore_active)
        except RuntimeError:  # the document was closed meanwhile
            pass

    def discard(self, node: Any | None) -> None:
        """Take our layer `node` out again, and the group if this job made it and nothing else is in
        it: one "Remove Layer" step (the group goes with the layer)."""
        if self.parent is not None:  # the group never entered the image
            return
        if node is not None and alive(node):
            others = [n for n in layers_of(self.group) if n != node]
            if self.created_group and not others and alive(self.group):
                self.group.remove()
            else:
                node.remove()
        elif self.created_group and alive(self.group) and not layers_of(self.group):
            self.group.remove()
        self.restore()


def target_for(doc: Any, anchor: Any | None) -> Target:
    """The "Underpaint" group above the active layer (reused when it is there), or a new one that
    enters the image with the job's first layer."""
    root = doc.rootNode()
    if anchor is None or not alive(anchor):
        anchor = None
    if is_group(anchor):
        return Target(doc, anchor, False, anchor)
    parent = anchor.parentNode() if anchor is not None else root
    if is_group(parent):  # the active layer is a former result
        return Target(doc, parent, False, anchor)
    siblings = layers_of(parent)
    index = next((i for i, n in enumerate(siblings) if anchor is not None and n == anchor), len(siblings) - 1)
    if index + 1 < len(siblings) and is_group(siblings[index + 1]):
        return Target(doc, siblings[index + 1], False, anchor)
    group = doc.createGroupLayer(GROUP_NAME)
    above = anchor if anchor is not None else (siblings[-1] if siblings else None)
    return Target(doc, group, True, anchor, parent=parent, above=above)


class Preview:
    """The locked layer that shows the daemon's per-step previews; it becomes the first result."""

    def __init__(self, target: Target, region: Rect, mask: bytes | None) -> None:
        self.target, self.region, self.mask = target, region, mask
        self.node: Any = None

    def show(self, preview: dict[str, Any]) -> None:
        """Scale the small RGB preview to the region and show it through the selection mask."""
        width, height = int(preview["width"]), int(preview["height"])
        if int(preview.get("channels", 3)) != 3 or len(preview["data"]) != width * height * 3:
            return
        image = qimages.scaled(
            qimages.from_rgb(bytes(preview["data"]), width, height), self.region.width, self.region.height
        )
        pixels = qimages.to_bgra(image)
        if self.mask is not None:
            pixels = set_alpha(pixels, self.mask)
        r = self.region

        def fill(node: Any, _: int) -> None:
            node.setPixelData(pixels, r.x, r.y, r.width, r.height)
            node.setLocked(True)

        if self.node is None or not alive(self.node):
            self.node = self.target.add_layers([PREVIEW_NAME], fill)[0]
        else:
            self.node.setPixelData(pixels, r.x, r.y, r.width, r.height)
        self.target.doc.refreshProjection()

    def take(self) -> Any | None:
        """Hand the preview layer over to become a result layer (cleared and unlocked), if there is one."""
        node, self.node = self.node, None
        if node is None or not alive(node):
            return None
        r = self.region
        node.setPixelData(bytes(r.width * r.height * 4), r.x, r.y, r.width, r.height)
        node.setLocked(False)
        return node

    def remove(self) -> None:
        node, self.node = self.node, None
        self.target.discard(node)
        self.target.doc.refreshProjection()


def patch_pixels(
    image: dict[str, Any], size: tuple[int, int] | None, region: Rect, mask: bytes | None
) -> bytes:
    """B,G,R,A bytes of one result image, fitted to the region when it came from txt2img."""
    width, height = int(image["width"]), int(image["height"])
    pixels = rgba_to_bgra(bytes(image["data"]))
    if size is not None:  # txt2img: working size -> region size, alpha = the selection
        pixels = qimages.to_bgra(
            qimages.scaled(qimages.from_bgra(pixels, width, height), region.width, region.height)
        )
        if mask is not None:
            pixels = set_alpha(pixels, mask)
    return pixels


def insert_results(
    target: Target,
    preview: Preview | None,
    result: dict[str, Any],
    region: Rect,
    mask: bytes | None,
    size: tuple[int, int] | None,
    names: list[str],
) -> list[tuple[Any, Rect]]:
    """One paint layer per variation at region origin + the image's (x, y); the best one visible (a
    ranked job: the highest `score`, else the first), the others hidden. The first takes over the
    preview layer when there is one; the rest go in together."""
    images = result.get("images") or []
    shown = best_image(images)
    rects: list[Rect] = []
    pixels: list[bytes] = []
    for i, image in enumerate(images):
        if int(image.get("channels", 4)) != 4:
            raise ValueError(f"result image {i} has {image.get('channels')} channels, RGBA expected")
        pixels.append(patch_pixels(image, size, region, mask))
        if size is not None:
            rects.append(region)
        else:
            x, y = placement(region, image.get("x", 0), image.get("y", 0))
            rects.append(Rect(x, y, int(image["width"]), int(image["height"])))

    def fill(node: Any, i: int) -> None:
        rect = rects[i]
        node.setName(names[i])
        node.setPixelData(pixels[i], rect.x, rect.y, rect.width, rect.height)
        node.setVisible(i == shown)

    nodes: list[Any] = []
    first = preview.take() if (preview is not None and images) else None
    if first is not None:
        fill(first, 0)
        nodes.append(first)
    rest = list(range(len(nodes), len(images)))
    if rest:
        nodes += target.add_layers([names[i] for i in rest], lambda node, k: fill(node, rest[k]))
    target.doc.refreshProjection()
    return list(zip(nodes, rects, strict=True))


def save_records(doc: Any, records: dict[str, dict[str, Any]]) -> None:
    """Keep generation parameters with the document (saved inside the .kra as an annotation)."""
    existing = bytes(doc.annotation(ANNOTATION_TYPE)) if ANNOTATION_TYPE in doc.annotationTypes() else None
    doc.setAnnotation(ANNOTATION_TYPE, ANNOTATION_DESCRIPTION, QByteArray(merge_records(existing, records)))


def open_upscaled(krita: Any, result: dict[str, Any], title: str, names: list[str]) -> Any:
    """Upscales are bigger than the canvas: they open as a new document (the original stays untouched)."""
    images = result.get("images") or []
    width, height = max(int(i["width"]) for i in images), max(int(i["height"]) for i in images)
    doc = krita.createDocument(width, height, title, "RGBA", "U8", "", 300.0)
    root = doc.rootNode()
    best = best_image(images)
    for i, image in enumerate(images):
        node = doc.createNode(names[i], "paintlayer")
        root.addChildNode(node, layers_of(root)[-1] if layers_of(root) else None)
        node.setPixelData(rgba_to_bgra(bytes(image["data"])), 0, 0, int(image["width"]), int(image["height"]))
        node.setVisible(i == best)
    doc.refreshProjection()
    window = krita.activeWindow()
    if window is not None:
        window.addView(doc)
    return doc
