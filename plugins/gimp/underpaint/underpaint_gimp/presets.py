"""What the daemon's handshake says about its model presets, in the terms the dialogs need.

`welcome.models` has one map per preset: name, family, title, about, resolution, ops and op_specs
(op -> the exact params and images this preset takes). Older daemons send less; then every preset is
assumed to take everything and the daemon itself has the last word. Pure Python: tested in pytest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from underpaint_protocol.live import LIVE_FALLBACK

from .modes import Arg, Mode


@dataclass(frozen=True)
class Preset:
    """One model preset as the daemon describes it."""

    name: str
    family: str = ""
    title: str = ""
    about: str = ""
    resolution: int | None = None
    ops: tuple[str, ...] = ()
    op_specs: dict[str, Any] = field(default_factory=dict)
    loras: tuple[str, ...] = ()  # the LoRA names the preset lists (PROTOCOL.md: welcome.models[].loras)
    live: dict[str, Any] | None = None  # the params of the "live" sampler setting; None: not said

    @classmethod
    def from_wire(cls, entry: dict[str, Any]) -> Preset:
        return cls(
            name=str(entry.get("name", "")),
            family=str(entry.get("family") or ""),
            title=str(entry.get("title") or entry.get("family") or ""),
            about=str(entry.get("about") or ""),
            resolution=entry.get("resolution"),
            ops=tuple(entry.get("ops") or ()),
            op_specs=dict(entry.get("op_specs") or {}),
            loras=tuple(str(lora.get("name")) for lora in entry.get("loras") or [] if isinstance(lora, dict)),
            live=dict(entry["live"]) if isinstance(entry.get("live"), dict) else None,
        )

    @property
    def label(self) -> str:
        """`name (family title)`, as lists show it."""
        return f"{self.name} ({self.title})" if self.title else self.name

    def live_params(self) -> dict[str, Any]:
        """What the Live sampler setting merges into a request: the preset's own `live` map, or few
        steps and low guidance when the daemon does not say."""
        return dict(self.live) if self.live is not None else dict(LIVE_FALLBACK)

    def runs(self, op: str) -> bool:
        return op in self.ops

    def params(self, op: str) -> set[str] | None:
        """The params this preset takes for `op`; None when the daemon did not say."""
        spec = self.op_specs.get(op)
        return set(spec.get("params") or {}) if isinstance(spec, dict) else None

    def specs(self, op: str) -> dict[str, dict[str, Any]]:
        """Param name -> its spec (type, default, min, max, doc) for `op`; empty when unknown."""
        spec = self.op_specs.get(op)
        return dict(spec.get("params") or {}) if isinstance(spec, dict) else {}

    def images(self, op: str) -> set[str] | None:
        spec = self.op_specs.get(op)
        return set(spec.get("images") or {}) if isinstance(spec, dict) else None

    def takes(self, op: str, arg: Arg) -> bool:
        """Whether this preset uses `arg` when running `op` (plug-in-only settings always count)."""
        if arg.param is None:
            return True
        wanted = self.images(op) if arg.kind == "layer" else self.params(op)
        return wanted is None or arg.param in wanted


@dataclass(frozen=True)
class Catalog:
    """The presets of one daemon, and its default."""

    presets: tuple[Preset, ...]
    default: str | None
    common: dict[str, set[str]] = field(default_factory=dict)  # op -> params of the daemon's op table

    @classmethod
    def from_welcome(cls, welcome: dict[str, Any]) -> Catalog:
        presets = tuple(Preset.from_wire(p) for p in welcome.get("models") or [] if p.get("name"))
        common = {op: set(spec.get("params") or {}) for op, spec in (welcome.get("ops") or {}).items()}
        return cls(presets, welcome.get("default_model"), common)

    def family_settings(self, preset: Preset, op: str) -> dict[str, str]:
        """The params only this preset's family takes for `op` -> `name=default, min … max: doc`."""
        own = self.common.get(op, set()) | {"rank", "loras"}  # own boxes: Rank by CLIP, LoRA rows
        extra = {n: s for n, s in preset.specs(op).items() if n not in own}
        described = {}
        for name, spec in extra.items():
            low, high = spec.get("min"), spec.get("max")
            span = f", {low:g} … {high:g}" if low is not None and high is not None else ""
            described[name] = f"{name}={spec.get('default')}{span}: {spec.get('doc', '')}"
        return described

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.presets]

    def get(self, name: str | None) -> Preset | None:
        """The named preset, the default one for None or ""."""
        name = name or self.default
        return next((p for p in self.presets if p.name == name), None)

    def runners(self, op: str) -> list[str]:
        return [p.name for p in self.presets if p.runs(op)]

    def cannot_run(self, preset: Preset, op: str, what: str) -> str:
        """Why `preset` is no choice for `op`, naming the presets that are."""
        others = self.runners(op)
        can = f"presets that can: {', '.join(others)}" if others else "no preset of this daemon can"
        return f"The model preset '{preset.name}' ({preset.title or preset.family}) cannot run {what}; {can}."

    def unknown(self, name: str) -> str:
        return f"No model preset '{name}' on the daemon (it has: {', '.join(sorted(self.names))})."

    def resolution(self, names: list[str] | tuple[str, ...]) -> int | None:
        """The native size Generate paints at for these presets (the daemon's default for ""): the
        smallest of them, so no preset is asked for more than it was trained at (Compare runs one
        size on all); None when the daemon does not say."""
        sizes = [int(p.resolution) for p in map(self.get, names) if p is not None and p.resolution]
        return min(sizes) if sizes else None

    def syntax(self, name: str | None, op: str, param: str) -> str | None:
        """'weighted' or 'plain': the prompt syntax the preset's `param` of `op` takes (None: unsaid)."""
        preset = self.get(name)
        spec = preset.specs(op).get(param) if preset is not None else None
        return str(spec["syntax"]) if spec and spec.get("syntax") else None


@dataclass(frozen=True)
class Help:
    """What a preset picker shows: a headline, the family's paragraph, notes, and whether OK may run."""

    head: str
    about: str = ""
    notes: str = ""
    runnable: bool = True

    @property
    def text(self) -> str:
        return "\n".join(part for part in (self.head, self.about, self.notes) if part)


def help_text(catalog: Catalog | None, name: str, mode: Mode, op: str, what: str) -> Help:
    """The help under a preset picker: the family's title and its paragraph about what it is good and
    bad at, the settings it does not use or adds, or why it cannot run this mode and which presets can.
    """
    if catalog is None:
        return Help("")
    preset = catalog.get(name)
    if preset is None:
        return Help(catalog.unknown(name), runnable=False)
    default = " (the daemon's default)" if not name else ""
    head = f"{preset.name}{default}: {preset.title or preset.family}"
    if preset.resolution:
        head += f", {preset.resolution} px native"
    if not preset.runs(op):
        return Help(f"{head}.", notes=catalog.cannot_run(preset, op, what), runnable=False)
    skipped = [a.nick.replace("_", "") for a in mode.args if not preset.takes(op, a) and a.name != "loras"]
    notes = [f"Not used by this preset: {', '.join(skipped)}."] if skipped else []
    if mode.has("sampler") or mode.key == "live":
        notes.append(f"Live sampler: {live_text(preset, op)}.")
    extra = catalog.family_settings(preset, op)
    if extra:
        notes.append(f"Family settings it takes: {', '.join(extra)} (hover over Family settings).")
    return Help(f"{head}.", preset.about, "\n".join(notes))


def live_text(preset: Preset, op: str) -> str:
    """What the Live sampler setting sends for `op`, e.g. 'steps=2, guidance_scale=1, scheduler=lcm'."""
    taken = preset.params(op)
    words = []
    for name, value in preset.live_params().items():
        if taken is not None and name not in taken:
            continue
        if name == "loras":
            value = "+".join(f"{lora.get('name')}:{lora.get('weight', 1)}" for lora in value or [])
        words.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(words) or "nothing this preset takes"
