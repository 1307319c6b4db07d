"""Writing results into Krita: the "Underpaint" group, the live preview layer and the result layers.

Only ever adds nodes (and removes the ones it added itself): existing layers are never touched.
Node.addChildNode goes through Krita's undo stack, so every inserted layer is one undo step.
Krita makes a newly added node the active one; the painter's active layer is restored after each
insertion so their next brush stroke lands where they expect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PyQt5.QtCore import QByteArray, QTimer

from . import qimages
from .modes import ANNOTATION_DESCRIPTION, ANNOTATION_TYPE, GROUP_NAME, PREVIEW_NAME
from .pixels import rgba_to_bgra, set_alpha
from .protocol.regions import Rect, placement
from .records import merge_records

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
    """Where results of one job go: the group, and the layer they are stacked above."""

    doc: Any
    group: Any
    created_group: bool
    restore_active: Any = None
    added: list[Any] = field(default_factory=list)

    def top(self) -> Any | None:
        children = layers_of(self.group)
        return children[-1] if children else None

    def add_layer(self, name: str) -> Any:
        node = self.doc.createNode(name, "paintlayer")
        self.group.addChildNode(node, self.top())
        self.added.append(node)
        self._restore()
        return node

    def _restore(self) -> None:
        """Give the painter their active layer back, now and after Krita's own (queued) activation."""
        self._restore_if_ours()
        QTimer.singleShot(0, self._restore_if_ours)
        QTimer.singleShot(200, self._restore_if_ours)

    def _restore_if_ours(self) -> None:
        try:
            if not alive(self.restore_active):
                return
            active = self.doc.activeNode()
            ours = [self.group, *self.added]
            if active is None or any(active == node for node in ours if node is not None):
                self.doc.setActiveNode(self.restore_active)
        except RuntimeError:  # the document was closed meanwhile
            pass

    def remove_group_if_unused(self) -> None:
        if self.created_group and alive(self.group) and not layers_of(self.group):
            self.group.remove()
            self._restore()


def target_for(doc: Any, anchor: Any | None) -> Target:
    """The "Underpaint" group above the active layer (reused when it is there), created on demand."""
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
    parent.addChildNode(group, anchor if anchor is not None else (siblings[-1] if siblings else None))
    target = Target(doc, group, True, anchor)
    target._restore()
    return target


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
        if self.node is None or not alive(self.node):
            self.node = self.target.add_layer(PREVIEW_NAME)
            self.node.setLocked(True)
        self.node.setPixelData(pixels, self.region.x, self.region.y, self.region.width, self.region.height)
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
        if node is not None and alive(node):
            node.remove()
            self.target._restore()
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
    """One paint layer per variation at region origin + the image's (x, y); first visible, others hidden."""
    placed: list[tuple[Any, Rect]] = []
    for i, image in enumerate(result.get("images") or []):
        if int(image.get("channels", 4)) != 4:
            raise ValueError(f"result image {i} has {image.get('channels')} channels, RGBA expected")
        pixels = patch_pixels(image, size, region, mask)
        if size is not None:
            rect = region
        else:
            x, y = placement(region, image.get("x", 0), image.get("y", 0))
            rect = Rect(x, y, int(image["width"]), int(image["height"]))
        node = preview.take() if (preview is not None and i == 0) else None
        if node is None:
            node = target.add_layer(names[i])
        node.setName(names[i])
        node.setPixelData(pixels, rect.x, rect.y, rect.width, rect.height)
        node.setVisible(i == 0)
        placed.append((node, rect))
    target.doc.refreshProjection()
    return placed


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
    for i, image in enumerate(images):
        node = doc.createNode(names[i], "paintlayer")
        root.addChildNode(node, layers_of(root)[-1] if layers_of(root) else None)
        node.setPixelData(rgba_to_bgra(bytes(image["data"])), 0, 0, int(image["width"]), int(image["height"]))
        node.setVisible(i == 0)
    doc.refreshProjection()
    window = krita.activeWindow()
    if window is not None:
        window.addView(doc)
    return doc
