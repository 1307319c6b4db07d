"""Presets from the model folder a painter already has (`serve --models-dir DIR`, `[models_dir]` in
the config): the checkpoint, LoRA and ControlNet sub-folders of A1111/Forge, ComfyUI, Fooocus and
InvokeAI, or any folder of model files.

Each usable checkpoint becomes a preset named after its file, with the family its header shows
(model_files.py), and gets the LoRAs and ControlNets whose cross-attention width equals its own: the
only ones that can load into it. Inpainting and InstructPix2Pix checkpoints join the preset of the
checkpoint they are named after. Everything else with a model file's suffix is listed as unusable,
with the reason, so a painter learns why a file is missing rather than guessing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import Preset
from .errors import ConfigError
from .model_files import ROLES_BY_CHANNELS, ModelFile, Unusable, classify, read_header

log = logging.getLogger("underpaint.model_folders")

#: Sub-folders (case-insensitive) the common tools keep each kind in, under DIR or DIR/models.
CHECKPOINT_DIRS = ("stable-diffusion", "checkpoints", "diffusers")  # A1111/Forge; ComfyUI, Fooocus
LORA_DIRS = ("lora", "loras", "lycoris")
CONTROLNET_DIRS = ("controlnet",)
INVOKE_BASES = ("sd-1", "sd-2", "sdxl")  # InvokeAI: models/<base>/{main,lora,controlnet}
INVOKE_KINDS = ("main", "lora", "controlnet")
A1111_CONTROLNET_EXT = ("extensions", "sd-webui-controlnet", "models")

#: Files that look like weights; anything else (previews, .civitai.info, .yaml, notes) is skipped.
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
OTHER_SUFFIXES = {".gguf": "GGUF (quantised) files", ".onnx": "ONNX files", ".engine": "TensorRT engines"}
MAX_DEPTH = 6  # sub-folder levels searched: deep enough for any sorting, not a whole disk by mistake

#: ControlNet kinds, as words in file names (control_v11p_sd15_canny -> canny); the first match wins.
CONTROLNET_KINDS = (
    "canny", "lineart", "scribble", "softedge", "depth", "normalbae", "normal", "openpose", "mlsd",
    "seg", "shuffle", "tile", "inpaint", "ip2p", "hed", "pidi", "sketch", "qrcode",
)  # fmt: skip
#: Name words of the checkpoints that join another preset's role rather than being one.
ROLE_WORDS = {"inpaint": ("inpainting", "inpaint"), "instruct": ("instruct", "pix2pix", "ip2p")}
WIDTH_NAMES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
CONTROLNET_FAMILIES = ("sd15", "sd2", "sdxl")  # whose controlnet op runs diffusers ControlNetModels
GENERIC_LORA_STEMS = ("pytorch_lora_weights", "adapter_model", "diffusion_pytorch_model")


@dataclass(frozen=True)
class FolderSettings:
    """The `[models_dir]` config table: where, which diffusers configs single files use per family
    (else diffusers picks the family's hub repo, which needs it in the HF cache), and whether pickled
    .ckpt checkpoints may be read."""

    path: Path
    configs: dict[str, str] = field(default_factory=dict)
    trust_pickle: bool = False


@dataclass
class Scan:
    presets: dict[str, Preset]
    unusable: list[dict[str, str]]  # {path, reason}


def settings(raw: Any, override: Path | None) -> FolderSettings | None:
    """The config's `models_dir` (a path, or a table with `path`, `configs`, `trust_pickle`), with the
    command line's `--models-dir` replacing its path; None when neither names a folder."""
    from .families import FAMILIES

    if not isinstance(raw, (str, dict, type(None))):
        raise ConfigError('models_dir must be a path or a table: [models_dir] path = "...", configs = {...}')
    table: dict[str, Any] = {"path": raw} if isinstance(raw, str) else dict(raw or {})
    unknown = sorted(set(table) - {"path", "configs", "trust_pickle"})
    if unknown:
        raise ConfigError(f"[models_dir] takes path, configs and trust_pickle, not {unknown}")
    configs = table.get("configs", {})
    if not isinstance(configs, dict) or not all(isinstance(v, str) for v in configs.values()):
        raise ConfigError('[models_dir] configs must be a table of family = "diffusers folder or repo"')
    if set(configs) - set(FAMILIES):
        raise ConfigError(f"[models_dir] configs: unknown families {sorted(set(configs) - set(FAMILIES))}")
    path = override or table.get("path")
    if not isinstance(path, (str, Path, type(None))):
        raise ConfigError("[models_dir] path must be a string")
    if not path:
        if table:
            raise ConfigError("[models_dir] needs path = the folder to scan")
        return None
    return FolderSettings(Path(path).expanduser(), dict(configs), bool(table.get("trust_pickle", False)))


def scan(where: FolderSettings, taken: set[str]) -> Scan:
    """Presets for the usable checkpoints under `where.path` (names not in `taken`), and the files
    that cannot be used. A missing or unreadable folder is a ConfigError naming it."""
    root = where.path
    if not root.is_dir():
        raise ConfigError(f"models dir {str(root)!r} does not exist or is not a folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise ConfigError(f"models dir {str(root)!r} cannot be read (permissions)")
    started = time.monotonic()
    folders = find_folders(root)
    log.info("models dir %s: scanning %s", root, ", ".join(str(f) for f in folders))
    found: list[ModelFile] = []
    unusable: list[dict[str, str]] = []
    for path in _model_paths(folders, unusable):
        try:
            found.append(_read(path, where))
        except Unusable as why:
            unusable.append({"path": str(path), "reason": str(why)})
        except OSError as exc:
            unusable.append({"path": str(path), "reason": f"cannot be read: {exc.strerror or exc}"})
    presets = _presets(found, where, taken, unusable)
    for item in unusable:
        log.warning("models dir: cannot use %s: %s", item["path"], item["reason"])
    if not presets:
        log.warning(
            "models dir %s: found no usable checkpoint (looked in %s)", root, ", ".join(map(str, folders))
        )
    log.info(
        "models dir %s: %d presets, %d unusable files in %.2f s",
        root,
        len(presets),
        len(unusable),
        time.monotonic() - started,
    )
    return Scan(presets, unusable)


# -- where the files are ----------------------------------------------------------------------------
def _children(folder: Path) -> dict[str, Path]:
    """Sub-folders by lower-case name."""
    try:
        return {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    except OSError:
        return {}


def find_folders(root: Path) -> list[Path]:
    """The checkpoint, LoRA and ControlNet folders of the known layouts under `root` (the tool's
    folder or its `models` folder); `root` itself when it has none of them (a plain folder of files)."""
    tops = [root] + [p for name, p in _children(root).items() if name == "models"]
    found: list[Path] = []
    for top in tops:
        kids = _children(top)
        found += [kids[name] for name in (*CHECKPOINT_DIRS, *LORA_DIRS, *CONTROLNET_DIRS) if name in kids]
        for base in INVOKE_BASES:
            sub = _children(kids[base]) if base in kids else {}
            found += [sub[name] for name in INVOKE_KINDS if name in sub]
        ext = top.joinpath(*A1111_CONTROLNET_EXT)
        if ext.is_dir():
            found.append(ext)
    return found or [root]


def _model_paths(folders: list[Path], unusable: list[dict[str, str]]) -> Iterator[Path]:
    """Model files and diffusers folders under `folders`, recursively (MAX_DEPTH levels), each once
    (tools often share folders through links); a diffusers folder is one model, never searched inside.
    Sub-folders that cannot be read go to `unusable`."""
    seen: set[Path] = set()

    def unreadable(exc: OSError) -> None:
        unusable.append(
            {"path": str(exc.filename), "reason": f"folder cannot be read: {exc.strerror or exc}"}
        )

    for folder in folders:
        for here, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
            real = Path(here).resolve()
            depth = len(Path(here).relative_to(folder).parts)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            if depth and _diffusers_kind(Path(here)):
                dirs[:] = []
                yield Path(here)
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < MAX_DEPTH else []
            for name in sorted(files):
                path = Path(here) / name
                if path.suffix.lower() in (*SAFE_SUFFIXES, *PICKLE_SUFFIXES, *OTHER_SUFFIXES):
                    if path.resolve() not in seen:
                        seen.add(path.resolve())
                        yield path


def _diffusers_kind(folder: Path) -> str:
    """The kind of a diffusers folder: pipeline, controlnet, or "" for neither."""
    if (folder / "model_index.json").is_file():
        return "pipeline"
    config = _json(folder / "config.json")
    return "controlnet" if config.get("_class_name") == "ControlNetModel" else ""


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- what each one is -------------------------------------------------------------------------------
def _read(path: Path, where: FolderSettings) -> ModelFile:
    if path.is_dir():
        return _folder(path)
    suffix = path.suffix.lower()
    if suffix in OTHER_SUFFIXES:
        raise Unusable(f"{OTHER_SUFFIXES[suffix]} are not supported: Underpaint loads .safetensors files")
    if suffix in PICKLE_SUFFIXES:
        if not where.trust_pickle:
            raise Unusable(
                "a pickled file, which can run code when loaded: convert it to .safetensors, or set "
                "trust_pickle = true under [models_dir] if you trust where it came from"
            )
        found = classify(path, _pickle_shapes(path))
        if found.kind != "checkpoint":
            raise Unusable(
                f"a pickled {found.kind}: only checkpoints load from pickles; convert it to .safetensors"
            )
        return found
    return classify(path, read_header(path))


def _pickle_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """A trusted pickle's tensor shapes (torch's restricted loader, memory-mapped: no copy of the weights)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a damaged or foreign pickle: say what torch said
        raise Unusable(f"cannot read the pickle: {exc}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return {str(k): tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def _folder(folder: Path) -> ModelFile:
    """A diffusers pipeline folder (its family from model_index.json) or ControlNet folder."""
    from .families import detect_family, family_class

    if _diffusers_kind(folder) == "controlnet":
        width = _json(folder / "config.json").get("cross_attention_dim")
        if not isinstance(width, int):
            raise Unusable("a ControlNet folder whose config.json has no cross_attention_dim")
        return ModelFile(folder, "controlnet", width)
    try:
        fam = detect_family(str(folder), fallback=None)
    except ConfigError as exc:
        raise Unusable(str(exc)) from None
    missing = [r for r in family_class(fam).required_roles if r != "base"]
    if missing:
        raise Unusable(
            f"a {fam} folder, whose presets also need {missing}: write a preset for it in your config"
        )
    unet = _json(folder / "unet" / "config.json")
    role = ROLES_BY_CHANNELS.get(unet.get("in_channels", 4), "")
    if not role:
        raise Unusable(
            f"a {fam} UNet with {unet.get('in_channels')} input channels (an upscaler or depth model?)"
        )
    width = unet.get("cross_attention_dim")
    return ModelFile(folder, "checkpoint", width if isinstance(width, int) else 0, fam, role)


# -- presets ----------------------------------------------------------------------------------------
def _presets(
    found: list[ModelFile], where: FolderSettings, taken: set[str], unusable: list[dict[str, str]]
) -> dict[str, Preset]:
    from .families import family_class

    checkpoints = [f for f in found if f.kind == "checkpoint"]
    bases = [f for f in checkpoints if f.role == "base"]
    names: set[str] = set(taken)
    presets: dict[str, Preset] = {}
    by_key: dict[tuple[str, str], str] = {}  # (family, name key) -> preset name
    widths: dict[str, int] = {}  # preset name -> its cross-attention width
    for ckpt in bases:
        name = _unique(_clean(ckpt.path.stem if ckpt.path.is_file() else ckpt.path.name), names)
        presets[name], widths[name] = _preset(name, ckpt, where), ckpt.width
        by_key.setdefault((ckpt.family, _key(ckpt.path)), name)
    for ckpt in checkpoints:
        if ckpt.role == "base":
            continue
        owner = by_key.get((ckpt.family, _key(ckpt.path)))
        fam = family_class(ckpt.family)
        if ckpt.role not in fam.roles:
            unusable.append(
                _why(ckpt, f"a {ckpt.family} {ckpt.role} checkpoint: that family has no such role")
            )
        elif owner is None:
            unusable.append(
                _why(
                    ckpt,
                    f"a {ckpt.family} {ckpt.role} checkpoint with no base checkpoint of the same name beside "
                    f"it (NAME.safetensors for NAME-{ROLE_WORDS[ckpt.role][0]}.safetensors)",
                )
            )
        else:
            old = presets[owner]
            presets[owner] = replace(old, sources={**old.sources, ckpt.role: str(ckpt.path)})
    _attach(presets, widths, [f for f in found if f.kind == "lora"], "loras", unusable)
    _attach(presets, widths, [f for f in found if f.kind == "controlnet"], "controlnets", unusable)
    presets = {name: _with_live(preset) for name, preset in presets.items()}
    for name, preset in presets.items():
        log.info(
            "models dir: preset %s (%s, %d px) from %s; LoRAs: %s; ControlNets: %s",
            name,
            preset.family,
            preset.resolution,
            preset.sources["base"],
            ", ".join(sorted(preset.loras)) or "none",
            ", ".join(sorted(preset.controlnets)) or "none",
        )
    return presets


def _preset(name: str, ckpt: ModelFile, where: FolderSettings) -> Preset:
    from .families import family_class

    fam = family_class(ckpt.family)
    config = where.configs.get(ckpt.family) if ckpt.path.is_file() else None
    resolution = _resolution(Path(config) if config else ckpt.path) or fam.default_resolution
    return Preset(
        name=name,
        family=fam.name,
        resolution=resolution,
        sources={"base": str(ckpt.path)},
        single_file_config=config,
        trust_pickle=ckpt.path.suffix.lower() in PICKLE_SUFFIXES,
    )


def _resolution(folder: Path) -> int:
    """A diffusers folder's native size: its UNet's sample size times the VAE's downscale (0: unknown)."""
    unet, vae = _json(folder / "unet" / "config.json"), _json(folder / "vae" / "config.json")
    size, levels = unet.get("sample_size"), vae.get("block_out_channels")
    if isinstance(size, int) and isinstance(levels, list) and levels:
        return size * 2 ** (len(levels) - 1)
    return 0


def _attach(
    presets: dict[str, Preset],
    widths: dict[str, int],
    items: list[ModelFile],
    what: str,
    unusable: list[dict[str, str]],
) -> None:
    """Give every preset the LoRAs (or ControlNets) of its cross-attention width; list those that fit none."""
    for item in items:
        takers = [n for n, w in widths.items() if w == item.width and _takes(presets[n].family, what)]
        if not takers:
            word = "ControlNet" if what == "controlnets" else "LoRA"
            unusable.append(_why(item, _no_fit(item, word, widths, presets)))
            continue
        for n in takers:
            table = dict(getattr(presets[n], what))
            label = _controlnet_kind(item.path) if what == "controlnets" else _lora_name(item.path)
            table[_unique(label, set(table))] = str(item.path)
            presets[n] = replace(presets[n], **{what: table})


def _takes(family: str, what: str) -> bool:
    """Whether presets of `family` take LoRAs (its lora_roles) or ControlNet models (SD families)."""
    from .families import family_class

    return family in CONTROLNET_FAMILIES if what == "controlnets" else bool(family_class(family).lora_roles)


def _lora_name(path: Path) -> str:
    """A LoRA's name: its file's, or its folder's where the file has diffusers' generic name."""
    return _clean(path.parent.name if path.stem in GENERIC_LORA_STEMS else path.stem)


def _with_live(preset: Preset) -> Preset:
    """A preset with an LCM- or TCD-LoRA of its own paints live through it (few steps, no guidance)."""
    for name in sorted(preset.loras):
        sampler = next((s for s in ("lcm", "tcd") if s in re.split(r"[^a-z0-9]+", name.lower())), "")
        if sampler:
            live = {"steps": 4, "guidance_scale": 1.0, "scheduler": sampler}
            return replace(preset, live={**live, "loras": [{"name": name, "weight": 1.0}]})
    return preset


def _no_fit(item: ModelFile, what: str, widths: dict[str, int], presets: dict[str, Preset]) -> str:
    model = WIDTH_NAMES.get(item.width, "another model")
    have = sorted({f"{presets[n].family} ({w})" for n, w in widths.items()}) or ["no checkpoints"]
    return (
        f"a {what} for {model} (text context width {item.width}); it fits none of the checkpoints here: "
        f"{', '.join(have)}"
    )


def _controlnet_kind(path: Path) -> str:
    """The ControlNet's kind from its name (control_v11p_sd15_canny -> canny), else the cleaned name."""
    words = re.split(r"[^a-z0-9]+", path.name.lower().removesuffix(path.suffix.lower()))
    return next((kind for word in words for kind in CONTROLNET_KINDS if word == kind), _clean(path.stem))


def _clean(stem: str) -> str:
    """A preset / LoRA name from a file name: letters, digits, . _ - only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "model"


def _unique(name: str, taken: set[str]) -> str:
    out, n = name, 2
    while out in taken:
        out, n = f"{name}-{n}", n + 1
    taken.add(out)
    return out


def _key(path: Path) -> str:
    """A checkpoint's name without role words: dreamshaper_8_inpainting and dreamshaper_8 share one."""
    stem = path.stem if path.is_file() else path.name
    words = [w for w in re.split(r"[^a-z0-9]+", stem.lower()) if w]
    role_words = {w for ws in ROLE_WORDS.values() for w in ws}
    return " ".join(w for w in words if w not in role_words)


def _why(item: ModelFile, reason: str) -> dict[str, str]:
    return {"path": str(item.path), "reason": reason}
