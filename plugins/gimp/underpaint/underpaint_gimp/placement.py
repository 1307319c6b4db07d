"""What a result becomes in GIMP: one layer per returned image, named, placed and annotated.

Pure Python: `gimp_io` only creates the layers this module describes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from underpaint_protocol.regions import Rect, placement

from .modes import Mode, mode_by_op

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
    fit: Rect | None = None  # cover this rectangle, scaled uniformly and cropped (Generate, Mix)
    visible: bool = True  # a ranked job: only its best picture (the first) is shown


def seconds_text(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds:.2f} s"


def layer_name(mode: Mode, seed: int | None, model: str | None = None) -> str:
    """`Inpaint seed 7 (tiny-sdxl)`: what made it, its seed, and the preset."""
    name = f"{mode.title} seed {seed}" if seed is not None else mode.title
    return f"{name} ({model})" if model else name


def compare_name(base: Mode, seed: int | None, model: str, seconds: float | None) -> str:
    """`tiny-sdxl 0.42 s (Generate seed 7)`: the preset and its time first, as Compare is about them."""
    took = f" {seconds_text(seconds)}" if seconds is not None else ""
    what = f"{base.title} seed {seed}" if seed is not None else base.title
    return f"{model}{took} ({what})"


def parasite_payload(
    mode: Mode,
    result: dict[str, Any],
    image: dict[str, Any],
    region: Rect,
    not_sent: list[str] | tuple[str, ...] = (),
    sources: dict[str, str] | None = None,
) -> bytes:
    """JSON that reproduces the layer: re-submitting op, model, params and the crop gives its pixels
    (`images`: each input image sent and where it came from, e.g. {"depth": "<depth layer's name>"})."""
    payload = {
        "images": dict(sources or {}),
        "mode": mode.key,
        "op": result.get("op", mode.op),
        "model": result.get("model"),
        "seed": image.get("seed", result.get("seed")),
        "params": result.get("params", {}),
        "region": region.as_list(),
        "job": result.get("job"),
        "not_sent": list(not_sent),
    }
    if image.get("score") is not None:  # a ranked job (PROTOCOL.md 8.3): this picture's CLIP score
        payload["score"] = float(image["score"])
    return json.dumps(payload, sort_keys=True, default=str).encode("utf-8")


def _compare_payload(
    summary: dict[str, Any], result: dict[str, Any], image: dict, region: Rect, sources: dict[str, str]
) -> bytes:
    """A Compare layer stores its own preset's run (op, model, params as that preset used them)."""
    params = result.get("params", {})
    payload = {
        "images": sources,
        "mode": "compare",
        "op": params.get("op"),
        "model": summary.get("model"),
        "family": summary.get("family"),
        "seed": image.get("seed", result.get("seed")),
        "params": summary.get("params", {}),
        "ignored": summary.get("ignored", []),
        "seconds": {"load": summary.get("load"), "run": summary.get("run")},
        "compared": params.get("models", []),
        "region": region.as_list(),
        "job": result.get("job"),
    }
    return json.dumps(payload, sort_keys=True, default=str).encode("utf-8")


def _pixels(image: dict[str, Any]) -> tuple[int, int, bytes]:
    width, height = int(image["width"]), int(image["height"])
    channels = int(image.get("channels", 4))
    if image.get("format", "raw") != "raw" or channels != 4:
        raise ValueError(f"expected raw RGBA results, got {image.get('format')} x{channels}")
    data = bytes(image["data"])
    if len(data) != width * height * 4:
        raise ValueError(f"result has {len(data)} bytes for {width}x{height} RGBA")
    return width, height, data


def plan_layers(
    mode: Mode,
    result: dict[str, Any],
    region: Rect,
    fit: bool = False,
    not_sent: list[str] | tuple[str, ...] = (),
    sources: dict[str, str] | None = None,
) -> list[LayerPlan]:
    """Layers for every returned image. Upscale results start at (0, 0) of their new image.

    `fit`: each layer covers `region`, scaled uniformly and cropped (`region.cover`), never stretched
    (Generate/Mix with an automatic size paint at the model's working size, multiples of 8 of at
    least 64 px, in the target's shape as near as those allow).
    """
    compared = {entry.get("model"): entry for entry in result.get("compare") or []}
    base = mode_by_op(str(result["params"]["op"])) if mode.key == "compare" else mode
    plans = []
    ranked = mode.key != "compare" and any(i.get("score") is not None for i in result.get("images") or [])
    for image in result.get("images") or []:
        width, height, data = _pixels(image)
        if mode.new_image:
            x, y = int(image.get("x", 0)), int(image.get("y", 0))
        else:
            x, y = placement(region, image.get("x", 0), image.get("y", 0))
        target = region if fit and (width, height) != (region.width, region.height) else None
        seed = image.get("seed", result.get("seed"))
        if mode.key == "compare":
            model = str(image.get("model") or "")
            summary = compared.get(model, {"model": model})
            name = compare_name(base, seed, model, summary.get("run"))
            parasite = _compare_payload(summary, result, image, region, dict(sources or {}))
        else:
            name = layer_name(mode, seed, result.get("model"))
            if ranked and image.get("score") is not None:  # best first, as the daemon ranked them
                name += f" score {float(image['score']):.2f}"
            parasite = parasite_payload(mode, result, image, region, not_sent, sources)
        visible = not ranked or not plans
        plans.append(LayerPlan(name, x, y, width, height, data, parasite, target, visible))
    return plans
