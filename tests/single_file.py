"""Diffusers folders -> one checkpoint in the original Stable Diffusion ("ldm") layout, as painters
download them from model sites (A1111 / ComfyUI files).

Tests only: Underpaint never writes checkpoints, it loads them (`from_single_file`). There is no real
checkpoint to download here, so the tests make one from a tiny model. diffusers converts in the other
direction only (`diffusers.loaders.single_file_utils`); each function below inverts one of its
converters key for key, so loading the result gives back the very same weights, bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

State = dict[str, Tensor]

UNET = "model.diffusion_model."
VAE = "first_stage_model."
#: family -> where each text encoder of the folder lives in the checkpoint, and in which layout
TEXT_ENCODERS = {
    "sd15": {"text_encoder": ("cond_stage_model.transformer.", "clip")},
    "sd2": {"text_encoder": ("cond_stage_model.model.", "open_clip")},
    "sdxl": {
        "text_encoder": ("conditioner.embedders.0.transformer.", "clip"),
        "text_encoder_2": ("conditioner.embedders.1.model.", "open_clip"),
    },
}

_RESNET = {  # diffusers -> ldm names inside one UNet resnet
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _split(key: str, prefixes: dict[str, str], what: str) -> tuple[str, str]:
    """(original-layout prefix, rest of `key`) by the longest diffusers prefix the key starts with;
    a key that no prefix matches means the inversion is incomplete, so it raises."""
    prefix = max((p for p in prefixes if key.startswith(p)), key=len, default=None)
    if prefix is None:
        raise KeyError(f"{what}: no original-layout name for {key!r}")
    return prefixes[prefix], key[len(prefix) :]


# -- UNet (inverse of convert_ldm_unet_checkpoint) ------------------------------------------------------
def _unet_prefixes(state: State, config: dict) -> dict[str, str]:
    """Each diffusers module prefix of a UNet and its place among LDM's input/middle/output blocks."""
    per = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    map_ = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "class_embedding.": "label_emb.",  # nn.Embedding of the x4 upscaler
        "class_embedding.linear_1.": "label_emb.0.0.",
        "class_embedding.linear_2.": "label_emb.0.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",  # SDXL's size/crop conditioning
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    for level in range(levels):
        first = 1 + level * (per + 1)  # input_blocks.0 is conv_in
        for j in range(per):
            map_[f"down_blocks.{level}.resnets.{j}."] = f"input_blocks.{first + j}.0."
            map_[f"down_blocks.{level}.attentions.{j}."] = f"input_blocks.{first + j}.1."
        map_[f"down_blocks.{level}.downsamplers.0.conv."] = f"input_blocks.{first + per}.0.op."
        first = level * (per + 1)
        for j in range(per + 1):
            map_[f"up_blocks.{level}.resnets.{j}."] = f"output_blocks.{first + j}.0."
            map_[f"up_blocks.{level}.attentions.{j}."] = f"output_blocks.{first + j}.1."
        attends = any(k.startswith(f"up_blocks.{level}.attentions.") for k in state)
        slot = 2 if attends else 1  # the upsampler follows the attention, if any
        map_[f"up_blocks.{level}.upsamplers.0.conv."] = f"output_blocks.{first + per}.{slot}.conv."
    return map_


def unet_to_ldm(state: State, config: dict) -> State:
    prefixes = _unet_prefixes(state, config)
    out = {}
    for key, value in state.items():
        new, rest = _split(key, prefixes, "unet")
        if ".resnets." in key:
            name, _, tail = rest.partition(".")
            rest = f"{_RESNET[name]}.{tail}"
        out[UNET + new + rest] = value
    return out


# -- VAE (inverse of convert_ldm_vae_checkpoint) --------------------------------------------------------
def _vae_prefixes(config: dict) -> dict[str, str]:
    levels = len(config["down_block_types"])
    map_ = {p: p for p in ("encoder.conv_in.", "encoder.conv_out.", "decoder.conv_in.", "decoder.conv_out.")}
    map_ |= {p: p for p in ("quant_conv.", "post_quant_conv.")}
    for part in ("encoder", "decoder"):
        map_[f"{part}.conv_norm_out."] = f"{part}.norm_out."
        map_[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        map_[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        map_[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    for i in range(levels):
        map_[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        map_[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = f"encoder.down.{i}.downsample.conv."
        up = levels - 1 - i  # the decoder counts its levels the other way round
        map_[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{up}.block."
        map_[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = f"decoder.up.{up}.upsample.conv."
    return map_


def vae_to_ldm(state: State, config: dict) -> State:
    prefixes = _vae_prefixes(config)
    out = {}
    for key, value in state.items():
        new, rest = _split(key, prefixes, "vae")
        if ".attentions." in key:
            name, _, tail = rest.rpartition(".")
            rest = f"{_VAE_ATTENTION[name]}.{tail}"
            if value.ndim == 2:  # the original attention uses 1x1 convolutions
                value = value[:, :, None, None]
        out[VAE + new + rest.replace("conv_shortcut", "nin_shortcut")] = value
    return out


# -- text encoders (inverse of convert_ldm_clip_checkpoint / convert_open_clip_checkpoint) ------------
def _flat(state: State) -> State:
    """CLIP keys without `text_model.` (transformers >= 5.6 dropped it from CLIPTextModel only)."""
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def clip_to_ldm(state: State, prefix: str) -> State:
    """transformers' own layout, which the original files keep (with the `text_model.` level)."""
    return {f"{prefix}text_model.{k}": v for k, v in _flat(state).items()}


_OPEN_CLIP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.": "ln_final.",
}
_OPEN_CLIP_LAYER = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
    "self_attn.out_proj.": "attn.out_proj.",
}


def open_clip_to_ldm(state: State, prefix: str) -> State:
    """OpenCLIP's layout: `resblocks`, one fused q/k/v projection, a transposed text projection."""
    flat = _flat(state)
    out: State = {}
    for key, value in flat.items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif key.startswith("encoder.layers."):
            n, rest = key.removeprefix("encoder.layers.").split(".", 1)
            block = f"{prefix}transformer.resblocks.{n}."
            if rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
                continue  # fused with q below
            if rest.startswith("self_attn.q_proj."):
                kind = rest.rsplit(".", 1)[1]  # weight / bias
                qkv = [flat[f"encoder.layers.{n}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                out[f"{block}attn.in_proj_{kind}"] = torch.cat(qkv)
            else:
                new, tail = _split(rest, _OPEN_CLIP_LAYER, "text encoder layer")
                out[block + new + tail] = value
        else:
            new, tail = _split(key, _OPEN_CLIP, "text encoder")
            out[prefix + new + tail] = value
    return out


# -- whole checkpoints ----------------------------------------------------------------------------------
def _weights(folder: Path) -> tuple[State, dict]:
    from safetensors.torch import load_file

    state: State = {}
    for file in sorted(folder.glob("*.safetensors")):
        state |= load_file(str(file))
    return state, json.loads((folder / "config.json").read_text())


def original_checkpoint(folder: Path, family: str) -> State:
    """The original-layout state dict of a diffusers pipeline folder of `family` (sd15, sd2, sdxl)."""
    folder = Path(folder)
    unet, unet_config = _weights(folder / "unet")
    vae, vae_config = _weights(folder / "vae")
    out = unet_to_ldm(unet, unet_config) | vae_to_ldm(vae, vae_config)
    for part, (prefix, layout) in TEXT_ENCODERS[family].items():
        if (folder / part).is_dir():
            text, _ = _weights(folder / part)
            out |= (clip_to_ldm if layout == "clip" else open_clip_to_ldm)(text, prefix)
    return out


def save_checkpoint(state: State, path: Path) -> Path:
    """`.safetensors` as most files come today, or a pickled `.ckpt` (a `state_dict` entry) as older ones."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return path
