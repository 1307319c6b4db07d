"""Model presets from TOML: the built-in `presets.toml`, optionally merged with a user's file."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILTIN_PRESETS = Path(__file__).with_name("presets.toml")
ROLES = ("base", "inpaint", "instruct", "upscale_x4", "upscale_x2")


def data_home() -> Path:
    """Where Underpaint keeps generated files (tiny models): $UNDERPAINT_HOME or ~/.cache/underpaint."""
    env = os.environ.get("UNDERPAINT_HOME")
    return Path(env) if env else Path.home() / ".cache" / "underpaint"


@dataclass(frozen=True)
class Preset:
    """Where each role's weights come from; missing roles mean the op is unsupported."""

    name: str
    family: str
    resolution: int
    sources: dict[str, str]  # role -> hub id / folder / single file
    controlnets: dict[str, str] = field(default_factory=dict)
    single_file_config: str | None = None

    def ops(self) -> list[str]:
        """Ops this preset can run (PROTOCOL.md section 8)."""
        ops = []
        if "base" in self.sources:
            ops += ["txt2img", "sdedit", "inpaint"]
            if self.controlnets:
                ops.append("controlnet")
        if "instruct" in self.sources and "base" in self.sources:
            ops.append("instruct")
        if "upscale_x4" in self.sources or "upscale_x2" in self.sources:
            ops.append("upscale")
        return ops


@dataclass(frozen=True)
class Config:
    default: str
    presets: dict[str, Preset]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def load_config(user_file: Path | None = None) -> Config:
    """Read presets; `builtin = "tiny"` presets point at the locally built tiny models."""
    with BUILTIN_PRESETS.open("rb") as f:
        raw = tomllib.load(f)
    if user_file is not None:
        with Path(user_file).open("rb") as f:
            raw = _merge(raw, tomllib.load(f))
    presets = {}
    for name, entry in raw.get("presets", {}).items():
        presets[name] = _preset(name, entry)
    default = raw.get("default", next(iter(presets), ""))
    if default not in presets:
        raise ValueError(f"config: default preset {default!r} is not defined")
    return Config(default=default, presets=presets)


TINY_PREFIX = "@tiny/"  # resolved by the model manager, which builds the tiny models on first use
FULLSIZE_PREFIX = "@fullsize/"  # likewise for the full-size random SD 1.5 models (benchmarks)


def _preset(name: str, entry: dict[str, Any]) -> Preset:
    if entry.get("builtin") == "fullsize":
        return Preset(
            name,
            entry.get("family", "sd15"),
            int(entry.get("resolution", 512)),
            {"base": FULLSIZE_PREFIX + "base"},
            {"canny": FULLSIZE_PREFIX + "controlnet-canny"},
        )
    if entry.get("builtin") == "tiny":
        sources = {
            "base": "base",
            "inpaint": "inpaint",
            "instruct": "instruct",
            "upscale_x4": "upscale-x4",
            "upscale_x2": "upscale-latent-x2",
        }
        controlnets = {k: f"controlnet-{k}" for k in ("canny", "lineart", "scribble", "depth")}
        return Preset(
            name,
            entry.get("family", "sd15"),
            int(entry.get("resolution", 64)),
            {role: TINY_PREFIX + path for role, path in sources.items()},
            {k: TINY_PREFIX + v for k, v in controlnets.items()},
        )
    sources = {role: str(entry[role]) for role in ROLES if entry.get(role)}
    return Preset(
        name=name,
        family=str(entry.get("family", "sd15")),
        resolution=int(entry.get("resolution", 512)),
        sources=sources,
        controlnets={k: str(v) for k, v in entry.get("controlnets", {}).items()},
        single_file_config=entry.get("config"),
    )
