"""Read a Krita .kra file from the test process: layer tree, layer pixels, annotations, merged image.

A .kra is a zip: maindoc.xml (layer tree), NAME/layers/layerN (tiled pixel data), NAME/annotations/TYPE,
mergedimage.png. Layer data format (Krita's KisTiledDataManager, version 2): text header lines
(VERSION 2, TILEWIDTH, TILEHEIGHT, PIXELSIZE, DATA n), then per tile "x,y,LZF,size\n" and `size` bytes:
one flag byte (1 = LZF-compressed, 0 = stored) and the tile's bytes "linearized" (all first bytes of
the pixels, then all second bytes, ...). Pixels are B,G,R,A for RGBA 8-bit. Written from that format
so the test checks the saved file independently of Krita.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

NS = "{http://www.calligra.org/DTD/krita}"


@dataclass
class Layer:
    name: str
    nodetype: str
    visible: bool
    uuid: str
    filename: str
    x: int
    y: int
    locked: bool
    children: list[Layer] = field(default_factory=list)  # bottom to top, like Krita's childNodes()


@dataclass
class Kra:
    path: Path
    name: str
    width: int
    height: int
    layers: list[Layer]  # root's children, bottom to top
    annotations: dict[str, bytes]

    def find(self, name: str) -> Layer:
        stack = list(self.layers)
        while stack:
            layer = stack.pop()
            if layer.name == name:
                return layer
            stack.extend(layer.children)
        raise KeyError(f"no layer {name!r} in {self.path}")

    def all_layers(self) -> list[Layer]:
        out, stack = [], list(self.layers)
        while stack:
            layer = stack.pop()
            out.append(layer)
            stack.extend(layer.children)
        return out

    def pixels(self, layer: Layer) -> np.ndarray:
        """The layer as a canvas-sized H x W x 4 array in B,G,R,A order (transparent where no tile)."""
        with zipfile.ZipFile(self.path) as zf:
            data = zf.read(f"{self.name}/layers/{layer.filename}")
        return decode_layer(data, self.width, self.height, layer.x, layer.y)

    def merged(self) -> np.ndarray:
        with zipfile.ZipFile(self.path) as zf:
            return np.asarray(Image.open(io.BytesIO(zf.read("mergedimage.png"))).convert("RGBA"))


def read_kra(path: Path) -> Kra:
    with zipfile.ZipFile(path) as zf:
        root = ET.fromstring(zf.read("maindoc.xml"))
        image = root.find(f"{NS}IMAGE")
        assert image is not None, "maindoc.xml has no IMAGE"
        name = image.get("name", "")
        annotations = {
            n.split("/annotations/", 1)[1]: zf.read(n) for n in zf.namelist() if "/annotations/" in n
        }
    return Kra(
        Path(path),
        name,
        int(image.get("width", 0)),
        int(image.get("height", 0)),
        _layers(image.find(f"{NS}layers")),
        annotations,
    )


def _layers(element: ET.Element | None) -> list[Layer]:
    if element is None:
        return []
    out = []
    for el in element:
        if el.tag not in (f"{NS}layer", f"{NS}mask"):
            continue
        out.append(
            Layer(
                name=el.get("name", ""),
                nodetype=el.get("nodetype", ""),
                visible=el.get("visible") == "1",
                uuid=el.get("uuid", ""),
                filename=el.get("filename", ""),
                x=int(el.get("x", 0)),
                y=int(el.get("y", 0)),
                locked=el.get("locked") == "1",
                children=_layers(el.find(f"{NS}layers")),
            )
        )
    return out[::-1]  # maindoc.xml lists top first


def lzf_decompress(data: bytes, expected: int) -> bytes:
    """liblzf's format: control byte < 32 = literal run of ctrl+1 bytes, else a back reference."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:
            out += data[i : i + ctrl + 1]
            i += ctrl + 1
            continue
        length = ctrl >> 5
        if length == 7:
            length += data[i]
            i += 1
        ref = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
        i += 1
        length += 2
        if ref < 0:
            raise ValueError("corrupt LZF data")
        if ref + length <= len(out):
            out += out[ref : ref + length]
        else:  # overlapping copy: byte by byte
            for k in range(length):
                out.append(out[ref + k])
    if len(out) != expected:
        raise ValueError(f"LZF gave {len(out)} bytes, expected {expected}")
    return bytes(out)


def decode_layer(data: bytes, width: int, height: int, offset_x: int = 0, offset_y: int = 0) -> np.ndarray:
    stream = io.BytesIO(data)
    header: dict[str, str] = {}
    while "DATA" not in header:
        key, _, value = stream.readline().decode("ascii").strip().partition(" ")
        header[key] = value
    if header.get("VERSION") != "2":
        raise ValueError(f"unsupported tile format {header}")
    tw, th, ps = int(header["TILEWIDTH"]), int(header["TILEHEIGHT"]), int(header["PIXELSIZE"])
    canvas = np.zeros((height, width, ps), np.uint8)
    for _ in range(int(header["DATA"])):
        x, y, method, size = stream.readline().decode("ascii").strip().split(",")
        assert method == "LZF", method
        blob = stream.read(int(size))
        raw = lzf_decompress(blob[1:], tw * th * ps) if blob[0] == 1 else blob[1:]
        tile = np.frombuffer(raw, np.uint8).reshape(ps, th, tw).transpose(1, 2, 0)  # de-linearize
        tx, ty = int(x) + offset_x, int(y) + offset_y
        x0, y0, x1, y1 = max(tx, 0), max(ty, 0), min(tx + tw, width), min(ty + th, height)
        if x0 < x1 and y0 < y1:
            canvas[y0:y1, x0:x1] = tile[y0 - ty : y1 - ty, x0 - tx : x1 - tx]
    return canvas
