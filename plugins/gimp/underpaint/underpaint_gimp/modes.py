"""The plug-in's procedures as data: one `Mode` per menu entry, each with its typed arguments.

Kept free of GIMP imports so the tables can be checked against the daemon's handshake in plain pytest;
`procedures.py` turns them into `Gimp.ImageProcedure` arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_ENDPOINT = "tcp://127.0.0.1:57321"
MENU_PATH = "<Image>/Filters/Underpaint/"
MAX_INT = 2**31 - 1  # GIMP int arguments are 32-bit signed
PREPROCESSORS = (
    "none",
    "canny",
    "lineart_standard",
    "shuffle",
    "lineart",
    "hed",
    "pidi",
    "mlsd",
    "depth_midas",
    "normalbae",
    "openpose",
)


# Mnemonics the procedure dialog's own buttons use (_Help, _Reset, _Cancel, _OK, _Load/_Save Settings).
DIALOG_MNEMONICS = "hrcols"

# Where a mode's pixels come from, and where its results go.
ONE_LAYER, SELECTED_LAYERS, NO_PIXELS = "layer", "layers", "none"
PATCH, FILL, NEW_IMAGE = "patch", "fill", "new-image"


@dataclass(frozen=True)
class Arg:
    """One procedure argument. `kind`: str, int, float, bool, choice, layer or strings (a string array).

    `param` names what it becomes on the wire (a parameter, `units` for ControlNet's, or an image
    slot for a layer), so the dialog can grey out what the picked preset does not take; None: the
    plug-in's own setting (source, endpoint...).
    """

    name: str
    kind: str
    nick: str
    blurb: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    choices: tuple[tuple[str, str], ...] = ()  # (value, label)
    param: str | None = None


def _prompt(blurb: str = "What to paint", param: str = "prompt") -> Arg:
    return Arg("prompt", "str", "_Prompt", blurb, "", param=param)


def _negative() -> Arg:
    return Arg("negative-prompt", "str", "_Negative prompt", "What to avoid", "", param="negative_prompt")


def _steps(default: int) -> Arg:
    blurb = "Denoising steps (before strength is applied)"
    return Arg("steps", "int", "S_teps", blurb, default, 1, 200, param="steps")


def _guidance(default: float = 7.5, low: float = 0.0, blurb: str = "Classifier-free guidance scale") -> Arg:
    return Arg("guidance", "float", "_Guidance", blurb, default, low, 30.0, param="guidance_scale")


def _strength(default: float, low: float = 0.01, blurb: str = "How much of the region is repainted") -> Arg:
    return Arg("strength", "float", "Deno_ising strength", blurb, default, low, 1.0, param="strength")


def _size(name: str, nick: str) -> Arg:
    return Arg(name, "int", nick, f"{name.title()} in pixels (0 = the selection's or image's)", 0, 0, 2048,
               param=name)  # fmt: skip


SOURCE = Arg(
    "source",
    "choice",
    "So_urce",
    "Which pixels the model sees",
    "drawable",
    choices=(("drawable", "Active layer"), ("visible", "Visible image")),
)
PADDING = Arg(
    "padding",
    "int",
    "Conte_xt padding",
    "Context around the selection sent to the model, in pixels",
    32,
    0,
    4096,
    param="padding",
)
SEED = Arg("seed", "int", "See_d", "Seed of the first variation (-1 = random)", -1, -1, MAX_INT, param="seed")
VARIATIONS = Arg("variations", "int", "_Variations", "Number of result layers", 1, 1, 8, param="variations")


def _rank(nick: str = "Ran_k by CLIP") -> Arg:
    """`rank` (PROTOCOL.md 8.3): shown for presets whose op spec lists it, with two or more variations."""
    blurb = (
        "Order the variations by how closely CLIP finds each matches what was asked for: the best one "
        "on top and the only one visible, each layer named and stored with its score (-1 … 1)"
    )
    return Arg("rank", "bool", nick, blurb, False, param="rank")


RANK = _rank()
QUALITY, LIVE = "quality", "live"


def _sampler(nick: str = "S_ampler") -> Arg:
    """The sampler setting: the painter's own steps and guidance, or the preset's few-step `live` map."""
    blurb = (
        "Quality: the Steps and Guidance set here. Live: the picked preset's few-step sampling (e.g. 2 "
        "steps at low guidance with the LCM sampler, or its turbo settings), for quick drafts; the "
        "daemon's help under the preset picker says what it uses"
    )
    return Arg("sampler", "choice", nick, blurb, QUALITY, choices=((QUALITY, "Quality"), (LIVE, "Live")))


def _loras(nick: str = "LoRA weights (_0)") -> Arg:
    """The LoRAs of the picked preset and their weights (the dialog shows a row per LoRA instead)."""
    blurb = (
        "LoRAs of the picked preset with their weights, as name:weight pairs, e.g. 'ink:0.8, lcm:1' "
        "(-2 … 2; 0 or left out = off)"
    )
    return Arg("loras", "str", nick, blurb, "", param="loras")


SAMPLER, LORAS = _sampler(), _loras()
MODEL = Arg("model", "str", "_Model preset", "Daemon model preset (empty = the daemon's default)", "")
ENDPOINT = Arg("endpoint", "str", "Daemon _endpoint", "Where the Underpaint daemon listens", DEFAULT_ENDPOINT)
SERVER_KEY = Arg(
    "server-key",
    "str",
    "Server key (Curve_ZMQ)",
    "For a daemon started with keys (underpaint serve --keys DIR): the path of its public key, "
    "DIR/server.key. Empty = no keys (a daemon on this computer needs none)",
    "",
)
CLIENT_KEY = Arg(
    "client-key",
    "str",
    "Client key (CurveZM_Q)",
    "For a daemon started with keys: the path of this computer's key pair, DIR/NAME.key_secret from "
    "underpaint keygen (the daemon accepts it when DIR/authorized/ holds NAME.key). Empty = no keys",
    "",
)
CONNECTION = (ENDPOINT, SERVER_KEY, CLIENT_KEY)


def _settings(nick: str = "_Family settings") -> Arg:
    """Any other parameter of the picked preset's op, above all those only some families take."""
    return Arg(
        "family-settings",
        "str",
        nick,
        "More parameters as name=value pairs, e.g. 'refine=0.3' (SDXL's refiner share), 'stages=2' "
        "(DeepFloyd IF), 'scheduler=euler'; the dialog lists what the picked preset takes",
        "",
    )


def _tail(rank: Arg = RANK, sampler: Arg = SAMPLER, loras: bool = True) -> tuple[Arg, ...]:
    return (SEED, VARIATIONS, rank, sampler, *((LORAS,) if loras else ()), _settings(), MODEL, *CONNECTION)


COMMON_TAIL = _tail()
NO_LORA_TAIL = _tail(loras=False)  # modes whose families take no LoRAs (variation, depth, mix)

# The modes Compare can run on several presets (their parameters are all Compare's own arguments).
COMPARED = ("generate", "refine", "inpaint", "variation", "depth")


@dataclass(frozen=True)
class Mode:
    """One menu entry / PDB procedure and the protocol op it maps to."""

    key: str
    op: str
    label: str
    title: str
    blurb: str
    args: tuple[Arg, ...]
    needs_selection: bool = False
    source: str = ONE_LAYER  # the active layer's crop, the selected layers (Mix), or no pixels
    result: str = PATCH  # pasted over the crop, filling the selection (txt2img-like), or a new image
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def procedure(self) -> str:
        return f"plug-in-underpaint-{self.key}"

    @property
    def uses_image(self) -> bool:
        """Sends the active layer's (or the visible image's) crop as `image`."""
        return self.source == ONE_LAYER

    @property
    def new_image(self) -> bool:
        return self.result == NEW_IMAGE

    def arg(self, name: str) -> Arg:
        return next(a for a in self.args if a.name == name)

    def has(self, name: str) -> bool:
        return any(a.name == name for a in self.args)


MODES: tuple[Mode, ...] = (
    Mode(
        "inpaint",
        "inpaint",
        "_Inpaint Selection...",
        "Inpaint",
        "Repaint the selection from a prompt",
        (_prompt(), _negative(), _strength(1.0), _steps(30), _guidance(), SOURCE, PADDING, *COMMON_TAIL),
        needs_selection=True,
    ),
    Mode(
        "refine",
        "sdedit",
        "_Refine...",
        "Refine",
        "Re-paint the selection (or the layer) following a prompt, keeping its composition (img2img)",
        (_prompt(), _negative(), _strength(0.6), _steps(30), _guidance(), SOURCE, PADDING, *COMMON_TAIL),
    ),
    Mode(
        "controlnet",
        "controlnet",
        "_ControlNet...",
        "ControlNet",
        "Repaint the selection (or the layer) guided by a control layer: edges, lines, a sketch",
        (
            _prompt(),
            _negative(),
            Arg("control-layer", "layer", "Control la_yer", "Control source (none = the source pixels)"),
            Arg(
                "controlnet",
                "str",
                "ControlNet _kind",
                "ControlNet of the preset: canny, lineart, ...",
                "canny",
                param="units",
            ),
            Arg(
                "preprocessor",
                "choice",
                "_Annotator (preprocessor)",
                "How the control layer becomes a control map (none = it already is one)",
                "canny",
                choices=tuple((p, p) for p in PREPROCESSORS),
                param="units",
            ),
            Arg("weight", "float", "_Weight", "ControlNet conditioning scale", 1.0, 0.0, 2.0, param="units"),
            _strength(0.75),
            _steps(30),
            _guidance(),
            SOURCE,
            PADDING,
            *_tail(_rank("Rank _by CLIP"), _sampler("Sampler (_1)")),  # _k, _a: ControlNet kind, Annotator
        ),
    ),
    Mode(
        "instruct",
        "instruct",
        "In_struct...",
        "Instruct",
        "Edit the selection (or the layer) following an instruction (InstructPix2Pix)",
        (
            Arg(
                "instruction",
                "str",
                "_Instruction",
                "What to change, e.g. 'make it winter'",
                "",
                param="instruction",
            ),
            _negative(),
            Arg(
                "image-guidance",
                "float",
                "Im_age guidance",
                "How closely to follow the source",
                1.5,
                0.0,
                10.0,
                param="image_guidance_scale",
            ),
            _steps(30),
            _guidance(),
            SOURCE,
            PADDING,
            *_tail(sampler=_sampler("Sampler (qualit_y or live)")),  # _a is the image guidance's
        ),
    ),
    Mode(
        "generate",
        "txt2img",
        "_Generate...",
        "Generate",
        "Paint a new picture from a prompt into the selection (or the whole image)",
        (
            _prompt(),
            _negative(),
            _size("width", "_Width"),
            _size("height", "He_ight"),
            _steps(30),
            _guidance(),
            *COMMON_TAIL,
        ),
        source=NO_PIXELS,
        result=FILL,
    ),
    Mode(
        "variation",
        "variation",
        "_Variation...",
        "Variation",
        "New pictures like the selection (or the layer), from the model's image encoder; no prompt",
        (_steps(30), _guidance(), SOURCE, PADDING, *NO_LORA_TAIL),
    ),
    Mode(
        "depth",
        "depth",
        "_Depth to Image...",
        "Depth",
        "Re-paint the selection (or the layer) following a prompt while keeping its depth",
        (
            _prompt(),
            _negative(),
            Arg(
                "depth-layer",
                "layer",
                "Depth la_yer",
                "Depth map, white = near (none = the model estimates it)",
                param="depth",
            ),
            _strength(0.8),
            _steps(30),
            _guidance(),
            SOURCE,
            PADDING,
            *NO_LORA_TAIL,
        ),
    ),
    Mode(
        "mix",
        "mix",
        "Mi_x Layers...",
        "Mix",
        "Blend the selected layers and a prompt, with weights, into a new picture in the selection",
        (
            _prompt("A text to blend in with the layers (empty = only the layers)", "items"),
            Arg(
                "weights",
                "str",
                "_Blend weights",
                "Weight of each selected layer, top to bottom, then of the prompt, e.g. '1, 0.5, 2' "
                "(missing = 1)",
                "",
                param="items",
            ),
            _negative(),
            _size("width", "_Width"),
            _size("height", "He_ight"),
            _steps(30),
            _guidance(4.0),
            *NO_LORA_TAIL,
        ),
        source=SELECTED_LAYERS,
        result=FILL,
    ),
    Mode(
        "compare",
        "compare",
        "C_ompare Models...",
        "Compare",
        "Run one mode with the same settings and seed on several model presets: one layer per preset",
        (
            Arg(
                "base-mode",
                "choice",
                "_Base mode",
                "What every preset does",
                "generate",
                choices=(
                    ("generate", "Generate"),
                    ("refine", "Refine"),
                    ("inpaint", "Inpaint selection"),
                    ("variation", "Variation"),
                    ("depth", "Depth to image"),
                ),
            ),
            Arg("models", "strings", "_Models", "The model presets to compare, in order (up to 8)"),
            _prompt(),
            _negative(),
            _strength(0.0, 0.0, "How much of the region is repainted (0 = each mode's default)"),
            _steps(30),
            _guidance(),
            SOURCE,
            PADDING,
            SEED,
            VARIATIONS,
            _settings(),
            *CONNECTION,
        ),
        source=ONE_LAYER,
    ),
    Mode(
        "upscale",
        "upscale",
        "_Upscale...",
        "Upscale",
        "Upscale the selection's bounding box (or the layer) into a new image",
        (
            _prompt(),
            _negative(),
            Arg(
                "factor",
                "choice",
                "_Factor",
                "x4 diffusion upscaler or x2 latent upscaler",
                "4",
                choices=(("4", "x4"), ("2", "x2")),
                param="factor",
            ),
            _steps(20),
            _guidance(-1.0, -1.0, "Classifier-free guidance scale (-1 = the upscaler's default)"),
            SOURCE,
            SEED,
            VARIATIONS,
            _settings("Famil_y settings"),  # _F is the factor's
            MODEL,
            *CONNECTION,
        ),
        result=NEW_IMAGE,
    ),
)


def mode_by_procedure(name: str) -> Mode:
    return next(m for m in MODES if m.procedure == name)


def mode_by_key(key: str) -> Mode:
    return next(m for m in MODES if m.key == key)


def mode_by_op(op: str) -> Mode:
    """The mode that runs `op` on its own (Compare's inner op back to its mode)."""
    return next(m for m in MODES if m.op == op)


def effective(mode: Mode, values: dict[str, Any]) -> Mode:
    """The mode whose pixels and placement a call uses: Compare's base mode, else the mode itself."""
    if mode.key == "compare":
        return mode_by_key(str(values.get("base-mode") or "generate"))
    return mode
