"""What a result becomes in GIMP: one layer per returned image, named, placed and annotated.

Pure Python: `gimp_io` only creates the layers this module describes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from underpaint_protocol.regions import Rect, placement

from .modes import Mode

GROUP_NAME = "Underpaint"
PARASITE = "underpaint-params"  # JSON of the generation parameters, on every result layer
GROUP_PARASITE = "underpaint-group"  # marks the layer groups this plug-in created


@dataclass
class LayerPlan:
    """One new layer: its name, where it goes, its RGBA pixels and the parasite to attach."""

    name: str
    x: int
    y: int
    width: int
    height: int
    data: bytes
    parasite: bytes
    fit: Rect | None = None  # scale the layer to this rectangle (Generate into a selection)


def layer_name(mode: Mode, seed: int | None) -> str:
    return f"{mode.title} seed {seed}" if seed is not None else mode.title


def parasite_payload(mode: Mode, result: dict[str, Any], image: dict[str, Any], region: Rect) -> bytes:
    """JSON that reproduces the layer: re-submitting op, model, params and the crop gives its pixels."""
    payload = {
        "mode": mode.key,
        "op": result.get("op", mode.op),
        "model": result.get("model"),
        "seed": image.get("seed", result.get("seed")),
        "params": result.get("params", {}),
        "region": region.as_list(),
        "job": result.get("job"),
    }
    return json.dumps(payload, sort_keys=True, default=str).encode("utf-8")


def plan_layers(mode: Mode, result: dict[str, Any], region: Rect, fit: bool = False) -> list[LayerPlan]:
    """Layers for every returned image. Upscale results start at (0, 0) of their new image.

    `fit`: scale each layer to `region` (Generate with an automatic size: the daemon's sizes are
    multiples of 8, at least 64 px, the selection's need not be).
    """
    plans = []
    for image in result.get("images") or []:
        width, height = int(image["width"]), int(image["height"])
        channels = int(image.get("channels", 4))
        if image.get("format", "raw") != "raw" or channels != 4:
            raise ValueError(f"expected raw RGBA results, got {image.get('format')} x{channels}")
        data = bytes(image["data"])
        if len(data) != width * height * 4:
            raise ValueError(f"result has {len(data)} bytes for {width}x{height} RGBA")
        if mode.new_image:
            x, y = int(image.get("x", 0)), int(image.get("y", 0))
        else:
            x, y = placement(region, image.get("x", 0), image.get("y", 0))
        target = region if fit and (width, height) != (region.width, region.height) else None
        seed = image.get("seed", result.get("seed"))
        plans.append(
            LayerPlan(
                layer_name(mode, seed),
                x,
                y,
                width,
                height,
                data,
                parasite_payload(mode, result, image, region),
                target,
            )
        )
    return plans
