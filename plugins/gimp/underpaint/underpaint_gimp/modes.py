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


@dataclass(frozen=True)
class Arg:
    """One procedure argument. `kind`: str, int, float, choice or layer."""

    name: str
    kind: str
    nick: str
    blurb: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    choices: tuple[tuple[str, str], ...] = ()  # (value, label)


def _prompt() -> Arg:
    return Arg("prompt", "str", "_Prompt", "What to paint", "")


def _negative() -> Arg:
    return Arg("negative-prompt", "str", "_Negative prompt", "What to avoid", "")


def _steps(default: int) -> Arg:
    return Arg("steps", "int", "S_teps", "Denoising steps (before strength is applied)", default, 1, 200)


def _guidance(default: float = 7.5, low: float = 0.0, blurb: str = "Classifier-free guidance scale") -> Arg:
    return Arg("guidance", "float", "_Guidance", blurb, default, low, 30.0)


def _strength(default: float) -> Arg:
    return Arg(
        "strength", "float", "Deno_ising strength", "How much of the region is repainted", default, 0.01, 1.0
    )


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
)
COMMON_TAIL = (
    Arg("seed", "int", "See_d", "Seed of the first variation (-1 = random)", -1, -1, MAX_INT),
    Arg("variations", "int", "_Variations", "Number of result layers", 1, 1, 8),
    Arg("model", "str", "_Model preset", "Daemon model preset (empty = the daemon's default)", ""),
    Arg("endpoint", "str", "Daemon _endpoint", "Where the Underpaint daemon listens", DEFAULT_ENDPOINT),
)


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
    uses_image: bool = True  # sends the source pixels (all but Generate)
    new_image: bool = False  # results go to a new image (Upscale) instead of new layers
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def procedure(self) -> str:
        return f"plug-in-underpaint-{self.key}"

    def arg(self, name: str) -> Arg:
        return next(a for a in self.args if a.name == name)


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
            ),
            Arg(
                "preprocessor",
                "choice",
                "_Annotator (preprocessor)",
                "How the control layer becomes a control map (none = it already is one)",
                "canny",
                choices=tuple((p, p) for p in PREPROCESSORS),
            ),
            Arg("weight", "float", "_Weight", "ControlNet conditioning scale", 1.0, 0.0, 2.0),
            _strength(0.75),
            _steps(30),
            _guidance(),
            SOURCE,
            PADDING,
            *COMMON_TAIL,
        ),
    ),
    Mode(
        "instruct",
        "instruct",
        "In_struct...",
        "Instruct",
        "Edit the selection (or the layer) following an instruction (InstructPix2Pix)",
        (
            Arg("instruction", "str", "_Instruction", "What to change, e.g. 'make it winter'", ""),
            _negative(),
            Arg(
                "image-guidance",
                "float",
                "Im_age guidance",
                "How closely to follow the source",
                1.5,
                0.0,
                10.0,
            ),
            _steps(30),
            _guidance(),
            SOURCE,
            PADDING,
            *COMMON_TAIL,
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
            Arg("width", "int", "_Width", "Width in pixels (0 = the selection's or image's)", 0, 0, 2048),
            Arg("height", "int", "He_ight", "Height in pixels (0 = the selection's or image's)", 0, 0, 2048),
            _steps(30),
            _guidance(),
            *COMMON_TAIL,
        ),
        uses_image=False,
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
            ),
            _steps(20),
            _guidance(-1.0, -1.0, "Classifier-free guidance scale (-1 = the upscaler's default)"),
            SOURCE,
            *COMMON_TAIL,
        ),
        new_image=True,
    ),
)


def mode_by_procedure(name: str) -> Mode:
    return next(m for m in MODES if m.procedure == name)


def mode_by_key(key: str) -> Mode:
    return next(m for m in MODES if m.key == key)
