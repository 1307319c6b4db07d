"""What the daemon's presets allow, read from its welcome: which modes a preset can run (and why not),
the op spec that filters the form, and the help text of the model picker.

Pure Python (no Krita, no Qt): unit-tested outside Krita. Without a welcome (not connected yet) or
with a daemon that sends no op specs, nothing is filtered and the daemon's own checks decide.
"""

from __future__ import annotations

from typing import Any

from .modes import COMPARABLE, MODES, MODES_BY_KEY, Mode, spec_union


def presets(welcome: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [p for p in (welcome or {}).get("models") or [] if isinstance(p, dict) and p.get("name")]


def find(welcome: dict[str, Any] | None, name: str | None) -> dict[str, Any]:
    """The preset map called `name` (the daemon's default when empty), or {} when there is none."""
    name = name or (welcome or {}).get("default_model")
    return next((p for p in presets(welcome) if p.get("name") == name), {})


def title(preset: dict[str, Any]) -> str:
    return str(preset.get("title") or preset.get("family") or "")


def help_text(preset: dict[str, Any]) -> str:
    """The picker's tooltip: the family for people, how it works, its size and what it runs."""
    if not preset:
        return "the daemon's default model (connect to see the models it serves)"
    labels = [m.label for m in modes_of(preset)]
    lines = [f"{preset['name']}: {title(preset)}".rstrip(": ")]
    if preset.get("about"):
        lines.append(str(preset["about"]))
    facts = []
    if preset.get("resolution"):
        facts.append(f"native size {preset['resolution']} px")
    if labels:
        facts.append("modes: " + ", ".join(labels))
    if facts:
        text = "; ".join(facts)
        lines.append(text[:1].upper() + text[1:] + ".")
    return "\n\n".join(lines)


def can_run(preset: dict[str, Any], op: str) -> bool:
    ops = preset.get("ops")
    return ops is None or op in ops  # an old daemon that lists no ops: let it decide


def runners(welcome: dict[str, Any] | None, op: str) -> list[str]:
    """Names of the presets that can run `op`."""
    return [p["name"] for p in presets(welcome) if can_run(p, op)]


def modes_of(preset: dict[str, Any]) -> list[Mode]:
    """The preset's modes in the order of its `ops` (the daemon's order to offer them)."""
    ops = preset.get("ops")
    if ops is None:
        return [m for m in MODES if m.key != "compare"]
    return [m for op in ops for m in MODES if m.op == op and m.key != "compare"]


def mode_problem(welcome: dict[str, Any] | None, preset: dict[str, Any], mode: Mode) -> str | None:
    """Why the picked preset cannot run `mode` (None when it can, or when nothing is known yet)."""
    if welcome is None or not preset:
        return None
    if mode.key == "compare":
        ops = welcome.get("ops")
        if ops is not None and "compare" not in ops:
            return "this daemon has no compare op (update it)"
        return None if len(presets(welcome)) >= 2 else "the daemon serves only one model"
    if can_run(preset, mode.op):
        return None
    others = runners(welcome, mode.op)
    where = f"models that can: {', '.join(others)}" if others else "no model of this daemon can"
    return f"{preset['name']} ({title(preset)}) cannot run {mode.label}; {where}"


def mode_choices(welcome: dict[str, Any] | None, preset: dict[str, Any]) -> list[tuple[Mode, str | None]]:
    """Every mode with the reason it is off (None = offered): the preset's own modes first, in its
    order, then Compare, then the ones it cannot run."""
    own = modes_of(preset) if preset else [m for m in MODES if m.key != "compare"]
    rest = [m for m in MODES if m not in own and m.key != "compare"]
    ordered = [*own, MODES_BY_KEY["compare"], *rest]
    return [(mode, mode_problem(welcome, preset, mode)) for mode in ordered]


def op_spec(welcome: dict[str, Any] | None, preset: dict[str, Any], op: str) -> dict[str, Any] | None:
    """The preset's exact spec of `op`, else the daemon-wide one, else None (nothing to filter by)."""
    spec = (preset.get("op_specs") or {}).get(op)
    if spec is None and not preset.get("op_specs"):
        spec = ((welcome or {}).get("ops") or {}).get(op)
    return spec


def compare_spec(welcome: dict[str, Any] | None, names: list[str], op: str) -> dict[str, Any] | None:
    """What Compare may send for `op`: anything one of the ticked presets takes."""
    specs = [op_spec(welcome, find(welcome, name), op) for name in names]
    if any(spec is None for spec in specs):
        return None
    return spec_union([spec for spec in specs if spec is not None])


def comparable(welcome: dict[str, Any] | None, mode_key: str) -> list[tuple[str, str | None]]:
    """Each preset for Compare's checklist, with why it cannot run the base mode (None = it can)."""
    mode = MODES_BY_KEY[mode_key]
    assert mode.key in COMPARABLE
    return [(p["name"], mode_problem(welcome, p, mode)) for p in presets(welcome)]
