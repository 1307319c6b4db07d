"""Reword (issue 11), the part without Krita: which result layers can be reworded, the word weights
as the painter types them, and the `reword` request built from a result's stored record, so the
daemon runs the same job again (preset, params, seed) with the edited prompt (PROTOCOL.md, op
`reword`). Pure Python, unit-tested.
"""

from __future__ import annotations

import re
from typing import Any

#: The source ops the docker can reword: Generate's txt2img needs nothing but the record. (Inpaint
#: would need the pixels under the result as they were before it; not offered yet.)
SOURCE_OPS = ("txt2img",)
#: The edit kinds of `reword`, with what each does (the combo's tooltips).
EDIT_KINDS = (
    ("auto", "whichever fits the two prompts: replace, refine or reweight"),
    ("replace", "words swapped for as many others (a red fox -> a blue fox)"),
    ("refine", "words added or removed (a fox -> a fox in the snow)"),
    ("reweight", "the same words, only their weights change (see Word weights)"),
)
MAX_WEIGHT = 10.0
_PAIR = re.compile(r"^\s*(?P<word>[^:]+?)\s*:\s*(?P<weight>\S+)\s*$")


def reword_problem(record: dict[str, Any] | None, preset: dict[str, Any] | None) -> str | None:
    """Why the layer with this record cannot be reworded (None: it can)."""
    if record is None:
        return "Pick an Underpaint result layer (made by Generate) in the Layers docker to reword it."
    op = record.get("op")
    if op not in SOURCE_OPS:
        return f"Reword works on Generate results; this layer was made by {op or 'an older plugin'}."
    if not isinstance(record.get("params"), dict) or not (record.get("params") or {}).get("prompt"):
        return "This layer's record has no prompt to reword."
    if preset is not None:
        ops = preset.get("ops")
        if not preset:
            return f"The daemon has no model {record.get('preset')!r} any more (it made this layer)."
        if ops is not None and "reword" not in ops:
            return f"{preset.get('name')} cannot reword (its family has no Prompt-to-Prompt)."
    return None


def parse_weights(text: str) -> dict[str, float]:
    """`snow: 2, red fox: 0.5` -> {"snow": 2.0, "red fox": 0.5}; ValueError says what is wrong."""
    weights: dict[str, float] = {}
    for part in text.replace(";", ",").split(","):
        if not part.strip():
            continue
        match = _PAIR.match(part)
        if match is None:
            raise ValueError(f"{part.strip()!r}: write word: weight, e.g. snow: 2")
        try:
            weight = float(match["weight"])
        except ValueError:
            raise ValueError(f"{part.strip()!r}: {match['weight']!r} is not a number") from None
        if not 0.0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"{match['word']!r}: the weight must be 0 … {MAX_WEIGHT:g}")
        weights[match["word"]] = weight
    return weights


def format_weights(weights: dict[str, float]) -> str:
    return ", ".join(f"{word}: {weight:g}" for word, weight in weights.items())


def reword_params(
    record: dict[str, Any],
    new_prompt: str,
    edit: str,
    weights: dict[str, float],
    spec: dict[str, Any] | None,
) -> dict[str, Any]:
    """The source job's params as the daemon resolved them (its seed included), plus the edit; only
    what the `reword` spec takes when the daemon sent one."""
    params = {k: v for k, v in (record.get("params") or {}).items() if v is not None}
    params.update(op=record.get("op"), new_prompt=new_prompt, edit=edit, weights=dict(weights))
    params["variations"] = 1  # one picture: the edited twin of this layer
    taken = (spec or {}).get("params")
    if taken:
        params = {k: v for k, v in params.items() if k in taken}
    return params
