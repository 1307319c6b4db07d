"""The history strip: the document's results as thumbnails (mode, seed, preset under each), newest
first; a click puts that result's parameters and seed back into the form (the docker does that)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PyQt5.QtCore import QSize, Qt, pyqtSignal
from PyQt5.QtGui import QColor, QIcon, QImage, QPixmap
from PyQt5.QtWidgets import QListView, QListWidget, QListWidgetItem

from . import qimages
from .history import Entry

ICON = 48  # px: thumbnails
CELL = QSize(88, ICON + 50)  # icon and three lines of text
ENTRY_ROLE = Qt.UserRole + 1


def thumbnail(node: Any | None) -> QImage | None:
    """The layer's painted part, scaled to fit the strip's icons (None: the layer is gone or empty)."""
    if node is None:
        return None
    x, y, w, h = node.bounds().getRect()
    if w <= 0 or h <= 0:
        return None
    data = bytes(node.pixelData(x, y, w, h))
    if len(data) != w * h * 4:
        return None
    image = qimages.from_bgra(data, w, h)
    return image.scaled(ICON, ICON, Qt.KeepAspectRatio, Qt.SmoothTransformation)


def _placeholder() -> QPixmap:
    pixmap = QPixmap(ICON, ICON)
    pixmap.fill(QColor(90, 90, 90))
    return pixmap


class HistoryStrip(QListWidget):
    """One row of thumbnails; scrolls sideways inside itself, never widens the docker."""

    picked = pyqtSignal(object)  # the Entry clicked

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("underpaint_history")
        self.setViewMode(QListView.IconMode)
        self.setFlow(QListView.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListView.Static)
        self.setIconSize(QSize(ICON, ICON))
        self.setGridSize(CELL)
        self.setUniformItemSizes(True)
        self.setWordWrap(True)
        self.setTextElideMode(Qt.ElideRight)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
        scrollbar = self.horizontalScrollBar().sizeHint().height()
        self.setFixedHeight(CELL.height() + scrollbar + 2 * self.frameWidth() + 2)
        self.setMinimumWidth(CELL.width() + 2 * self.frameWidth())
        self.setToolTip("this document's results, newest first: click one to put its settings and seed back")
        self.itemClicked.connect(lambda item: self.picked.emit(item.data(ENTRY_ROLE)))
        self.entries: list[Entry] = []
        self._icons: dict[str, QIcon] = {}  # by layer uuid: a result's pixels are read once

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name): never ask for more width than one cell
        return QSize(CELL.width() * 2, self.height())

    def show_entries(self, entries: list[Entry], node_of: Callable[[str], Any | None]) -> None:
        """Replace the strip's items; `node_of(uuid)` finds a result's layer (None when deleted)."""
        self.entries = list(entries)
        self.clear()
        for entry in entries:
            node = node_of(entry.uuid)
            icon = self._icons.get(entry.uuid) if node is not None else None
            if icon is None:
                image = thumbnail(node)
                icon = QIcon(QPixmap.fromImage(image) if image is not None else _placeholder())
                if image is not None:
                    self._icons[entry.uuid] = icon
            item = QListWidgetItem(icon, entry.caption())
            tip = entry.tooltip()
            if node is None:
                tip += "\n(its layer is no longer in the document)"
            item.setToolTip(tip)
            item.setData(ENTRY_ROLE, entry)
            item.setTextAlignment(Qt.AlignHCenter | Qt.AlignTop)
            self.addItem(item)
