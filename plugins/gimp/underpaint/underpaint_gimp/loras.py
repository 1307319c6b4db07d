"""LoRA weights as the plug-in keeps them: one text argument, `name:weight` pairs.

GIMP procedure arguments cannot be a list of records, and a text keeps batch and Script-Fu calls
simple; the dialog shows a row per LoRA of the picked preset and writes this text back. Weight 0 means
off and is never sent, so a job at 0 is the preset's untouched base. Pure Python: tested in pytest.
"""

from __future__ import annotations

import re
from typing import Any

MIN_WEIGHT, MAX_WEIGHT = -2.0, 2.0  # what the daemon takes (PROTOCOL.md: params.loras)


class LoraError(ValueError):
    """A LoRA text that cannot be read; the message says how to write it."""


def parse_loras(text: str) -> dict[str, float]:
    """'ink:0.8, lcm:1' -> {"ink": 0.8, "lcm": 1.0}, in the order written (a name given twice: an error)."""
    weights: dict[str, float] = {}
    for pair in (p for p in re.split(r"[,;\s]+", (text or "").strip()) if p):
        name, sep, value = pair.rpartition(":")
        if not sep or not name.strip():
            raise LoraError(f"LoRAs are name:weight pairs like 'ink:0.8', not '{pair}'.")
        try:
            weight = float(value)
        except ValueError:
            raise LoraError(f"The LoRA weight of '{name}' must be a number, not '{value}'.") from None
        if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
            raise LoraError(f"The LoRA weight of '{name}' is {weight:g}; weights go from -2 to 2 (0 = off).")
        if name in weights:
            raise LoraError(f"The LoRA '{name}' is given twice.")
        weights[name.strip()] = weight
    return weights


def format_loras(weights: dict[str, float]) -> str:
    """The text for `weights`, leaving out the LoRAs that are off."""
    return ", ".join(f"{name}:{round(weight, 2):g}" for name, weight in weights.items() if weight != 0)


def wire_loras(weights: dict[str, float]) -> list[dict[str, Any]]:
    """`params.loras` for the daemon: only the LoRAs that are on."""
    return [{"name": name, "weight": weight} for name, weight in weights.items() if weight != 0]
