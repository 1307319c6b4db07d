"""Tiny LoRA files for tests: seeded random PEFT adapters on a tiny preset's UNet and text encoder(s),
saved by diffusers' own `save_lora_weights` as a real `.safetensors` LoRA in the diffusers layout."""

from __future__ import annotations

from pathlib import Path

import torch

from underpaint.daemon.builders.tiny import ensure_tiny

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _adapt(module: torch.nn.Module, targets: list[str], scale: float) -> dict[str, torch.Tensor]:
    """Add a random rank-4 adapter to `module` and return its layers in diffusers' naming."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    config = LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False)
    inject_adapter_in_model(config, module)  # peft's own call: transformers' add_adapter wants peft>=0.22
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)  # small enough that the tiny model still paints, big enough to see
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(module))


def build_lora(
    models_root: Path, family: str, out: Path, seed: int = 7, scale: float = 0.5, text_encoders: bool = True
) -> Path:
    """A LoRA file for the tiny `family` ("sd15" or "sdxl") preset, written to `out` (a file path);
    with `text_encoders`, layers of the text encoder(s) too."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    base = ensure_tiny(models_root, family) / "base"
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(base)
    torch.manual_seed(seed)
    layers = {"unet_lora_layers": _adapt(pipe.unet, UNET_TARGETS, scale)}
    if text_encoders:
        layers["text_encoder_lora_layers"] = _adapt(pipe.text_encoder, TEXT_TARGETS, scale)
        if family == "sdxl":
            layers["text_encoder_2_lora_layers"] = _adapt(pipe.text_encoder_2, TEXT_TARGETS, scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    cls.save_lora_weights(out.parent, weight_name=out.name, safe_serialization=True, **layers)
    return out
