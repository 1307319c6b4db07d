"""LoRAs: small adapters a preset lists (`[presets.NAME.loras] name = "file, folder or repo"`) that a
job turns on with a weight each (`params.loras`).

They load with diffusers' own LoRA machinery (PEFT adapters) into the modules of the preset's warm
components that take them (base's UNet and text encoders, and the other UNets the family names in
`lora_roles`), once: the adapter then stays in those shared modules. Views of a preset share those
modules, and presets naming the same weights share them too, so every view handed to a job first
gets that job's own adapter state (`activate`): the named adapters at their weights, every other one
off, and all of them disabled for a job without LoRAs, which then runs the untouched base weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .config import Preset
from .errors import ErrorCode, RequestError

#: Modules of a pipeline that can hold adapters, and the prefix of their keys in a LoRA file.
TEXT_ENCODERS = {"text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2"}

LOADED_MARK = "_underpaint_loras"  # names of the adapters already loaded into a module (or tried)


def adapter_id(source: str) -> str:
    """The adapter's name inside the modules: one per source, so that two presets sharing a UNet may
    give one LoRA name different files."""
    return "lora_" + hashlib.sha1(source.encode()).hexdigest()[:16]


def check_names(preset: Preset, loras: Sequence[dict[str, Any]]) -> None:
    """Refuse a LoRA name the preset does not list, naming it and the ones it has."""
    for i, lora in enumerate(loras):
        if lora["name"] not in preset.loras:
            known = sorted(preset.loras) or "none"
            raise RequestError(
                ErrorCode.INVALID_VALUE,
                f"model {preset.name!r} has no LoRA {lora['name']!r}; its LoRAs: {known}",
                f"params.loras.{i}.name",
            )


def hosts(component: Any) -> dict[str, torch.nn.Module]:
    """The modules of a loaded component that adapters go into: a pipeline's UNet and text encoders,
    or the component itself when it is a UNet."""
    if isinstance(component, torch.nn.Module):
        return {"unet": component}
    found = {"unet": getattr(component, "unet", None)}
    found |= {attr: getattr(component, attr, None) for attr in TEXT_ENCODERS}
    return {attr: module for attr, module in found.items() if module is not None}


def read(source: str) -> tuple[dict[str, torch.Tensor], Any, Any]:
    """A LoRA file's state dict, network alphas and metadata, read by diffusers (kohya, A1111 and
    diffusers layouts are converted there). `source`: a .safetensors file, a folder or a hub id."""
    from diffusers import StableDiffusionXLPipeline

    path = Path(source).expanduser()
    if path.suffix in (".safetensors", ".bin") and not path.is_file():
        raise FileNotFoundError(f"no LoRA file {str(path)!r}")
    where: dict[str, Any] = {}
    if path.is_file():
        where = {"weight_name": path.name}
        path = path.parent
    target = str(path) if path.exists() else source
    return StableDiffusionXLPipeline.lora_state_dict(target, return_lora_metadata=True, **where)


def load_into(name: str, source: str, modules: dict[str, torch.nn.Module]) -> int:
    """Load adapter `name` into those of `modules` that do not have it yet; returns how many bytes the
    adapters added (the memory accounting counts them)."""
    from diffusers import StableDiffusionXLPipeline

    todo = {attr: m for attr, m in modules.items() if name not in getattr(m, LOADED_MARK, set())}
    if not todo:
        return 0
    before = _bytes(todo.values())
    state, alphas, metadata = read(source)
    for attr, module in todo.items():
        if attr == "unet" and any(key.startswith("unet.") for key in state):
            module.load_lora_adapter(
                state, prefix="unet", network_alphas=alphas, adapter_name=name, metadata=metadata
            )
        elif attr in TEXT_ENCODERS and any(key.startswith(f"{TEXT_ENCODERS[attr]}.") for key in state):
            StableDiffusionXLPipeline.load_lora_into_text_encoder(
                state, alphas, module, prefix=TEXT_ENCODERS[attr], adapter_name=name
            )
        module.__dict__.setdefault(LOADED_MARK, set()).add(name)
    return _bytes(todo.values()) - before


def activate(pipe: Any, loras: Sequence[dict[str, Any]]) -> None:
    """Give every adapter-holding module of `pipe` this job's state: the adapters `loras` names
    ({name: adapter id, weight}) with a weight other than 0 on, at their weights, all others off;
    every module disabled when there are none."""
    from diffusers.loaders.lora_base import (
        disable_lora_for_text_encoder,
        enable_lora_for_text_encoder,
        set_adapters_for_text_encoder,
    )

    active = {lora["name"]: lora["weight"] for lora in loras if lora["weight"] != 0}
    for attr, module in hosts(pipe).items():
        if not getattr(module, "peft_config", None):
            continue
        present = [name for name in active if name in module.peft_config]
        text = attr in TEXT_ENCODERS
        if not present:
            disable_lora_for_text_encoder(module) if text else module.disable_lora()
            continue
        weights = [active[name] for name in present]
        if text:
            enable_lora_for_text_encoder(module)
            set_adapters_for_text_encoder(present, module, weights)
        else:
            module.enable_lora()
            module.set_adapters(present, weights)


def _bytes(modules: Any) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in m.parameters())
