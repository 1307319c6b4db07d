"""Pixel work that would be slow in pure Python (scaling, compositing, inverting), done by QImage.

Krita's B,G,R,A bytes are exactly QImage.Format_ARGB32's memory layout on little-endian machines
(every platform Krita ships for), so no per-pixel Python loop is needed anywhere.
"""

from __future__ import annotations

from PyQt5.QtCore import Qt
from PyQt5.QtGui import QColor, QImage, QPainter


def from_bgra(data: bytes, width: int, height: int) -> QImage:
    """A QImage owning a copy of Krita-order pixels."""
    return QImage(data, width, height, 4 * width, QImage.Format_ARGB32).copy()


def from_rgb(data: bytes, width: int, height: int) -> QImage:
    """A QImage from raw R,G,B rows (the daemon's previews)."""
    return QImage(data, width, height, 3 * width, QImage.Format_RGB888).copy()


def to_bgra(image: QImage) -> bytes:
    """Krita-order bytes of any QImage (32-bit rows have no padding)."""
    image = image.convertToFormat(QImage.Format_ARGB32)
    bits = image.constBits()
    bits.setsize(image.sizeInBytes())
    return bytes(bits)


def flatten_on_white(data: bytes, width: int, height: int) -> bytes:
    """Composite B,G,R,A pixels over white: the daemon ignores alpha, so transparent must look like paper."""
    canvas = QImage(width, height, QImage.Format_ARGB32)
    canvas.fill(QColor(255, 255, 255, 255))
    painter = QPainter(canvas)
    painter.drawImage(0, 0, from_bgra(data, width, height))
    painter.end()
    return to_bgra(canvas)


def inverted(data: bytes, width: int, height: int) -> bytes:
    """Invert colours (not alpha): dark strokes on paper -> white strokes on black, as control maps are."""
    image = from_bgra(data, width, height)
    image.invertPixels(QImage.InvertRgb)
    return to_bgra(image)


def scaled(image: QImage, width: int, height: int) -> QImage:
    if image.width() == width and image.height() == height:
        return image
    return image.scaled(width, height, Qt.IgnoreAspectRatio, Qt.SmoothTransformation)


def to_gray(data: bytes, width: int, height: int) -> bytes:
    """One byte per pixel (luminance) of B,G,R,A pixels: a depth layer as the wire's 8-bit depth map."""
    image = from_bgra(data, width, height).convertToFormat(QImage.Format_Grayscale8)
    row = image.bytesPerLine()
    bits = image.constBits()
    bits.setsize(image.sizeInBytes())
    raw = bytes(bits)
    if row == width:
        return raw
    return b"".join(raw[y * row : y * row + width] for y in range(height))  # rows are 4-byte aligned


def fit_within(data: bytes, width: int, height: int, longest: int) -> tuple[bytes, int, int]:
    """B,G,R,A pixels scaled down (aspect kept) so the longer side is at most `longest`."""
    if max(width, height) <= longest:
        return data, width, height
    scale = longest / max(width, height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return to_bgra(scaled(from_bgra(data, width, height), w, h)), w, h
