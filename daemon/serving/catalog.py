"""What each preset offers, computed once at start from its family: the exact spec of every op it can
run (the spec clients see is the one requests are validated with), and its `models` entry."""

from __future__ import annotations

from typing import Any

from .. import loras
from ..config import Config, Preset
from ..errors import ConfigError, ErrorCode, RequestError
from ..families import family
from ..params import LIST_CHECKS, Limits, OpSpec, build_op_specs

#: Ops that are not something one preset does, but run others (offered whatever the presets are).
META_OPS = ("compare",)

#: The "live" sampler setting of a preset whose config has no `live` table: few steps, low guidance
#: (rough on an undistilled model, but quick; a preset with an LCM-LoRA or a turbo model says better).
LIVE_DEFAULT = {"steps": 8, "guidance_scale": 3.0}
#: The tiny models' pictures are noise whatever the sampler: the fewest steps, through the LCM path.
LIVE_TINY = {"steps": 2, "guidance_scale": 1.0, "scheduler": "lcm"}


class Catalog:
    def __init__(self, config: Config, limits: Limits, schedulers: list[str]) -> None:
        self.config = config
        self.common = build_op_specs(limits, schedulers)  # every op with its common parameters
        self.specs: dict[str, dict[str, OpSpec]] = {}
        for preset in config.presets.values():
            fam = family(preset.family)
            specs = {op: fam.op_spec(op, self.common[op], preset) for op in fam.ops(preset)}
            self.specs[preset.name] = _with_defaults(preset, specs)
        self.live = {p.name: _live(p, self.specs[p.name]) for p in config.presets.values()}
        # Parameter names some preset takes for an op: sending one to a preset that does not take
        # it is refused (a silently ignored parameter would be a silent surprise).
        self._somewhere: dict[str, set[str]] = {op: set(spec.params) for op, spec in self.common.items()}
        for op in self.common:  # LoRAs sent where no model takes them are refused, never ignored
            self._somewhere[op].add("loras")
        for specs in self.specs.values():
            for op, spec in specs.items():
                self._somewhere[op] |= set(spec.params)

    def presets_for(self, op: str) -> list[str]:
        return [name for name, specs in self.specs.items() if op in specs]

    def spec(self, preset: Preset, op: str) -> OpSpec:
        """The preset's spec of `op`; `unsupported_op` naming the presets that can run it."""
        if op in META_OPS:
            return self.common[op]
        spec = self.specs[preset.name].get(op)
        if spec is None:
            fam = family(preset.family)
            raise RequestError(
                ErrorCode.UNSUPPORTED_OP,
                f"model {preset.name!r} ({fam.title}) cannot run {op}; it runs "
                f"{list(self.specs[preset.name])}. Presets that run {op}: {self.presets_for(op) or 'none'}",
                "op",
            )
        return spec

    def validate(self, preset: Preset, op: str, params: Any) -> dict[str, Any]:
        """The op's params for this preset, defaults filled in. A parameter that other presets take
        for this op but this one does not is an `invalid_value`; names nobody knows are ignored
        (forward compatibility)."""
        spec = self.spec(preset, op)
        checked = spec.validate(params)
        if op not in META_OPS:
            foreign = sorted((set(params) & self._somewhere[op]) - set(spec.params))
            if foreign:
                raise RequestError(
                    ErrorCode.INVALID_VALUE,
                    f"model {preset.name!r} ({family(preset.family).title}) does not take "
                    f"{', '.join('params.' + name for name in foreign)} for {op}",
                    f"params.{foreign[0]}",
                )
        loras.check_names(preset, checked.get("loras") or ())
        return checked

    def describe(self, preset: Preset, loaded: list[str]) -> dict[str, Any]:
        """The preset's entry of `welcome.models` / `models.presets` (PROTOCOL.md 6.7)."""
        fam = family(preset.family)
        specs = self.specs[preset.name]
        return {
            "name": preset.name,
            "family": fam.name,
            "title": fam.title,
            "about": fam.about,
            "resolution": preset.resolution,
            "ops": list(specs),
            "op_specs": {op: spec.to_wire() for op, spec in specs.items()},
            "controlnets": sorted(preset.controlnets),
            "loras": [{"name": name, "source": source} for name, source in sorted(preset.loras.items())],
            "live": self.live[preset.name],
            "loaded": loaded,
            **fam.describe(preset),
        }


def _checked(preset: Preset, specs: dict[str, OpSpec], name: str, value: Any, what: str) -> bool:
    """Whether some op of the preset takes `name`; a value that op's spec refuses is a config error."""
    takers = [spec.params[name] for spec in specs.values() if name in spec.params]
    for param in takers:
        try:
            check = LIST_CHECKS.get(param.type)
            check(value, name) if check else param.check(value, name)
        except RequestError as e:
            raise ConfigError(f"preset {preset.name!r}: {what}.{name}: {e}") from None
    return bool(takers)


def _with_defaults(preset: Preset, specs: dict[str, OpSpec]) -> dict[str, OpSpec]:
    """The preset's own defaults (`[presets.NAME.defaults]`, e.g. a turbo model's 1 step and no
    guidance) in the spec of every op that takes them, so clients see and get them."""
    unused = [n for n, v in preset.defaults.items() if not _checked(preset, specs, n, v, "defaults")]
    if unused:
        raise ConfigError(f"preset {preset.name!r}: defaults names params none of its ops take: {unused}")
    return {
        op: spec.changed(defaults={n: v for n, v in preset.defaults.items() if n in spec.params})
        for op, spec in specs.items()
    }


def _live(preset: Preset, specs: dict[str, OpSpec]) -> dict[str, Any]:
    """The params of the preset's "live" sampler setting (PROTOCOL.md 6.7 `live`): its config's `live`
    table, checked, or the default for its kind, keeping what its ops take."""
    if preset.live:
        unused = [n for n, v in preset.live.items() if not _checked(preset, specs, n, v, "live")]
        if unused:
            raise ConfigError(f"preset {preset.name!r}: live names params none of its ops take: {unused}")
        live = dict(preset.live)
        if "loras" in live:
            live["loras"] = LIST_CHECKS["loras"](live["loras"], "live.loras")
            try:
                loras.check_names(preset, live["loras"])
            except RequestError as e:
                raise ConfigError(f"preset {preset.name!r}: live.loras: {e}") from None
        return live
    out = {}
    for name, value in (LIVE_TINY if preset.builtin == "tiny" else LIVE_DEFAULT).items():
        try:
            if _checked(preset, specs, name, value, "live"):
                out[name] = value
        except ConfigError:  # e.g. a family without the LCM sampler: its own sampler then
            pass
    return out
