"""Op parameter tables and their validation: one place that both checks requests and describes
them in the handshake (PROTOCOL.md section 8), so the spec a client sees is the one enforced."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ErrorCode, RequestError

MAX_SEED = 2**32 - 1
MAX_TEXT = 4000


@dataclass(frozen=True)
class Limits:
    """Daemon-wide limits, advertised in `welcome.limits`."""

    max_message_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_steps: int = 200
    max_variations: int = 8
    max_queued_per_client: int = 64

    def to_wire(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Param:
    """One parameter: its type, default, range and the doc shown to client authors."""

    name: str
    type: (
        str  # "int" | "float" | "str" | "bool" | "units" | "items" | "models" | "words" | "weights" | "loras"
    )
    default: Any
    doc: str
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    unit: str | None = None
    nullable: bool = False
    required: bool = False
    syntax: str | None = None  # text params: "weighted" ((text:w) honoured) or "plain" (see prompts.py)
    max_tokens: int | None = None  # text params: the most tokens the preset's text encoder reads

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "default": self.default, "doc": self.doc}
        for key in ("min", "max", "unit", "syntax", "max_tokens"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.nullable:
            out["nullable"] = True
        if self.required:
            out["required"] = True
        return out

    def check(self, value: Any, path: str) -> Any:
        """Return `value` converted to this param's type, or raise a RequestError naming `path`."""
        if value is None:
            if self.nullable:
                return None
            raise RequestError(ErrorCode.INVALID_TYPE, f"{path} must not be nil", path)
        value = _check_type(self.type, value, path)
        if self.type in ("int", "float"):
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                raise RequestError(
                    ErrorCode.OUT_OF_RANGE,
                    f"{path} is {value}, expected {_fmt(self.min)} … {_fmt(self.max)}"
                    + (f" {self.unit}" if self.unit else ""),
                    path,
                )
        if self.type == "str" and len(value) > MAX_TEXT:
            raise RequestError(
                ErrorCode.OUT_OF_RANGE, f"{path} is {len(value)} chars, at most {MAX_TEXT}", path
            )
        if self.choices is not None and value not in self.choices:
            code = ErrorCode.UNKNOWN_SCHEDULER if self.name == "scheduler" else ErrorCode.INVALID_VALUE
            raise RequestError(code, f"{path} is {value!r}, expected one of {list(self.choices)}", path)
        return value


def _fmt(x: float | None) -> str:
    return "…" if x is None else f"{x:g}"


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "units": (list, tuple),
    "items": (list, tuple),
    "models": (list, tuple),
    "words": (list, tuple),
    "weights": (dict,),
    "loras": (list, tuple),
}


def _check_type(kind: str, value: Any, path: str) -> Any:
    ok = isinstance(value, _PY_TYPES[kind]) and not (kind in ("int", "float") and isinstance(value, bool))
    if not ok:
        raise RequestError(ErrorCode.INVALID_TYPE, f"{path} must be {kind}, got {type(value).__name__}", path)
    if kind != "float":
        return value
    value = float(value)
    if not math.isfinite(value):  # NaN and infinities are outside every range
        raise RequestError(ErrorCode.OUT_OF_RANGE, f"{path} is {value}: not a finite number", path)
    return value


@dataclass(frozen=True)
class ImageSlot:
    required: bool
    doc: str


@dataclass(frozen=True)
class OpSpec:
    """What one op accepts; `to_wire` is the handshake's op spec."""

    name: str
    doc: str
    images: dict[str, ImageSlot]
    params: dict[str, Param] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "doc": self.doc,
            "images": {k: {"required": v.required, "doc": v.doc} for k, v in self.images.items()},
            "params": {k: p.to_wire() for k, p in self.params.items()},
        }

    def changed(
        self,
        add: Sequence[Param] = (),
        drop: Sequence[str] = (),
        defaults: dict[str, Any] | None = None,
        doc: str | None = None,
    ) -> OpSpec:
        """A copy for one family: parameters added, dropped, or given other defaults."""
        params = {name: p for name, p in self.params.items() if name not in drop}
        for name, default in (defaults or {}).items():
            params[name] = replace(params[name], default=default)
        params.update({p.name: p for p in add})
        return replace(self, params=params, doc=doc or self.doc)

    def validate(self, params: Any) -> dict[str, Any]:
        """Fill defaults and check every known param; unknown keys are ignored (forward compat)."""
        if not isinstance(params, dict):
            raise RequestError(ErrorCode.INVALID_TYPE, "params must be a map", "params")
        out: dict[str, Any] = {}
        for name, spec in self.params.items():
            path = f"params.{name}"
            if name not in params:
                if spec.required:
                    raise RequestError(ErrorCode.MISSING_FIELD, f"{path} is required", path)
                out[name] = spec.default
                continue
            checker = LIST_CHECKS.get(spec.type)
            out[name] = checker(params[name], path) if checker else spec.check(params[name], path)
        return out


def _check_list(value: Any, path: str, kind: str, low: int, high: int, what: str) -> list[Any]:
    value = _check_type(kind, value, path)
    if not low <= len(value) <= high:
        raise RequestError(
            ErrorCode.OUT_OF_RANGE, f"{path} has {len(value)} {what}, expected {low} … {high}", path
        )
    return list(value)


def _check_map(value: Any, path: str, fields: dict[str, Param]) -> dict[str, Any]:
    """One map of a list parameter: every field checked, defaults filled in, unknown keys ignored."""
    if not isinstance(value, dict):
        raise RequestError(ErrorCode.INVALID_TYPE, f"{path} must be a map", path)
    checked = {}
    for name, spec in fields.items():
        fpath = f"{path}.{name}"
        if name not in value:
            if spec.required:
                raise RequestError(ErrorCode.MISSING_FIELD, f"{fpath} is required", fpath)
            checked[name] = spec.default
        else:
            checked[name] = spec.check(value[name], fpath)
    return checked


UNIT_FIELDS = {
    "model": Param("model", "str", None, "which ControlNet of the preset", required=True),
    "image": Param("image", "str", "control", "key of `images` holding the control source"),
    "preprocessor": Param("preprocessor", "str", "none", "preprocessor; none = ready control map"),
    "scale": Param("scale", "float", 1.0, "conditioning scale (weight)", 0.0, 2.0),
    "start": Param("start", "float", 0.0, "fraction of steps where the unit starts", 0.0, 1.0),
    "end": Param("end", "float", 1.0, "fraction of steps where the unit stops", 0.0, 1.0),
}
MAX_UNITS = 4


def check_units(value: Any, path: str) -> list[dict[str, Any]]:
    """Validate ControlNet units (model names are checked later against the preset)."""
    units = []
    for i, unit in enumerate(_check_list(value, path, "units", 1, MAX_UNITS, "units")):
        upath = f"{path}.{i}"
        checked = _check_map(unit, upath, UNIT_FIELDS)
        if checked["end"] <= checked["start"]:  # diffusers refuses an empty span (start == end)
            raise RequestError(
                ErrorCode.OUT_OF_RANGE,
                f"{upath}.end ({checked['end']:g}) must be after start ({checked['start']:g})",
                f"{upath}.end",
            )
        units.append(checked)
    return units


ITEM_FIELDS = {
    "prompt": Param("prompt", "str", None, "a text to blend in", nullable=True),
    "image": Param("image", "str", None, "key of `images` holding a picture to blend in", nullable=True),
    "weight": Param("weight", "float", 1.0, "share of this item in the blend", 0.0, 10.0),
}
MAX_ITEMS = 8


def check_items(value: Any, path: str) -> list[dict[str, Any]]:
    """Validate `mix` items: each is a prompt or an image name, with a weight; not all weights 0."""
    items = []
    for i, item in enumerate(_check_list(value, path, "items", 2, MAX_ITEMS, "items")):
        ipath = f"{path}.{i}"
        checked = _check_map(item, ipath, ITEM_FIELDS)
        if (checked["prompt"] is None) == (checked["image"] is None):
            raise RequestError(
                ErrorCode.INVALID_VALUE, f"{ipath} must have exactly one of prompt or image", ipath
            )
        items.append(checked)
    if not any(item["weight"] > 0 for item in items):
        raise RequestError(ErrorCode.INVALID_VALUE, f"{path}: at least one weight must be above 0", path)
    return items


MAX_COMPARED = 8


def check_models(value: Any, path: str) -> list[str]:
    """Validate `compare` preset names (their existence is checked against the config later)."""
    names = _check_list(value, path, "models", 1, MAX_COMPARED, "models")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise RequestError(ErrorCode.INVALID_TYPE, f"{path}.{i} must be str", f"{path}.{i}")
    if len(set(names)) != len(names):
        raise RequestError(ErrorCode.INVALID_VALUE, f"{path} names a preset twice", path)
    return names


MAX_WORDS = 8
MAX_WORD_CHARS = 100


def _check_word(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise RequestError(ErrorCode.INVALID_TYPE, f"{path} must be str, got {type(value).__name__}", path)
    if not value.strip() or len(value) > MAX_WORD_CHARS:
        raise RequestError(
            ErrorCode.INVALID_VALUE, f"{path} must be a word or phrase of 1 … {MAX_WORD_CHARS} chars", path
        )
    return value


def check_words(value: Any, path: str) -> list[str]:
    """Validate `reword`'s blend words (whether each is in a prompt is checked with the tokenizer)."""
    words = _check_list(value, path, "words", 0, MAX_WORDS, "words")
    return [_check_word(word, f"{path}.{i}") for i, word in enumerate(words)]


WEIGHT = Param("weight", "float", 1.0, "attention weight", 0.0, 10.0)


def check_weights(value: Any, path: str) -> dict[str, float]:
    """Validate `reword`'s word weights: a map from a word or phrase to a weight 0 … 10."""
    value = _check_type("weights", value, path)
    if len(value) > MAX_WORDS:
        raise RequestError(
            ErrorCode.OUT_OF_RANGE, f"{path} has {len(value)} words, at most {MAX_WORDS}", path
        )
    checked = {}
    for word, weight in value.items():
        where = f"{path}.{word}" if isinstance(word, str) else path
        checked[_check_word(word, path)] = WEIGHT.check(weight, where)
    return checked


LORA_FIELDS = {
    "name": Param("name", "str", None, "a LoRA the preset lists (its `loras` in `models`)", required=True),
    "weight": Param("weight", "float", 1.0, "strength; 0 = off, negative = away from it", -2.0, 2.0),
}
MAX_LORAS = 4


def check_loras(value: Any, path: str) -> list[dict[str, Any]]:
    """Validate `loras`: up to MAX_LORAS {name, weight}, no name twice (names are checked against
    the preset later)."""
    checked = [
        _check_map(lora, f"{path}.{i}", LORA_FIELDS)
        for i, lora in enumerate(_check_list(value, path, "loras", 0, MAX_LORAS, "LoRAs"))
    ]
    names = [lora["name"] for lora in checked]
    if len(set(names)) != len(names):
        raise RequestError(ErrorCode.INVALID_VALUE, f"{path} names a LoRA twice", path)
    return checked


def loras_param() -> Param:
    """`loras` for ops of families that take LoRAs."""
    return Param(
        "loras",
        "loras",
        [],
        f"0 … {MAX_LORAS} LoRAs of the preset, each {{name, weight -2 … 2 (default 1)}}; "
        "empty = base weights",
    )


LIST_CHECKS = {
    "loras": check_loras,
    "units": check_units,
    "items": check_items,
    "models": check_models,
    "words": check_words,
    "weights": check_weights,
}

#: Source ops `reword` can edit: the ones that start from noise (in the masked area).
REWORD_SOURCES = ("txt2img", "inpaint")
#: `reword`'s edit kinds (see p2p.py).
EDIT_KINDS = ("auto", "replace", "refine", "reweight")


def rank_param(target: str) -> Param:
    """`rank` for an op whose pictures a preset's CLIP can compare with `target`."""
    return Param(
        "rank",
        "bool",
        False,
        f"order the pictures by CLIP similarity to {target}, best first; each image gets `score` "
        "(cosine similarity, -1 … 1)",
    )


def reword_params() -> list[Param]:
    """What `reword` adds to the source job's parameters."""
    return [
        Param(
            "new_prompt",
            "str",
            None,
            "the edited prompt; nil = prompt (same words: only `weights` change)",
            nullable=True,
        ),
        Param(
            "edit",
            "str",
            "auto",
            "replace: words swapped, as many tokens; refine: words added or removed (tokens aligned); "
            "reweight: same words, new weights; auto: whichever fits the two prompts",
            choices=EDIT_KINDS,
        ),
        Param(
            "weights",
            "weights",
            {},
            "attention weight of words or phrases of the edited prompt, e.g. {snow: 2.0} (0 … 10, 1 = as is)",
        ),
        Param(
            "inject_cross",
            "float",
            0.8,
            "share of the steps the source's cross-attention (word) maps are injected; 0 = a plain re-run",
            0.0,
            1.0,
        ),
        Param(
            "inject_self",
            "float",
            0.4,
            "share of the steps the source's self-attention (layout) maps are injected",
            0.0,
            1.0,
        ),
        Param(
            "blend",
            "words",
            [],
            "local blend: words of either prompt whose attention marks where pixels may change; "
            "empty = everywhere",
        ),
        Param(
            "blend_threshold",
            "float",
            0.3,
            "local blend: share of the words' attention range a place needs to change",
            0.01,
            0.99,
        ),
    ]


def build_op_specs(limits: Limits, schedulers: list[str]) -> dict[str, OpSpec]:
    """The op table. Size defaults of None mean "the preset's native resolution"."""

    def common(steps: int = 30, guidance: float = 7.5, prompt: bool = True) -> list[Param]:
        out = [
            Param("negative_prompt", "str", "", "what to avoid"),
            Param("steps", "int", steps, "denoising steps before strength", 1, limits.max_steps),
            Param("guidance_scale", "float", guidance, "classifier-free guidance", 0.0, 30.0),
            Param("seed", "int", None, "nil = random; image i uses seed+i", 0, MAX_SEED, nullable=True),
            Param("variations", "int", 1, "number of images", 1, limits.max_variations),
            Param("scheduler", "str", "", "sampler; empty = model's own", choices=("", *schedulers)),
            Param("output_format", "str", "raw", "result encoding", choices=("raw", "png")),
        ]
        if prompt:
            out.insert(0, Param("prompt", "str", "", "what to paint"))
        return out

    region = [
        Param(
            "resolution",
            "int",
            None,
            "working size (longer side); nil = preset native",
            64,
            2048,
            unit="px",
            nullable=True,
        ),
        Param("padding", "int", 32, "context kept around the mask", 0, 4096, unit="px"),
        Param("feather", "int", 8, "inward feathering of the returned alpha", 0, 256, unit="px"),
    ]
    size = [
        Param("width", "int", None, "output width; nil = preset native", 64, 2048, unit="px", nullable=True),
        Param(
            "height", "int", None, "output height; nil = preset native", 64, 2048, unit="px", nullable=True
        ),
    ]

    def strength(default: float | None) -> Param:
        return Param(
            "strength", "float", default, "share of the image re-painted", 0.01, 1.0, nullable=default is None
        )

    image = ImageSlot(True, "the picture to edit")
    mask = ImageSlot(False, "8-bit mask, 255 = repaint; output is cropped to it")

    specs = [
        _op("txt2img", "text to image", {}, common() + size),
        _op(
            "sdedit",
            "img2img: re-paint the image with `strength`",
            {"image": image, "mask": mask},
            common() + region + [strength(0.6)],
        ),
        _op(
            "inpaint",
            "repaint the masked area",
            {"image": image, "mask": ImageSlot(True, "8-bit mask, 255 = repaint")},
            common() + region + [strength(1.0)],
        ),
        _op(
            "controlnet",
            "generate under ControlNet guidance; with image: img2img, with mask: inpaint",
            {"image": ImageSlot(False, "init image"), "mask": mask},
            common()
            + region
            + size
            + [
                strength(None),
                Param("units", "units", None, "ControlNet units", required=True),
            ],
        ),
        _op(
            "instruct",
            "InstructPix2Pix: edit the image following an instruction",
            {"image": image, "mask": mask},
            common(prompt=False)
            + region
            + [
                Param("instruction", "str", None, "the edit to make", required=True),
                Param("image_guidance_scale", "float", 1.5, "faithfulness to the image", 0.0, 10.0),
            ],
        ),
        _op(
            "variation",
            "new pictures like the image (or the selection in it), from its CLIP image embedding",
            {"image": ImageSlot(True, "the picture to vary"), "mask": mask},
            common(prompt=False)[1:] + region,
        ),
        _op(
            "depth",
            "depth-to-image: re-paint the image keeping its depth (from the model's estimator, or `depth`)",
            {
                "image": image,
                "mask": mask,
                "depth": ImageSlot(
                    False, "8-bit depth map (white = near), size of `image`; default: estimated"
                ),
            },
            common() + region + [strength(0.8)],
        ),
        _op(
            "mix",
            "blend several prompts and pictures, with weights, into a new picture",
            {},
            common()[1:]
            + size
            + [Param("items", "items", None, "2 … 8 {prompt | image, weight} to blend", required=True)],
        ),
        _op(
            "reword",
            "Prompt-to-Prompt: a txt2img or inpaint job again (same preset, params, seed and images) with "
            "an edited prompt that keeps the picture's composition; an RGBA patch where the source's is",
            {
                "image": ImageSlot(False, "the source job's image (inpaint)"),
                "mask": ImageSlot(False, "the source job's mask (inpaint)"),
            },
            [
                Param(
                    "op",
                    "str",
                    None,
                    "the source job's op; nil = inpaint when images.mask is sent, else txt2img",
                    choices=REWORD_SOURCES,
                    nullable=True,
                )
            ]
            + common()
            + size
            + region
            + [strength(1.0)]
            + reword_params(),
        ),
        _op(
            "compare",
            "run one op with the same parameters on several presets; one labelled result per preset",
            {},
            [
                Param("op", "str", None, "the op every preset runs", required=True),
                Param("models", "models", None, "1 … 8 preset names", required=True),
            ],
        ),
        _op(
            "upscale",
            "diffusion upscaler (x4) or latent upscaler (x2)",
            {"image": ImageSlot(True, "the picture to upscale")},
            common(steps=20, guidance=7.5)
            + [
                Param("factor", "int", 4, "4 = x4 upscaler, 2 = latent x2 upscaler", choices=(2, 4)),
                Param("noise_level", "int", 20, "noise added to the input (x4 only)", 0, 350),
            ],
        ),
    ]
    by_name = {s.name: s for s in specs}
    reword = by_name["reword"]
    source_prompt = replace(
        reword.params["prompt"], doc="the source job's prompt, as its result's params have it"
    )
    by_name["reword"] = reword.changed(add=[source_prompt])
    inner = tuple(name for name in by_name if name != "compare")
    compare = by_name["compare"]
    by_name["compare"] = compare.changed(add=[replace(compare.params["op"], choices=inner)])
    return by_name


def _op(name: str, doc: str, images: dict[str, ImageSlot], params: list[Param]) -> OpSpec:
    return OpSpec(name, doc, images, {p.name: p for p in params})
