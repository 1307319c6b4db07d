"""Model presets from TOML: the built-in `presets.toml`, optionally merged with a user's file.

A preset names a model family and, per *role* of that family (`base`, `inpaint`, `refiner`, ...),
where the weights come from: a hub repo id, a local diffusers folder, or a single-file checkpoint.
Which roles a family reads, and what it can do with them, is the family's business
(`underpaint.daemon.families`); this module only reads and checks the file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

BUILTIN_PRESETS = Path(__file__).with_name("presets.toml")  # the default preset
FAMILY_PRESETS = Path(__file__).with_name("families")  # <family module>.toml: each family's presets

TINY_PREFIX = "@tiny/"  # resolved by the model manager, which builds the tiny models on first use
FULLSIZE_PREFIX = "@fullsize/"  # likewise for the full-size random SD 1.5 models (benchmarks)

#: Preset keys that are settings, not roles.
SETTINGS = (
    "family",
    "resolution",
    "builtin",
    "config",
    "variant",
    "trust_pickle",
    "controlnets",
    "loras",
    "defaults",
    "live",
)

#: Params a preset's `live` map may set: the few-step, low-guidance sampling of live painting.
LIVE_KEYS = ("steps", "guidance_scale", "scheduler", "loras")


def data_home() -> Path:
    """Where Underpaint keeps generated files (tiny models): $UNDERPAINT_HOME or ~/.cache/underpaint."""
    env = os.environ.get("UNDERPAINT_HOME")
    return Path(env) if env else Path.home() / ".cache" / "underpaint"


@dataclass(frozen=True)
class Preset:
    """Where each role's weights come from; a role that is missing means the ops that need it are
    not offered."""

    name: str
    family: str
    resolution: int
    sources: dict[str, str]  # role -> hub id / folder / single file
    controlnets: dict[str, str] = field(default_factory=dict)
    single_file_config: str | None = None  # diffusers config (folder or repo) for single files
    variant: str | None = None  # e.g. "fp16": which weight files of a hub repo to fetch
    trust_pickle: bool = False  # the user vouches for pickled .ckpt files of this preset
    builtin: str | None = None  # "tiny" / "fullsize": built locally
    loras: dict[str, str] = field(default_factory=dict)  # LoRA name -> .safetensors file / folder / hub id
    defaults: dict[str, Any] = field(default_factory=dict)  # param -> this preset's default (turbo: 1 step)
    live: dict[str, Any] = field(default_factory=dict)  # params of the "live" sampler setting (LIVE_KEYS)


@dataclass(frozen=True)
class Config:
    default: str
    presets: dict[str, Preset]
    unusable: tuple[dict[str, str], ...] = ()  # files of the models dir that are no preset: {path, reason}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def builtin_files() -> list[Path]:
    """presets.toml, then each family's presets in the registry's order (the tour's)."""
    from .families import FAMILIES

    modules = [entry.split(":")[0] for entry in FAMILIES.values()]
    return [BUILTIN_PRESETS] + [
        FAMILY_PRESETS / f"{m}.toml" for m in modules if (FAMILY_PRESETS / f"{m}.toml").is_file()
    ]


def load_config(user_file: Path | None = None, models_dir: Path | None = None) -> Config:
    """Read presets (the user's file merged over the built-in ones) and check each against its family;
    then add a preset per checkpoint of the painter's model folder (`models_dir`, else the file's
    `[models_dir]`), which becomes the default unless the user's file names one."""
    raw: dict[str, Any] = {}
    for path in builtin_files():
        with path.open("rb") as f:
            raw = _merge(raw, tomllib.load(f))
    user: dict[str, Any] = {}
    if user_file is not None:
        with Path(user_file).open("rb") as f:
            user = tomllib.load(f)
        _anchor(user, Path(user_file).resolve().parent)
        raw = _merge(raw, user)
    presets = {name: _preset(name, entry) for name, entry in raw.get("presets", {}).items()}
    default = raw.get("default", next(iter(presets), ""))
    unusable: tuple[dict[str, str], ...] = ()
    from . import model_folders

    folders = model_folders.settings(raw.get("models_dir"), models_dir)
    if folders is not None:
        found = model_folders.scan(folders, set(presets))
        presets |= found.presets
        unusable = tuple(found.unusable)
        if found.presets and "default" not in user:
            default = next(iter(found.presets))
    if default not in presets:
        raise ConfigError(f"config: default preset {default!r} is not defined")
    return Config(default=default, presets=presets, unusable=unusable)


def _anchored(value: Any, folder: Path) -> Any:
    """A relative path that exists under `folder`, made absolute; anything else as written."""
    if not isinstance(value, str) or not value or Path(value).is_absolute() or value.startswith("@"):
        return value
    path = folder / value
    return str(path) if path.exists() else value


def _anchor(user: dict[str, Any], folder: Path) -> None:
    """Relative file and folder paths of the user's file (preset weights, configs, ControlNets, LoRAs;
    the model folder and its configs) are read from the config file's folder, as a painter writing
    `loras/ink.safetensors` beside the file means, whatever folder the daemon was started from. Hub ids
    and paths that do not exist there stay as written."""
    presets = user.get("presets", {})
    for entry in presets.values() if isinstance(presets, dict) else ():
        if not isinstance(entry, dict):
            continue
        for key, value in entry.items():
            if isinstance(value, dict) and key in ("controlnets", "loras"):
                entry[key] = {name: _anchored(v, folder) for name, v in value.items()}
            elif key not in SETTINGS or key == "config":
                entry[key] = _anchored(value, folder)
    where = user.get("models_dir")
    if isinstance(where, str):
        user["models_dir"] = _anchored(where, folder)
    elif isinstance(where, dict):
        if "path" in where:
            where["path"] = _anchored(where["path"], folder)
        if isinstance(where.get("configs"), dict):
            where["configs"] = {fam: _anchored(v, folder) for fam, v in where["configs"].items()}


def _preset(name: str, entry: dict[str, Any]) -> Preset:
    if not isinstance(entry, dict):
        raise ConfigError(f"preset {name!r} must be a table")
    preset = _preset_sources(name, entry)
    return replace(
        preset,
        loras=_loras(preset, entry.get("loras", {})),
        defaults=_table(name, "defaults", entry.get("defaults", {})),
        live=_live(name, entry.get("live", {})),
    )


def _table(name: str, key: str, table: Any) -> dict[str, Any]:
    """A preset's map of param name -> value (values are checked against the op specs by the catalog)."""
    if not isinstance(table, dict):
        raise ConfigError(f"preset {name!r}: {key} must be a table of param = value")
    return dict(table)


def _live(name: str, table: Any) -> dict[str, Any]:
    """The preset's `live` table: only the sampling params live painting changes."""
    live = _table(name, "live", table)
    unknown = sorted(set(live) - set(LIVE_KEYS))
    if unknown:
        raise ConfigError(f"preset {name!r}: live takes {list(LIVE_KEYS)}, not {unknown}")
    return live


def _loras(preset: Preset, table: Any) -> dict[str, str]:
    """The preset's `loras` table (name -> source), for families that take LoRAs."""
    from .families import family_class

    if not isinstance(table, dict) or not all(isinstance(v, str) and v for v in table.values()):
        raise ConfigError(f'preset {preset.name!r}: loras must be a table of name = "file, folder or hub id"')
    if table and not family_class(preset.family).lora_roles:
        raise ConfigError(f"preset {preset.name!r}: the {preset.family} family does not take LoRAs")
    return {str(k): str(v) for k, v in table.items()}


def _preset_sources(name: str, entry: dict[str, Any]) -> Preset:
    """The preset without its LoRAs."""
    from .families import detect_family, family_class

    builtin = entry.get("builtin")
    family_name = entry.get("family")
    if builtin == "fullsize":
        return Preset(
            name,
            "sd15",
            int(entry.get("resolution", 512)),
            {"base": FULLSIZE_PREFIX + "base"},
            {"canny": FULLSIZE_PREFIX + "controlnet-canny"},
            builtin="fullsize",
        )
    if builtin == "tiny":
        family = family_class(family_name or "sd15")
        prefix = f"{TINY_PREFIX}{family.name}/"
        return Preset(
            name,
            family.name,
            int(entry.get("resolution", family.tiny_resolution)),
            {role: prefix + folder for role, folder in family.tiny_sources.items()},
            {kind: prefix + folder for kind, folder in family.tiny_controlnets.items()},
            builtin="tiny",
        )
    if builtin is not None:
        raise ConfigError(f"preset {name!r}: builtin is {builtin!r}, expected 'tiny' or 'fullsize'")
    if not family_name:
        if not entry.get("base"):
            raise ConfigError(f"preset {name!r} names neither a family nor a base model")
        family_name = detect_family(str(entry["base"]))
    family = family_class(family_name)
    unknown = sorted(set(entry) - set(SETTINGS) - set(family.roles))
    if unknown:
        raise ConfigError(
            f"preset {name!r} ({family.name}): unknown keys {unknown}; this family reads the roles "
            f"{sorted(family.roles)} and the settings {sorted(SETTINGS)}"
        )
    sources = {role: str(entry[role]) for role in family.roles if entry.get(role)}
    missing = [role for role in family.required_roles if role not in sources]
    if missing:
        raise ConfigError(f"preset {name!r} ({family.name}) needs {missing}")
    return Preset(
        name=name,
        family=family.name,
        resolution=int(entry.get("resolution", family.default_resolution)),
        sources=sources,
        controlnets={k: str(v) for k, v in entry.get("controlnets", {}).items()},
        single_file_config=entry.get("config"),
        variant=entry.get("variant"),
        trust_pickle=bool(entry.get("trust_pickle", False)),
    )
