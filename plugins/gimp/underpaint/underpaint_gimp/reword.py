"""Reword: a Generate result again with other words, keeping its composition (the daemon's `reword`,
Prompt-to-Prompt). Pure Python, tested outside GIMP.

Everything the daemon needs to run the source job again is on the result layer already: its
`underpaint-params` parasite holds the op, preset, seed and every parameter the daemon reported.
Only Generate (txt2img) results can be reworded here: an Inpaint result would need the pixels and
the selection it was sent with, which the layer does not keep.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .modes import CONNECTION, Arg, Mode
from .request import JobRequest, UserError

EDIT_KINDS = (
    ("auto", "Automatic"),
    ("replace", "Replace words"),
    ("refine", "Add or remove words"),
    ("reweight", "Reweight words"),
)
NEW_PROMPT = Arg(
    "new-prompt",
    "str",
    "_Edited prompt",
    "The layer's prompt with your changes (empty = its own words, for new weights only). Swap words "
    "(a red fox -> a blue fox) or add and remove some: the picture keeps its composition",
    "",
    param="new_prompt",
)
EDIT = Arg(
    "edit",
    "choice",
    "Edit _kind",
    "Automatic picks from the two prompts: Replace when words are swapped one for one, Add or remove "
    "when words were added or removed, Reweight when only the weights change",
    "auto",
    choices=EDIT_KINDS,
    param="edit",
)
WEIGHTS = Arg(
    "weights",
    "str",
    "_Word weights",
    "How strongly words of the edited prompt show, 0 … 10 (1 = as is), e.g. fox=1.5, hat=0.5",
    "",
    param="weights",
)
REWORD = Mode(
    "reword",
    "reword",
    "Re_word Result...",
    "Reword",
    "A Generate result again with other words, keeping its composition",
    (NEW_PROMPT, EDIT, WEIGHTS, *CONNECTION),
)
SOURCE_OPS = ("txt2img",)
# Parameters of the source job the daemon reports but `reword` sets itself (or does not take).
NOT_RESENT = {"op", "variations", "output_format", "rank"}
_WEIGHT = re.compile(r"^\s*(?P<word>[^=]+?)\s*[=:]\s*(?P<weight>[-+0-9.eE]+)\s*$")


def source_of(parasite: bytes | None, layer_name: str) -> dict[str, Any]:
    """The stored run a layer was made by, or a UserError saying why it cannot be reworded."""
    if parasite is None:
        raise UserError(
            f"The layer '{layer_name}' is not an Underpaint result (it has no underpaint-params): select "
            "a layer Generate made."
        )
    try:
        stored = json.loads(parasite.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"The layer '{layer_name}' has unreadable underpaint-params.") from exc
    if not isinstance(stored, dict) or not isinstance(stored.get("params"), dict):
        raise UserError(f"The layer '{layer_name}' has unreadable underpaint-params.")
    op = stored.get("op")
    if op not in SOURCE_OPS:
        raise UserError(
            f"Reword edits Generate results; '{layer_name}' was made by {op or 'an unknown op'} (an Inpaint "
            "result would need the pixels and selection it was sent with, which the layer does not keep)."
        )
    return stored


def parse_weights(text: str) -> dict[str, float]:
    """`fox=1.5, red hat=0.5` -> {"fox": 1.5, "red hat": 0.5}; a UserError names what cannot be read."""
    weights: dict[str, float] = {}
    for part in filter(str.strip, (text or "").split(",")):
        match = _WEIGHT.match(part)
        if match is None:
            raise UserError(
                f"Word weights: cannot read '{part.strip()}'; write word=weight, e.g. fox=1.5, hat=0.5"
            )
        try:
            weight = float(match["weight"])
        except ValueError as exc:
            raise UserError(
                f"Word weights: '{match['weight']}' is not a number (in '{part.strip()}')"
            ) from exc
        if not 0.0 <= weight <= 10.0:
            raise UserError(f"Word weights: {match['word']}={weight:g} is outside 0 … 10")
        weights[match["word"]] = weight
    return weights


def build(stored: dict[str, Any], new_prompt: str, edit: str, weights: dict[str, float]) -> JobRequest:
    """The `reword` request for a stored source run: its params and seed, the edited prompt (empty =
    the source's words, only the weights change)."""
    params = {k: v for k, v in stored["params"].items() if k not in NOT_RESENT}
    params["seed"] = stored.get("seed", params.get("seed"))
    params["op"] = stored["op"]
    params["new_prompt"] = new_prompt.strip() or None
    params["edit"] = edit
    params["weights"] = weights
    if params["new_prompt"] is None and not weights:
        raise UserError(
            "Reword needs an edited prompt or word weights: change the prompt's words, or give weights "
            "(e.g. fox=1.5)."
        )
    return JobRequest("reword", stored.get("model") or None, params)
