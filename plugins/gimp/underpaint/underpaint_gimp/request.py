"""Turn a procedure's argument values and the pixels read from GIMP into one protocol `submit`.

Pure Python so every mode's request can be checked against a real daemon outside GIMP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from underpaint_protocol.regions import Rect

from .modes import Mode
from .region import generate_size


class UserError(Exception):
    """Something the user can fix (no selection, empty instruction, daemon down): shown as is."""


@dataclass
class Pixels:
    """The crop read from GIMP: RGBA source, optional 8-bit mask and RGBA control image, same size."""

    region: Rect
    image: bytes | None = None
    mask: bytes | None = None
    control: bytes | None = None


@dataclass
class JobRequest:
    op: str
    model: str | None
    params: dict[str, Any]
    images: dict[str, dict[str, Any]] = field(default_factory=dict)


def raw(width: int, height: int, channels: int, data: bytes) -> dict[str, Any]:
    """A raw image object (PROTOCOL.md section 4); checks the byte count to fail here, not remotely."""
    if len(data) != width * height * channels:
        raise ValueError(f"{len(data)} bytes for a {width}x{height}x{channels} image")
    return {"format": "raw", "width": width, "height": height, "channels": channels, "data": data}


def _common(mode: Mode, values: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {
        "negative_prompt": str(values.get("negative-prompt") or ""),
        "steps": int(values["steps"]),
        "variations": int(values.get("variations") or 1),
    }
    if mode.op != "instruct":
        params["prompt"] = str(values.get("prompt") or "")
    guidance = float(values["guidance"])
    if guidance >= 0:  # Upscale: -1 = the upscaler's own default
        params["guidance_scale"] = guidance
    seed = int(values.get("seed", -1))
    params["seed"] = None if seed < 0 else seed
    return params


def build_request(mode: Mode, values: dict[str, Any], pixels: Pixels) -> JobRequest:
    """The `submit` for `mode` with these argument `values` (keyed by argument name)."""
    params = _common(mode, values)
    region = pixels.region
    images: dict[str, dict[str, Any]] = {}
    if mode.uses_image:
        if pixels.image is None:
            raise ValueError(f"{mode.title} needs the source pixels")
        images["image"] = raw(region.width, region.height, 4, pixels.image)
        if pixels.mask is not None and mode.op != "upscale":
            images["mask"] = raw(region.width, region.height, 1, pixels.mask)
    if mode.needs_selection and "mask" not in images:
        raise UserError(f"{mode.title} needs a selection: select the region to repaint first.")
    if "padding" in values and mode.uses_image and mode.op != "upscale":
        params["padding"] = int(values["padding"])
    if "strength" in values:
        params["strength"] = float(values["strength"])
    if mode.op == "instruct":
        instruction = str(values.get("instruction") or "").strip()
        if not instruction:
            raise UserError("Instruct needs an instruction, e.g. 'make it winter'.")
        params["instruction"] = instruction
        params["image_guidance_scale"] = float(values["image-guidance"])
    elif mode.op == "controlnet":
        controlnet = str(values.get("controlnet") or "").strip()
        if not controlnet:
            raise UserError("ControlNet needs the name of a ControlNet of the preset (e.g. canny).")
        control = pixels.control if pixels.control is not None else pixels.image
        assert control is not None
        images["control"] = raw(region.width, region.height, 4, control)
        params["units"] = [
            {
                "model": controlnet,
                "image": "control",
                "preprocessor": str(values.get("preprocessor") or "none"),
                "scale": float(values["weight"]),
            }
        ]
    elif mode.op == "txt2img":
        params["width"], params["height"] = generate_size(region, int(values["width"]), int(values["height"]))
    elif mode.op == "upscale":
        params["factor"] = int(values.get("factor") or 4)
    model = str(values.get("model") or "").strip() or None
    return JobRequest(mode.op, model, params, images)


def check_against_welcome(request: JobRequest, welcome: dict[str, Any]) -> None:
    """Fail early, with a readable message, on an op or preset this daemon does not offer."""
    ops = welcome.get("ops") or {}
    if request.op not in ops:
        raise UserError(
            f"The Underpaint daemon does not offer '{request.op}' (it offers: {', '.join(sorted(ops))}). "
            "Update the daemon."
        )
    presets = {p.get("name"): p for p in welcome.get("models") or []}
    name = request.model or welcome.get("default_model")
    preset = presets.get(name)
    if presets and preset is None:
        raise UserError(f"No model preset '{name}' on the daemon (it has: {', '.join(sorted(presets))}).")
    if preset is not None and request.op not in (preset.get("ops") or []):
        raise UserError(f"The model preset '{name}' cannot do '{request.op}'; choose another preset.")
