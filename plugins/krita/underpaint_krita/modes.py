"""What each mode of the docker sends: the op, which form fields apply, and the submit parameters.

Pure Python (no Krita, no Qt), so the mapping from the form to PROTOCOL.md section 8 is unit-tested;
what is kept of a result (layer names, stored records) is in `records.py`.
The preset's op spec (from the daemon's welcome) decides which of a mode's fields are shown and sent:
a parameter the preset does not take is never sent, since the daemon refuses it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from .protocol.live import merge_live

# Form fields a mode may use (the docker shows only these, and only when the preset takes them).
PROMPT, NEGATIVE, INSTRUCTION, STRENGTH, IMAGE_GUIDANCE = (
    "prompt",
    "negative",
    "instruction",
    "strength",
    "igs",
)
CONTROL, FACTOR, SOURCE, DEPTH, MIX = "control", "factor", "source", "depth", "mix"
STEPS, GUIDANCE, SEED, VARIATIONS, SCHEDULER = "steps", "guidance", "seed", "variations", "scheduler"
RESOLUTION, PADDING, FEATHER = "resolution", "padding", "feather"
RANK = "rank"  # best picture first, each with its CLIP score (presets whose op spec lists `rank`)
LORAS = "loras"  # the preset's LoRAs with a weight each (presets whose op spec lists `loras`)

COMMON = frozenset({STEPS, GUIDANCE, SEED, VARIATIONS, SCHEDULER, RANK, LORAS})
REGION = frozenset({SOURCE, RESOLUTION, PADDING, FEATHER})  # ops that read the selection's pixels

#: The op parameter (or image slot, as "images.NAME") behind each field: shown only if the spec has it.
FIELD_PARAMS: dict[str, str] = {
    PROMPT: "prompt",
    NEGATIVE: "negative_prompt",
    INSTRUCTION: "instruction",
    STRENGTH: "strength",
    IMAGE_GUIDANCE: "image_guidance_scale",
    CONTROL: "units",
    FACTOR: "factor",
    SOURCE: "images.image",
    DEPTH: "images.depth",
    MIX: "items",
    STEPS: "steps",
    GUIDANCE: "guidance_scale",
    SEED: "seed",
    VARIATIONS: "variations",
    RANK: "rank",
    LORAS: "loras",
    SCHEDULER: "scheduler",
    RESOLUTION: "resolution",
    PADDING: "padding",
    FEATHER: "feather",
}
#: Parameters the form itself fills in; any other parameter of a spec is an "extra" (model options).
FORM_PARAMS = frozenset(
    {p for p in FIELD_PARAMS.values() if not p.startswith("images.")}
    | {"width", "height", "output_format", "op", "models"}
)

GROUP_NAME = "Underpaint"
PREVIEW_NAME = "Underpaint preview"
ANNOTATION_TYPE = "underpaint"
ANNOTATION_DESCRIPTION = "Underpaint generation parameters (JSON, by layer uuid)"
MAX_MIX_ITEMS = 8
MAX_COMPARED = 8


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
    sized: bool = False  # the result is made at a working size and fitted to the region (txt2img, mix)
    default_strength: float | None = None
    hint: str = ""


MODES: tuple[Mode, ...] = (
    Mode(
        "inpaint",
        "Inpaint",
        "inpaint",
        COMMON | REGION | {PROMPT, NEGATIVE, STRENGTH},
        needs_selection=True,
        default_strength=1.0,
        hint="repaint the selection from the prompt",
    ),
    Mode(
        "refine",
        "Refine",
        "sdedit",
        COMMON | REGION | {PROMPT, NEGATIVE, STRENGTH},
        default_strength=0.6,
        hint="re-paint the selection (or canvas) keeping its composition (SDEdit)",
    ),
    Mode(
        "variation",
        "Variation",
        "variation",
        COMMON | REGION,
        hint="new pictures like the selection (or canvas), no prompt needed",
    ),
    Mode(
        "depth",
        "Depth",
        "depth",
        COMMON | REGION | {PROMPT, NEGATIVE, STRENGTH, DEPTH},
        default_strength=0.8,
        hint="re-paint keeping the picture's depth (estimated, or from a depth layer: white = near)",
    ),
    Mode(
        "controlnet",
        "ControlNet",
        "controlnet",
        COMMON | REGION | {PROMPT, NEGATIVE, STRENGTH, CONTROL},
        default_strength=0.75,
        hint="repaint guided by other layers (a sketch, the photo's edges, ...)",
    ),
    Mode(
        "instruct",
        "Instruct",
        "instruct",
        COMMON | REGION | {INSTRUCTION, NEGATIVE, IMAGE_GUIDANCE},
        hint="edit by instruction, e.g. 'make it winter' (InstructPix2Pix)",
    ),
    Mode(
        "generate",
        "Generate",
        "txt2img",
        COMMON | {PROMPT, NEGATIVE, RESOLUTION},
        sends_image=False,
        padded=False,
        sized=True,
        hint="paint from nothing into the selection (or canvas)",
    ),
    Mode(
        "mix",
        "Mix",
        "mix",
        COMMON | {PROMPT, NEGATIVE, MIX, RESOLUTION},
        sends_image=False,
        padded=False,
        sized=True,
        hint="blend the layers selected in the Layers docker and the prompt, each with a weight",
    ),
    Mode(
        "upscale",
        "Upscale",
        "upscale",
        frozenset({STEPS, SEED, VARIATIONS, SCHEDULER, PROMPT, NEGATIVE, FACTOR}),
        padded=False,
        hint="upscale the selection's bounds (or canvas) into a new document",
    ),
    Mode(
        "compare",
        "Compare",
        "compare",
        frozenset(),
        hint="run one mode on several models in one job: one layer per model",
    ),
)
MODES_BY_KEY = {mode.key: mode for mode in MODES}
#: The "Speed" setting: "auto" uses the preset's live sampler setting for Live jobs only, "live" for
#: every job, "quality" never (the form's own steps, guidance and sampler).
SPEEDS = ("auto", "quality", "live")
LIVE_DELAY_MS = 300  # default wait of Live mode between a canvas change and its job

#: Modes Compare can run on several presets (not ControlNet: its models differ per preset; not
#: Upscale: it opens documents; not Mix: only one family mixes).
COMPARABLE = ("generate", "refine", "inpaint", "variation", "depth", "instruct")


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
class MixLayer:
    """One selected layer blended by Mix, with its weight."""

    layer_id: str
    name: str
    weight: float = 1.0


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
    rank: bool = False  # Rank by CLIP: sent only where the op spec takes `rank`
    model: str = ""  # "" = the daemon's default preset
    resolution: int = 0  # 0 = the preset's native resolution
    padding: int = 32
    feather: int = 8
    scheduler: str = ""
    factor: int = 4
    source: str = "visible"  # "visible" (projection) or "layer" (active layer)
    units: list[UnitForm] = field(default_factory=list)
    depth_layer_id: str = ""  # "" = the model estimates the depth
    depth_layer_name: str = ""
    mix_layers: list[MixLayer] = field(default_factory=list)
    prompt_weight: float = 1.0  # Mix: the prompt's weight (an item only when the prompt is not empty)
    compare_mode: str = "generate"  # Compare: the mode every ticked preset runs
    compare_models: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)  # the preset's own options (param -> value)
    loras: list[dict[str, Any]] = field(default_factory=list)  # the ticked LoRAs: [{name, weight}]
    speed: str = "auto"  # one of SPEEDS: when the preset's `live` sampler setting applies
    live_delay: int = LIVE_DELAY_MS  # ms: Live mode's debounce

    def active_units(self) -> list[UnitForm]:
        return [u for u in self.units if u.enabled and u.layer_id and u.model]

    def run_mode(self) -> Mode:
        """The mode whose fields and images the job uses (Compare's base mode for Compare)."""
        return MODES_BY_KEY[self.compare_mode if self.mode == "compare" else self.mode]

    def mix_item_count(self) -> int:
        return len(self.mix_layers) + (1 if self.prompt.strip() else 0)


def form_values(data: dict[str, Any]) -> FormValues:
    """FormValues from their dict form (a stored record's `form`, the saved settings); unknown keys
    are ignored and missing ones take the defaults, so older and newer plugins read each other."""
    known = set(FormValues.__dataclass_fields__)
    values = {k: v for k, v in data.items() if k in known and k not in ("units", "mix_layers")}
    form = FormValues(**values)
    unit_keys, mix_keys = set(UnitForm.__dataclass_fields__), set(MixLayer.__dataclass_fields__)
    form.units = [
        UnitForm(**{k: v for k, v in u.items() if k in unit_keys})
        for u in data.get("units") or []
        if isinstance(u, dict)
    ]
    form.mix_layers = [
        MixLayer(**{k: v for k, v in m.items() if k in mix_keys})
        for m in data.get("mix_layers") or []
        if isinstance(m, dict) and "layer_id" in m and "name" in m
    ]
    if form.mode not in MODES_BY_KEY:
        form.mode = "inpaint"
    if not isinstance(form.extras, dict):
        form.extras = {}
    form.loras = clean_loras(form.loras)
    if form.speed not in SPEEDS:
        form.speed = "auto"
    return form


def clean_loras(value: Any) -> list[dict[str, Any]]:
    """`[{name, weight}]` as stored or saved: malformed entries are dropped, weights clamped to −2 … 2."""
    out: list[dict[str, Any]] = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]:
            try:
                weight = float(item.get("weight", 1.0))
            except (TypeError, ValueError):
                continue
            out.append({"name": item["name"], "weight": max(-2.0, min(2.0, weight))})
    return out


def field_param(mode: Mode, name: str) -> str:
    """The parameter behind a field in this mode (Mix sends its prompt as one of its `items`)."""
    if mode.key == "mix" and name == PROMPT:
        return "items"
    if mode.sized and name == RESOLUTION:  # the working size becomes `width` and `height`
        return "width"
    return FIELD_PARAMS[name]


def visible_fields(mode: Mode, spec: dict[str, Any] | None) -> frozenset[str]:
    """The mode's fields that the op spec takes (all of them when the daemon sent no spec, but
    Rank: only a spec that lists `rank` says the preset can rank)."""
    if spec is None:
        return mode.fields - {RANK}
    params, images = spec.get("params") or {}, spec.get("images") or {}

    def takes(name: str) -> bool:
        param = field_param(mode, name)
        if param.startswith("images."):
            return param.removeprefix("images.") in images
        return param in params

    return frozenset(name for name in mode.fields if takes(name))


def validate(form: FormValues) -> str | None:
    """A message for the painter if the form cannot make a valid job, else None."""
    if form.mode not in MODES_BY_KEY or (form.mode == "compare" and form.compare_mode not in COMPARABLE):
        return f"unknown mode {form.mode!r}"
    mode = form.run_mode()
    if form.mode == "compare" and not form.compare_models:
        return "Compare: tick the models to compare (two or more)."
    if len(form.compare_models) > MAX_COMPARED:
        return f"Compare runs at most {MAX_COMPARED} models in one job: untick some."
    if mode.key == "instruct" and not form.instruction.strip():
        return "Instruct needs an instruction, e.g. 'make it winter'."
    if mode.key == "controlnet" and not form.active_units():
        return "ControlNet needs at least one enabled unit with a control layer and a model."
    if mode.key == "mix":
        count = form.mix_item_count()
        if not 2 <= count <= MAX_MIX_ITEMS:
            return (
                f"Mix blends 2 to {MAX_MIX_ITEMS} things: select layers in the Layers docker "
                f"(Ctrl+click) and/or type a prompt ({count} now)."
            )
        weights = [layer.weight for layer in form.mix_layers]
        if form.prompt.strip():
            weights.append(form.prompt_weight)
        if not any(w > 0 for w in weights):
            return "Mix: give at least one item a weight above 0."
    return None


def build_params(
    form: FormValues,
    *,
    size: tuple[int, int] | None = None,
    spec: dict[str, Any] | None = None,
    live: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `params` map of the submit: only what the op spec takes (None: no spec known, send the
    mode's fields); the daemon fills in the rest. For Compare, `spec` is the union of the ticked
    presets' specs of the base op (the daemon gives each preset only what it takes). `live`: the
    preset's live sampler setting, merged over the form (its LoRAs added to the painter's)."""
    mode = form.run_mode()
    fields = visible_fields(mode, spec)
    params: dict[str, Any] = {}
    if STEPS in fields:
        params["steps"] = int(form.steps)
    if VARIATIONS in fields:
        params["variations"] = int(form.variations)
    if RANK in fields and form.rank:
        params["rank"] = True
    if NEGATIVE in fields:
        params["negative_prompt"] = form.negative_prompt
    if GUIDANCE in fields:
        params["guidance_scale"] = float(form.guidance)
    if SEED in fields and form.seed is not None:
        params["seed"] = int(form.seed)
    if SCHEDULER in fields and form.scheduler:
        params["scheduler"] = form.scheduler
    if PROMPT in fields and mode.key != "mix":
        params["prompt"] = form.prompt
    if INSTRUCTION in fields:
        params["instruction"] = form.instruction
    if IMAGE_GUIDANCE in fields:
        params["image_guidance_scale"] = float(form.image_guidance)
    if STRENGTH in fields:
        params["strength"] = float(form.strength)
    if PADDING in fields:
        params["padding"] = int(form.padding)
    if FEATHER in fields:
        params["feather"] = int(form.feather)
    if RESOLUTION in fields and form.resolution and not mode.sized:
        params["resolution"] = int(form.resolution)
    if mode.sized:
        assert size is not None, f"{mode.label} needs a working size"
        params["width"], params["height"] = size
    if FACTOR in fields:
        params["factor"] = int(form.factor)
    if CONTROL in fields:
        params["units"] = [
            {
                "model": u.model,
                "image": f"control{i}",
                "preprocessor": u.preprocessor,
                "scale": float(u.weight),
            }
            for i, u in enumerate(form.active_units())
        ]
    if MIX in fields:
        params["items"] = mix_items(form)
    if LORAS in fields and form.loras:
        params["loras"] = [dict(lora) for lora in form.loras]
    params.update(form.extras)
    if live is not None:
        params = merge_live(params, live)
    if spec is not None:
        taken = set(spec.get("params") or {})
        params = {name: value for name, value in params.items() if name in taken}
    if form.mode == "compare":
        params = {"op": mode.op, "models": list(form.compare_models), **params}
    return params


def mix_items(form: FormValues) -> list[dict[str, Any]]:
    """Mix's items: each selected layer (sent as images `layerN`), then the prompt if there is one."""
    items: list[dict[str, Any]] = [
        {"image": f"layer{i}", "weight": float(layer.weight)} for i, layer in enumerate(form.mix_layers)
    ]
    if form.prompt.strip():
        items.append({"prompt": form.prompt, "weight": float(form.prompt_weight)})
    return items


def spec_union(specs: Collection[dict[str, Any]]) -> dict[str, Any] | None:
    """One spec that takes every parameter and image any of `specs` takes (first one's details win)."""
    if not specs:
        return None
    params: dict[str, Any] = {}
    images: dict[str, Any] = {}
    for spec in specs:
        for name, value in (spec.get("params") or {}).items():
            params.setdefault(name, value)
        for name, value in (spec.get("images") or {}).items():
            images.setdefault(name, value)
    return {"params": params, "images": images}
