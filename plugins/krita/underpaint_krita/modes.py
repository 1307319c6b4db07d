"""What each mode of the docker sends: the op, which form fields apply, and the submit parameters.

Pure Python (no Krita, no Qt), so the mapping from the form to PROTOCOL.md section 8 is unit-tested.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

# Form fields a mode may use (the docker shows only these).
PROMPT, NEGATIVE, INSTRUCTION, STRENGTH, IMAGE_GUIDANCE = (
    "prompt",
    "negative",
    "instruction",
    "strength",
    "igs",
)
CONTROL, FACTOR, REGION = "control", "factor", "region"

GROUP_NAME = "Underpaint"
PREVIEW_NAME = "Underpaint preview"
ANNOTATION_TYPE = "underpaint"
ANNOTATION_DESCRIPTION = "Underpaint generation parameters (JSON, by layer uuid)"


@dataclass(frozen=True)
class Mode:
    """One entry of the Mode combo box."""

    key: str
    label: str
    op: str
    fields: frozenset[str]
    needs_selection: bool = False
    sends_image: bool = True  # the region's pixels go as `image`
    padded: bool = True  # the region is the selection grown by `padding` (ops with a mask)
    default_strength: float | None = None
    hint: str = ""


MODES: tuple[Mode, ...] = (
    Mode(
        "inpaint",
        "Inpaint",
        "inpaint",
        frozenset({PROMPT, NEGATIVE, STRENGTH, REGION}),
        needs_selection=True,
        default_strength=1.0,
        hint="repaint the selection from the prompt",
    ),
    Mode(
        "refine",
        "Refine",
        "sdedit",
        frozenset({PROMPT, NEGATIVE, STRENGTH, REGION}),
        default_strength=0.6,
        hint="re-paint the selection (or canvas) keeping its composition (SDEdit)",
    ),
    Mode(
        "controlnet",
        "ControlNet",
        "controlnet",
        frozenset({PROMPT, NEGATIVE, STRENGTH, CONTROL, REGION}),
        default_strength=0.75,
        hint="repaint guided by other layers (a sketch, the photo's edges, ...)",
    ),
    Mode(
        "instruct",
        "Instruct",
        "instruct",
        frozenset({INSTRUCTION, NEGATIVE, IMAGE_GUIDANCE, REGION}),
        hint="edit by instruction, e.g. 'make it winter' (InstructPix2Pix)",
    ),
    Mode(
        "generate",
        "Generate",
        "txt2img",
        frozenset({PROMPT, NEGATIVE}),
        sends_image=False,
        padded=False,
        hint="paint from nothing into the selection (or canvas)",
    ),
    Mode(
        "upscale",
        "Upscale",
        "upscale",
        frozenset({PROMPT, NEGATIVE, FACTOR}),
        padded=False,
        hint="upscale the selection's bounds (or canvas) into a new document",
    ),
)
MODES_BY_KEY = {mode.key: mode for mode in MODES}


@dataclass
class UnitForm:
    """One ControlNet unit as the painter set it up."""

    enabled: bool = False
    layer_id: str = ""  # Node.uniqueId() as text
    layer_name: str = ""
    preprocessor: str = "none"
    model: str = ""
    weight: float = 1.0
    invert: bool = False  # dark lines on light paper -> white lines on black, as scribble/lineart expect


@dataclass
class FormValues:
    """Everything the docker's form holds, independent of Qt."""

    mode: str = "inpaint"
    prompt: str = ""
    negative_prompt: str = ""
    instruction: str = ""
    strength: float = 1.0
    steps: int = 30
    guidance: float = 7.5
    image_guidance: float = 1.5
    seed: int | None = None  # None = random
    variations: int = 1
    model: str = ""  # "" = the daemon's default preset
    resolution: int = 0  # 0 = the preset's native resolution
    padding: int = 32
    feather: int = 8
    scheduler: str = ""
    factor: int = 4
    source: str = "visible"  # "visible" (projection) or "layer" (active layer)
    units: list[UnitForm] = field(default_factory=list)

    def active_units(self) -> list[UnitForm]:
        return [u for u in self.units if u.enabled and u.layer_id and u.model]


def validate(form: FormValues) -> str | None:
    """A message for the painter if the form cannot make a valid job, else None."""
    mode = MODES_BY_KEY.get(form.mode)
    if mode is None:
        return f"unknown mode {form.mode!r}"
    if mode.key == "instruct" and not form.instruction.strip():
        return "Instruct needs an instruction, e.g. 'make it winter'."
    if mode.key == "controlnet" and not form.active_units():
        return "ControlNet needs at least one enabled unit with a control layer and a model."
    return None


def build_params(form: FormValues, *, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The `params` map of the submit (only what the op accepts; the daemon fills the rest)."""
    mode = MODES_BY_KEY[form.mode]
    params: dict[str, Any] = {
        "steps": int(form.steps),
        "variations": int(form.variations),
        "negative_prompt": form.negative_prompt,
    }
    if mode.op != "upscale":  # the upscalers have their own defaults (7.5 for x4, 0 for x2)
        params["guidance_scale"] = float(form.guidance)
    if form.seed is not None:
        params["seed"] = int(form.seed)
    if form.scheduler:
        params["scheduler"] = form.scheduler
    if PROMPT in mode.fields:
        params["prompt"] = form.prompt
    if INSTRUCTION in mode.fields:
        params["instruction"] = form.instruction
    if IMAGE_GUIDANCE in mode.fields:
        params["image_guidance_scale"] = float(form.image_guidance)
    if STRENGTH in mode.fields:
        params["strength"] = float(form.strength)
    if REGION in mode.fields:
        params["padding"] = int(form.padding)
        params["feather"] = int(form.feather)
        if form.resolution:
            params["resolution"] = int(form.resolution)
    if mode.op == "txt2img":
        assert size is not None, "txt2img needs a working size"
        params["width"], params["height"] = size
    if mode.op == "upscale":
        params["factor"] = int(form.factor)
    if CONTROL in mode.fields:
        params["units"] = [
            {
                "model": u.model,
                "image": f"control{i}",
                "preprocessor": u.preprocessor,
                "scale": float(u.weight),
            }
            for i, u in enumerate(form.active_units())
        ]
    return params


def text_head(form: FormValues, limit: int = 40) -> str:
    """The prompt (or instruction) in a few words, for layer names."""
    mode = MODES_BY_KEY[form.mode]
    text = form.instruction if INSTRUCTION in mode.fields else form.prompt
    words = " ".join(text.split())
    return words if len(words) <= limit else words[: limit - 1].rstrip() + "\u2026"


def layer_name(form: FormValues, seed: int) -> str:
    """e.g. 'Inpaint #1234: a red fox' (mode, seed and prompt head)."""
    head = text_head(form)
    label = MODES_BY_KEY[form.mode].label
    return f"{label} #{seed}: {head}" if head else f"{label} #{seed}"


def generation_record(
    form: FormValues, result: dict[str, Any], image: dict[str, Any], placed_at: tuple[int, int], extra: dict
) -> dict[str, Any]:
    """What is kept with the document so a result layer can be reproduced later."""
    return {
        "mode": form.mode,
        "op": result.get("op"),
        "model": result.get("model"),
        "params": {**(result.get("params") or {}), "seed": image.get("seed", result.get("seed"))},
        "seed": image.get("seed", result.get("seed")),
        "x": placed_at[0],
        "y": placed_at[1],
        "width": image.get("width"),
        "height": image.get("height"),
        "form": asdict(form),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def merge_records(existing: bytes | None, new: dict[str, dict[str, Any]]) -> bytes:
    """Add layer records (uuid -> record) to the document's JSON annotation, keeping the old ones."""
    data: dict[str, Any] = {}
    if existing:
        try:
            data = json.loads(bytes(existing).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            data = {}
    if not isinstance(data, dict) or not isinstance(data.get("layers"), dict):
        data = {"format": "underpaint-krita/1", "layers": {}}
    data["layers"].update(new)
    return json.dumps(data, indent=1, sort_keys=True, default=str).encode("utf-8")
