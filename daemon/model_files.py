"""What a model file is, read from its safetensors header alone (names, shapes): a checkpoint of which
family and role, a LoRA, or a ControlNet, and the width of the text context its cross-attention reads.

Scanning a painter's model folder must be quick and must never run code, so nothing here loads a tensor
or unpickles anything: a safetensors file starts with a JSON header listing every tensor, and that is
enough to tell SD 1.x from 2.x from XL, an inpainting UNet from a base one, and whether a LoRA fits a
checkpoint (equal cross-attention widths: 768 for SD 1.x, 1024 for 2.x, 2048 for XL).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

MAX_HEADER = 100 * 2**20  # real headers are a few MB at most; a bigger length means it is not one

UNET = "model.diffusion_model."
#: original-layout text encoder prefix -> family (checked in this order: XL files hold both kinds)
TEXT_ENCODERS = (
    ("conditioner.embedders.1.model.", "sdxl"),
    ("cond_stage_model.model.", "sd2"),  # OpenCLIP
    ("cond_stage_model.transformer.", "sd15"),  # CLIP ViT-L
)
#: input channels of the UNet's first convolution -> the role such a checkpoint plays in a preset
ROLES_BY_CHANNELS = {4: "base", 9: "inpaint", 8: "instruct"}

_LORA_DOWN = re.compile(r"(lora_down|lora_A|lora\.down|lora_linear_layer\.down)\.weight$")
_LYCORIS = ("hada_w1_a", "lokr_w1", "lokr_w1_a", ".oft_", "lora_mid")


class Unusable(ValueError):
    """The file cannot be used; the message says why, for the painter."""


@dataclass(frozen=True)
class ModelFile:
    """A usable file: `kind` "checkpoint" (with `family` and `role`), "lora" or "controlnet"."""

    path: Path
    kind: str
    width: int  # text context width of its cross-attention: what decides which checkpoints it fits
    family: str = ""
    role: str = "base"


Shapes = dict[str, tuple[int, ...]]


def read_header(path: Path) -> Shapes:
    """Tensor name -> shape from a .safetensors header; Unusable when the file is not one or is cut
    short (the header promises more tensor bytes than the file holds)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length <= 1 or length > min(size - 8, MAX_HEADER):
            raise Unusable(
                "not a safetensors file (no readable header: damaged, cut short or another format)"
            )
        raw = f.read(length)
    try:
        header = json.loads(raw)
        header.pop("__metadata__", None)
        shapes = {str(k): tuple(int(n) for n in v["shape"]) for k, v in header.items()}
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Unusable(f"not a safetensors file (its header does not parse: {exc})") from None
    if 8 + length + end > size:
        raise Unusable(
            f"truncated: the header lists {8 + length + end} bytes but the file has {size} "
            "(an interrupted download?)"
        )
    if not shapes:
        raise Unusable("an empty safetensors file (no tensors)")
    return shapes


def classify(path: Path, shapes: Shapes) -> ModelFile:
    """What the file is, from its tensor names and shapes; Unusable with the reason otherwise."""
    if any(k.startswith(UNET) for k in shapes):
        return _checkpoint(path, shapes)
    if any(_LORA_DOWN.search(k) or "lora_up" in k or "lora_B" in k for k in shapes):
        return ModelFile(path, "lora", _lora_width(shapes))
    if any(any(mark in k for mark in _LYCORIS) for k in shapes):
        raise Unusable("a LyCORIS adapter (LoHa/LoKr/OFT): diffusers' LoRA loader reads plain LoRAs only")
    if any(
        k.startswith(("control_model.", "input_hint_block.", "controlnet_cond_embedding.")) for k in shapes
    ):
        width = _attention_width(shapes, "")
        if not width:
            raise Unusable("a ControlNet without cross-attention (an SD3/Flux or control-LoRA file?)")
        return ModelFile(path, "controlnet", width)
    raise Unusable(_what_else(shapes))


def _checkpoint(path: Path, shapes: Shapes) -> ModelFile:
    family = next((fam for prefix, fam in TEXT_ENCODERS if any(k.startswith(prefix) for k in shapes)), "")
    if not family:
        if any(k.startswith("conditioner.embedders.0.model.") for k in shapes):
            raise Unusable(
                "an SDXL refiner checkpoint: name it as the `refiner` of an sdxl preset in your config"
            )
        raise Unusable(_what_else(shapes, "a UNet without its text encoder"))
    if "edm_mean" in shapes or "edm_std" in shapes:
        raise Unusable("a Playground v2.5 checkpoint (EDM sampling), which Underpaint does not serve")
    if not any(k.startswith("first_stage_model.") for k in shapes):
        raise Unusable(f"a {family} checkpoint without its VAE (first_stage_model), which presets need")
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight", ())
    channels = conv_in[1] if len(conv_in) == 4 else 0
    role = ROLES_BY_CHANNELS.get(channels)
    if role is None:
        raise Unusable(
            f"a {family} UNet with {channels} input channels (an upscaler or another special model)"
        )
    width = _attention_width(shapes, UNET)
    if not width:
        raise Unusable(f"a {family} checkpoint whose UNet has no cross-attention")
    return ModelFile(path, "checkpoint", width, family, role)


def _attention_width(shapes: Shapes, prefix: str) -> int:
    """In-features of the first cross-attention key projection under `prefix` (0 if none)."""
    for key, shape in shapes.items():
        if key.startswith(prefix) and key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return shape[1]
    return 0


def _lora_width(shapes: Shapes) -> int:
    """The text context a LoRA expects: the in-features of its UNet cross-attention key projections
    (kohya `..._attn2_to_k.lora_down`, diffusers/PEFT `...attn2.to_k.lora_A`); for a LoRA of the
    text encoders only, their widths together (XL concatenates its two encoders' outputs)."""
    text: dict[bool, int] = {}
    for key, shape in shapes.items():
        if not _LORA_DOWN.search(key) or len(shape) < 2:
            continue
        if "attn2" in key and "to_k" in key:
            return shape[1]
        if "k_proj" in key:
            text.setdefault("te2" in key or "text_encoder_2" in key, shape[1])
    if not text:
        raise Unusable(
            "a LoRA with neither cross-attention nor text-encoder layers: its model cannot be told"
        )
    return sum(text.values())


def _what_else(shapes: Shapes, fallback: str = "") -> str:
    """The reason for a file that is no checkpoint, LoRA or ControlNet: what it is, where it can be told."""
    keys = list(shapes)
    if any(k in shapes for k in ("emb_params", "string_to_param", "clip_l", "clip_g")):
        return "a textual-inversion embedding, not a model (embeddings are not used from model folders)"
    vae = ("encoder.conv_in.weight", "decoder.conv_in.weight", "first_stage_model.decoder.conv_in.weight")
    if any(k in shapes for k in vae) and not any(".attn2." in k for k in keys):
        return "a VAE on its own, not a checkpoint (presets use the VAE inside their checkpoint)"
    kind = _diffusers_kind(shapes)
    if kind and kind != "v1":
        return f"a {kind} model: from model folders Underpaint serves SD 1.x, 2.x and XL checkpoints"
    if any(k.startswith(("down_blocks.", "conv_in.")) for k in keys):
        return "a bare diffusers UNet (no text encoder or VAE): use the whole diffusers folder instead"
    return fallback or "not a checkpoint, LoRA or ControlNet that Underpaint recognises"


def _diffusers_kind(shapes: Shapes) -> str:
    """diffusers' own guess of the model type from the key names (it covers SD3, Flux, Cascade, ...)."""
    try:
        from diffusers.loaders.single_file_utils import infer_diffusers_model_type

        fake: dict[str, Any] = {k: SimpleNamespace(shape=s) for k, s in shapes.items()}
        return str(infer_diffusers_model_type(fake))
    except Exception:  # its guesses index shapes freely; a guess that fails is no answer
        return ""
