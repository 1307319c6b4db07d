"""Turn a procedure's argument values and the pixels read from GIMP into one protocol `submit`.

Pure Python so every mode's request can be checked against a real daemon outside GIMP.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from typing import Any

from underpaint_protocol.live import merge_live
from underpaint_protocol.regions import Rect

from .loras import LoraError, parse_loras, wire_loras
from .modes import COMPARED, LIVE, MAX_INT, QUALITY, Mode, effective, mode_by_key
from .presets import Catalog, Preset
from .region import generate_size

MAX_ITEMS = 8  # the daemon's limit on `mix` items
# Params the plug-in's own arguments set (listing them as settings to type would only confuse).
_COMMON_HANDLED = (
    "prompt", "negative_prompt", "steps", "guidance_scale", "seed", "variations", "rank", "loras",
)  # fmt: skip


class UserError(Exception):
    """Something the user can fix (no selection, empty instruction, daemon down): shown as is."""


@dataclass
class Pixels:
    """What was read from GIMP for one call, all crops of `region` except the Mix layers."""

    region: Rect
    image: bytes | None = None  # RGBA
    mask: bytes | None = None  # 8-bit selection
    control: bytes | None = None  # RGBA control layer
    depth: bytes | None = None  # 8-bit depth layer
    layers: list[tuple[int, int, bytes]] = field(default_factory=list)  # Mix: (width, height, RGBA)
    sources: dict[str, str] = field(default_factory=dict)  # image slot -> where it came from (a layer)


@dataclass
class JobRequest:
    op: str
    model: str | None
    params: dict[str, Any]
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    not_sent: list[str] = field(default_factory=list)  # params the preset does not take (dropped)
    settings: dict[str, str] = field(default_factory=dict)  # "Family settings", typed by `fit_to_preset`
    sampler: str = QUALITY  # LIVE: `fit_to_preset` merges the preset's `live` map (then QUALITY)
    lane: str | None = None  # latest wins (PROTOCOL.md 9.6): Live mode sends every change in one lane


def raw(width: int, height: int, channels: int, data: bytes) -> dict[str, Any]:
    """A raw image object (PROTOCOL.md section 4); checks the byte count to fail here, not remotely."""
    if len(data) != width * height * channels:
        raise ValueError(f"{len(data)} bytes for a {width}x{height}x{channels} image")
    return {"format": "raw", "width": width, "height": height, "channels": channels, "data": data}


def pick_seed(seed: int, variations: int) -> int:
    """The seed to send: every layer's seed (image *i* gets `seed + i`) must be one a user can type
    back into GIMP's Seed field (at most 2^31 - 1), so a random one is drawn here rather than by the
    daemon (whose seeds go up to 2^32 - 1), and one too close to the top is refused."""
    last = MAX_INT - (variations - 1)
    if seed < 0:
        return random.SystemRandom().randint(0, last)
    if seed > last:
        raise UserError(
            f"Seed {seed} with {variations} variations would give seeds up to {seed + variations - 1}, "
            f"beyond the largest GIMP takes ({MAX_INT}); use a seed of at most {last}, or -1 for a "
            "random one."
        )
    return seed


def _common(mode: Mode, values: dict[str, Any]) -> dict[str, Any]:
    variations = int(values.get("variations") or 1)
    params: dict[str, Any] = {"steps": int(values["steps"]), "variations": variations}
    if mode.op != "variation":
        params["negative_prompt"] = str(values.get("negative-prompt") or "")
    if mode.op not in ("instruct", "variation", "mix"):
        params["prompt"] = str(values.get("prompt") or "")
    guidance = float(values["guidance"])
    if guidance >= 0:  # Upscale: -1 = the upscaler's own default
        params["guidance_scale"] = guidance
    params["seed"] = pick_seed(int(values.get("seed", -1)), variations)
    if values.get("rank") and variations > 1:  # one picture has nothing to be ranked against
        params["rank"] = True
    try:
        loras = wire_loras(parse_loras(str(values.get("loras") or "")))
    except LoraError as exc:
        raise UserError(str(exc)) from None
    if loras:  # none on: no `loras` at all, the preset's untouched base
        params["loras"] = loras
    return params


def build_request(
    mode: Mode, values: dict[str, Any], pixels: Pixels, resolution: int | None = None
) -> JobRequest:
    """The `submit` for `mode` with these argument `values` (keyed by argument name); `resolution`:
    the preset's native size, which Generate and Mix paint at when no size is asked."""
    request = _build(mode, values, pixels, resolution)
    request.settings = parse_settings(str(values.get("family-settings") or ""))
    request.sampler = str(values.get("sampler") or QUALITY)
    return request


def _build(mode: Mode, values: dict[str, Any], pixels: Pixels, resolution: int | None) -> JobRequest:
    if mode.key == "compare":
        return _compare(values, pixels, resolution)
    if mode.key == "mix":
        return _mix(mode, values, pixels, resolution)
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
    if mode.has("strength") and float(values.get("strength") or 0) > 0:  # Compare: 0 = the default
        params["strength"] = float(values["strength"])
    if mode.op == "instruct":
        instruction = str(values.get("instruction") or "").strip()
        if not instruction:
            raise UserError("Instruct needs an instruction, e.g. 'make it winter'.")
        params["instruction"] = instruction
        params["image_guidance_scale"] = float(values["image-guidance"])
    elif mode.op == "controlnet":
        _controlnet(values, pixels, params, images)
    elif mode.op == "txt2img":
        params["width"], params["height"] = generate_size(
            region, int(values.get("width") or 0), int(values.get("height") or 0), resolution
        )
    elif mode.op == "upscale":
        params["factor"] = int(values.get("factor") or 4)
    elif mode.op == "depth" and pixels.depth is not None:
        images["depth"] = raw(region.width, region.height, 1, pixels.depth)
    model = str(values.get("model") or "").strip() or None
    return JobRequest(mode.op, model, params, images)


def _controlnet(values: dict[str, Any], pixels: Pixels, params: dict, images: dict) -> None:
    controlnet = str(values.get("controlnet") or "").strip()
    if not controlnet:
        raise UserError("ControlNet needs the name of a ControlNet of the preset (e.g. canny).")
    control = pixels.control if pixels.control is not None else pixels.image
    assert control is not None
    region = pixels.region
    images["control"] = raw(region.width, region.height, 4, control)
    params["units"] = [
        {
            "model": controlnet,
            "image": "control",
            "preprocessor": str(values.get("preprocessor") or "none"),
            "scale": float(values["weight"]),
        }
    ]


def parse_settings(text: str) -> dict[str, str]:
    """'refine=0.3, stages=2' -> {"refine": "0.3", "stages": "2"} (typed later, from the op spec)."""
    settings: dict[str, str] = {}
    for pair in (p for p in re.split(r"[,;\s]+", text.strip()) if p):
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UserError(f"Family settings are name=value pairs like 'refine=0.3', not '{pair}'.")
        settings[name.strip().replace("-", "_")] = value.strip()
    return settings


def _typed(name: str, text: str, spec: dict[str, Any] | None) -> Any:
    """A setting's text as the param's type (a guess when the daemon did not say)."""
    kind = (spec or {}).get("type")
    if spec is not None and spec.get("nullable") and text.lower() in ("none", "null", "nil"):
        return None
    try:
        if kind == "int" or (kind is None and re.fullmatch(r"-?\d+", text)):
            return int(text)
        if kind == "float" or (kind is None and re.fullmatch(r"-?\d*\.\d+(e-?\d+)?|-?\d+e-?\d+", text)):
            return float(text)
    except ValueError:
        raise UserError(f"Family setting {name} must be a number ({kind}), not '{text}'.") from None
    if kind == "bool":
        if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise UserError(f"Family setting {name} is true or false, not '{text}'.")
        return text.lower() in ("true", "1", "yes", "on")
    if kind not in (None, "str"):
        raise UserError(f"Family setting {name} ({kind}) cannot be given as text; this mode sets it itself.")
    return text


def parse_weights(text: str, count: int) -> list[float]:
    """`count` weights from '1, 0.5 2' (commas or spaces); missing ones are 1."""
    words = [w for w in re.split(r"[,;\s]+", text.strip()) if w]
    try:
        weights = [float(w) for w in words]
    except ValueError:
        raise UserError(f"Mix: the blend weights must be numbers like '1, 0.5, 2', not '{text}'.") from None
    if len(weights) > count:
        raise UserError(
            f"Mix: {len(weights)} blend weights for {count} things to blend (the selected layers, top to "
            "bottom, then the prompt)."
        )
    if any(w < 0 or w > 10 for w in weights):
        raise UserError("Mix: blend weights go from 0 to 10.")
    return weights + [1.0] * (count - len(weights))


def _mix(mode: Mode, values: dict[str, Any], pixels: Pixels, resolution: int | None) -> JobRequest:
    """`mix`: every selected layer is an image item, the prompt (when there is one) the last item."""
    prompt = str(values.get("prompt") or "").strip()
    count = len(pixels.layers) + (1 if prompt else 0)
    if count < 2:
        raise UserError(
            "Mix needs two or more things to blend: select two or more layers (Ctrl+click in the Layers "
            "dialog), or one layer and write a prompt."
        )
    if count > MAX_ITEMS:
        raise UserError(f"Mix blends at most {MAX_ITEMS} things: select fewer layers.")
    weights = parse_weights(str(values.get("weights") or ""), count)
    if not any(w > 0 for w in weights):
        raise UserError("Mix: at least one blend weight must be above 0.")
    images = {f"layer{i + 1}": raw(w, h, 4, data) for i, (w, h, data) in enumerate(pixels.layers)}
    items: list[dict[str, Any]] = [
        {"image": name, "weight": weight} for name, weight in zip(images, weights[: len(images)], strict=True)
    ]
    if prompt:
        items.append({"prompt": prompt, "weight": weights[-1]})
    params = _common(mode, values)
    params["items"] = items
    params["width"], params["height"] = generate_size(
        pixels.region, int(values.get("width") or 0), int(values.get("height") or 0), resolution
    )
    model = str(values.get("model") or "").strip() or None
    return JobRequest("mix", model, params, images)


def _compare(values: dict[str, Any], pixels: Pixels, resolution: int | None) -> JobRequest:
    """`compare`: the base mode's request, run on every listed preset."""
    base = effective(mode_by_key("compare"), values)
    if base.key not in COMPARED:
        raise UserError(f"Compare runs {', '.join(COMPARED)}, not {base.key}.")
    models = [str(m).strip() for m in values.get("models") or [] if str(m).strip()]
    if not models:
        raise UserError("Compare needs the model presets to compare: tick two or more in its dialog.")
    if len(set(models)) != len(models):
        raise UserError("Compare: a model preset is listed twice.")
    inner = build_request(base, {**values, "model": ""}, pixels, resolution)
    return JobRequest("compare", None, {"op": base.op, "models": models, **inner.params}, inner.images)


# -- fitting a request to the preset ---------------------------------------------------------------


def check_against_welcome(request: JobRequest, welcome: dict[str, Any]) -> None:
    """Fail early, with a readable message, on an op or preset this daemon does not offer."""
    ops = welcome.get("ops") or {}
    if request.op not in ops:
        raise UserError(
            f"The Underpaint daemon does not offer '{request.op}' (it offers: {', '.join(sorted(ops))}). "
            "Update the daemon."
        )
    catalog = Catalog.from_welcome(welcome)
    if not catalog.presets:
        return
    if request.op == "compare":
        op = str(request.params.get("op"))
        for name in request.params.get("models") or []:
            _check_preset(catalog, name, op)
        return
    _check_preset(catalog, request.model, request.op)


def _check_preset(catalog: Catalog, name: str | None, op: str) -> None:
    preset = catalog.get(name)
    if preset is None:
        raise UserError(catalog.unknown(str(name or catalog.default)))
    if preset.ops and not preset.runs(op):
        raise UserError(catalog.cannot_run(preset, op, f"'{op}'"))


def fit_to_preset(request: JobRequest, welcome: dict[str, Any]) -> JobRequest:
    """The request with only the params and images the preset's op spec lists (the daemon refuses a
    parameter another family takes); what was left out is kept in `not_sent`.

    Compare sends what any of its presets takes: the daemon reports per preset what it ignored.
    """
    check_against_welcome(request, welcome)
    catalog = Catalog.from_welcome(welcome)
    if request.op != "compare":
        _check_loras(request, catalog.get(request.model))
        request = _with_live(request, catalog.get(request.model))
    if request.op == "compare":
        op = str(request.params["op"])
        chosen = [catalog.get(name) for name in request.params["models"]]
        own = {"op", "models"}
    else:
        op = request.op
        chosen = [catalog.get(request.model)]
        own = set()
    specs = [p.params(op) for p in chosen if p is not None]
    images = [p.images(op) for p in chosen if p is not None]
    if not specs or any(s is None for s in specs):  # the daemon did not say: it has the last word
        settings = {name: _typed(name, text, None) for name, text in request.settings.items()}
        return replace(request, params={**request.params, **settings}, settings={})
    taken = set().union(*specs) | own
    slots = set((welcome.get("ops") or {}).get(op, {}).get("images") or {})
    wanted_images = set().union(*(i or set() for i in images))
    params = {k: v for k, v in request.params.items() if k in taken}
    kept = {k: v for k, v in request.images.items() if k not in slots or k in wanted_images}
    not_sent = sorted(set(request.params) - set(params)) + sorted(set(request.images) - set(kept))
    for name, text in request.settings.items():
        spec = next((p.specs(op)[name] for p in chosen if p is not None and name in p.specs(op)), None)
        if spec is None or name in own:
            who = ", ".join(p.name for p in chosen if p is not None)
            takes = sorted(set().union(*specs) - set(_COMMON_HANDLED))
            raise UserError(
                f"{who} does not take the setting '{name}' for {op}; settings it takes: {', '.join(takes)}."
            )
        params[name] = _typed(name, text, spec)
    return replace(request, params=params, images=kept, not_sent=not_sent, settings={})


def _with_live(request: JobRequest, preset: Preset | None) -> JobRequest:
    """The Live sampler setting: the preset's `live` map over the request's params (its `loras` added
    to the painter's), only the keys this op of the preset takes; done once (then QUALITY)."""
    if request.sampler != LIVE or preset is None:
        return request
    params = merge_live(request.params, preset.live_params(), preset.params(request.op))
    return replace(request, params=params, sampler=QUALITY)


def _check_loras(request: JobRequest, preset: Preset | None) -> None:
    """A LoRA the preset does not list (nor its Live sampler adds) is refused here, naming those it has."""
    wanted = [str(entry.get("name")) for entry in request.params.get("loras") or []]
    if not wanted or preset is None:
        return
    taken = preset.params(request.op)
    if taken is not None and "loras" not in taken:
        raise UserError(f"The preset '{preset.name}' takes no LoRAs for {request.op}; set every LoRA to 0.")
    live = [str(entry.get("name")) for entry in preset.live_params().get("loras") or []]
    unknown = [name for name in wanted if name not in preset.loras and name not in live]
    if unknown and taken is not None:
        has = ", ".join(preset.loras) or "none"
        raise UserError(f"The preset '{preset.name}' has no LoRA '{unknown[0]}' (its LoRAs: {has}).")
