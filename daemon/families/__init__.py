"""Model families, one module each: which exist, and which one a model folder or file belongs to.

Family modules import diffusers, so they load on first use (`family()`); the registry itself is light.
"""

from __future__ import annotations

import importlib
import json
import logging
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import Family

log = logging.getLogger("underpaint.families")

#: family name -> "module:Class" in this package
FAMILIES: dict[str, str] = {
    "sd15": "sd15:SD15",
    "sd2": "sd2:SD2",
    "sdxl": "sdxl:SDXL",
    "sd-variation": "sd_variation:SDVariation",
    "unclip": "unclip:UnCLIP",
    "if": "deepfloyd_if:DeepFloydIF",
    "kandinsky22": "kandinsky22:Kandinsky22",
    "ddpm": "ddpm:DDPM",
}


@cache
def family(name: str) -> Family:
    """The family object (stateless, one per process)."""
    return family_class(name)()


def family_class(name: str) -> type[Family]:
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
    module, cls = FAMILIES[name].split(":")
    return getattr(importlib.import_module(f".{module}", __name__), cls)


# -- detection ---------------------------------------------------------------------------------------
#: diffusers pipeline class (model_index.json `_class_name`) -> family
_BY_PIPELINE = {
    "StableDiffusionDepth2ImgPipeline": "sd2",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
    "StableDiffusionImageVariationPipeline": "sd-variation",
    "UnCLIPPipeline": "unclip",
    "UnCLIPImageVariationPipeline": "unclip",
    "IFPipeline": "if",
    "IFSuperResolutionPipeline": "if",
    "KandinskyV22Pipeline": "kandinsky22",
    "KandinskyV22PriorPipeline": "kandinsky22",
    "KandinskyV22CombinedPipeline": "kandinsky22",
    "DDPMPipeline": "ddpm",
    "DDIMPipeline": "ddpm",
}
_SD_PIPELINES = (
    "StableDiffusionPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionImg2ImgPipeline",
)


def detect_family(source: str, fallback: str | None = "sd15") -> str:
    """The family of a diffusers folder, a hub id already in the local cache, or a single file.

    Reads only small files (model_index.json, a UNet config, a checkpoint's key names): never the
    network, never the weights. When it cannot tell (weights not downloaded yet), it logs a warning
    and assumes `fallback`; with no fallback it raises ConfigError saying what to write.
    """
    try:
        return _detect(source)
    except ConfigError as exc:
        if fallback is None:
            raise
        log.warning("%s; assuming %s", exc, fallback)
        return fallback


def _detect(source: str) -> str:
    if source.lower().endswith((".ckpt", ".pt", ".pth", ".bin")):
        raise ConfigError(
            f"{source!r} is a pickled checkpoint: its family cannot be read without loading (running) it; "
            f'add `family = "..."` to the preset, one of {sorted(FAMILIES)}'
        )
    try:
        if source.lower().endswith(".safetensors"):
            return _family_of_checkpoint(Path(source))
        index = _read_json(source, "model_index.json")
        if index is not None:
            name = str(index.get("_class_name", ""))
            if name in _BY_PIPELINE:
                return _BY_PIPELINE[name]
            if name in _SD_PIPELINES:
                unet = _read_json(source, "unet/config.json") or {}
                v2 = unet.get("cross_attention_dim") == 1024 or unet.get("use_linear_projection")
                return "sd2" if v2 else "sd15"
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {source!r} to detect its model family: {exc}") from exc
    raise ConfigError(
        f"cannot tell the model family of {source!r} (no model_index.json here or in the local "
        f'Hugging Face cache); add `family = "..."` to the preset, one of {sorted(FAMILIES)}'
    )


def _read_json(source: str, name: str) -> dict[str, Any] | None:
    """A JSON file of a local folder, or of a hub repo as far as the local cache has it."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / name
        return json.loads(path.read_text()) if path.is_file() else None
    if source.count("/") != 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, name)
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def _family_of_checkpoint(path: Path) -> str:
    """Original-layout (A1111/ComfyUI) checkpoints: the text encoder's key names tell the family."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"  # OpenCLIP text encoder
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd15"
    raise ConfigError(
        f'cannot tell the model family of the checkpoint {str(path)!r}; add `family = "..."` to the preset'
    )
