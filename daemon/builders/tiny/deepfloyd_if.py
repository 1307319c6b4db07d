"""Tiny, seeded, random DeepFloyd IF cascade: T5 text encoder, two pixel-space UNets, x4 upscaler.

Layout under the destination folder (see ``FOLDERS``), shaped like the hub repositories:

- ``stage-1/``: IFPipeline (T5EncoderModel + T5 tokenizer, 3-channel UNet at 16 px that predicts
  noise and variance: 6 output channels, text-pooled ``addition_embed_type="text"``).
- ``stage-2/``: IFSuperResolutionPipeline (6 input channels = noisy image + upscaled stage-I image,
  noise level as a ``class_embed_type="timestep"`` embedding, 64 px). Like the real IF-II repo it
  carries its own copy of the text encoder and tokenizer (byte-identical to stage-1's), which the
  daemon never loads: stage II reuses stage I's prompt embeddings.
- ``stage-3-x4/``: StableDiffusionUpscalePipeline (the SD x4 upscaler with its own CLIP text encoder).

The T5 tokenizer is a real unigram tokenizer built from a (piece, score) list, so it needs neither
sentencepiece nor a download; ``from_pretrained`` reads it back from ``tokenizer.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import (
    CORPUS_WORDS,
    MAX_TOKENS,
    Progress,
    copy_shared,
    make_text_encoder,
    make_tokenizer,
    make_vae,
    manual_seed,
)
from .sd15 import make_x4_unet, x4_schedulers

if TYPE_CHECKING:  # heavy imports stay lazy so importing this module is cheap
    from diffusers import UNet2DConditionModel
    from transformers import T5EncoderModel, T5Tokenizer

FOLDERS = ("stage-1", "stage-2", "stage-3-x4")

STAGE_1_SIZE = 16  # stage I's native side; stage II is x4 of it, stage III x4 again
STAGE_2_SIZE = 64
T5_HIDDEN = 32

_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()"


# --------------------------------------------------------------------------- text


def t5_pieces() -> list[tuple[str, float]]:
    """(piece, log-probability) pairs of a small unigram model laid out like T5's: pad, eos, unk,
    then word pieces, then single characters (with and without the word-start mark) so that any
    text made of them still tokenizes without falling back to <unk>."""
    words = sorted(set(CORPUS_WORDS))
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    # Whole words are likelier than spelling them out, so the tokenizer prefers them.
    pieces += [(f"▁{word}", -4.0 - 0.01 * i) for i, word in enumerate(words)]
    pieces += [(char, -8.0) for char in _CHARS]
    pieces += [(f"▁{char}", -8.5) for char in _CHARS]
    unique: dict[str, float] = {}
    for piece, score in pieces:  # "▁a" is a word and a letter: the first entry wins
        unique.setdefault(piece, score)
    return list(unique.items())


def make_t5_tokenizer() -> T5Tokenizer:
    """A T5 tokenizer from the unigram list (no sentencepiece model file involved)."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=t5_pieces(), extra_ids=0, model_max_length=MAX_TOKENS)


def make_t5(tokenizer: T5Tokenizer, seed: int) -> T5EncoderModel:
    """A 2-layer, 32-wide T5 encoder whose vocabulary matches the tokenizer."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=T5_HIDDEN,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    manual_seed(seed, "stage-1/text_encoder")
    return T5EncoderModel(config).eval()


# --------------------------------------------------------------------------- UNets


def _if_unet_config(sample_size: int, in_channels: int, plain_levels: int) -> dict[str, Any]:
    """What both IF UNets share: ResNet up/down blocks, attention over text and image tokens
    together (only at the lowest level: `plain_levels` levels above it have none, which keeps
    bigger pictures cheap), a text-pooled embedding added to the timestep's, and a learned
    variance output."""
    return {
        "sample_size": sample_size,
        "in_channels": in_channels,
        "out_channels": 6,  # 3 for the noise, 3 for the variance ("learned_range")
        "block_out_channels": (32,) * plain_levels + (64,),
        "down_block_types": ("ResnetDownsampleBlock2D",) * plain_levels + ("SimpleCrossAttnDownBlock2D",),
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "up_block_types": ("SimpleCrossAttnUpBlock2D",) + ("ResnetUpsampleBlock2D",) * plain_levels,
        "cross_attention_dim": 32,
        "encoder_hid_dim": T5_HIDDEN,
        "attention_head_dim": 8,
        "addition_embed_type": "text",
        "addition_embed_type_num_heads": 2,
        "cross_attention_norm": "group_norm",
        "resnet_time_scale_shift": "scale_shift",
        "act_fn": "gelu",
    }


def make_stage_1_unet(seed: int) -> UNet2DConditionModel:
    from diffusers import UNet2DConditionModel

    manual_seed(seed, "stage-1/unet")
    return UNet2DConditionModel(layers_per_block=1, **_if_unet_config(STAGE_1_SIZE, 3, 1)).eval()


def make_stage_2_unet(seed: int) -> UNet2DConditionModel:
    """Stage II: the noisy picture and the upscaled stage-I picture side by side (6 channels); the
    noise added to the latter is told to the UNet as a timestep-like class embedding."""
    from diffusers import UNet2DConditionModel

    manual_seed(seed, "stage-2/unet")
    return UNet2DConditionModel(
        layers_per_block=1,
        class_embed_type="timestep",
        mid_block_scale_factor=math.sqrt(2),
        time_embedding_act_fn="gelu",
        time_embedding_dim=32,
        **_if_unet_config(STAGE_2_SIZE, 6, 2),
    ).eval()


# --------------------------------------------------------------------------- schedulers


def if_scheduler() -> Any:
    """IF's sampler: DDPM with a learned variance range and dynamic thresholding."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        beta_start=0.0001,
        beta_end=0.02,
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.0,
        prediction_type="epsilon",
        variance_type="learned_range",
    )


def image_noising_scheduler() -> Any:
    """Stage II's scheduler that only noises the upscaled stage-I picture (never steps)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", beta_start=0.0001, beta_end=0.02
    )


# --------------------------------------------------------------------------- folders

_NO_CHECKS = {"safety_checker": None, "feature_extractor": None, "watermarker": None}


def _build_stage_1(dest: Path, seed: int, say: Progress) -> dict[str, Any]:
    from diffusers import IFPipeline

    say("stage-1: T5 tokenizer + text encoder")
    tokenizer = make_t5_tokenizer()
    text_encoder = make_t5(tokenizer, seed)
    say("stage-1: unet (3 -> 6 channels, 16 px)")
    parts = {"tokenizer": tokenizer, "text_encoder": text_encoder}
    pipe = IFPipeline(
        **parts,
        unet=make_stage_1_unet(seed),
        scheduler=if_scheduler(),
        requires_safety_checker=False,
        **_NO_CHECKS,
    )
    pipe.save_pretrained(dest / "stage-1")
    return parts


def _build_stage_2(dest: Path, seed: int, parts: dict[str, Any], say: Progress) -> None:
    from diffusers import IFSuperResolutionPipeline

    say("stage-2: unet (6 -> 6 channels, 64 px, 3 levels)")
    pipe = IFSuperResolutionPipeline(
        **parts,
        unet=make_stage_2_unet(seed),
        scheduler=if_scheduler(),
        image_noising_scheduler=image_noising_scheduler(),
        requires_safety_checker=False,
        **_NO_CHECKS,
    )
    pipe.save_pretrained(dest / "stage-2")
    copy_shared(dest / "stage-1", dest / "stage-2", ("text_encoder", "tokenizer"))


def _build_stage_3(dest: Path, seed: int, say: Progress) -> None:
    """The SD x4 upscaler as IF's third stage: it brings its own (CLIP) text encoder."""
    from diffusers import StableDiffusionUpscalePipeline

    say("stage-3-x4: CLIP text encoder, unet (7 channels), vae (3 levels, 4x)")
    tokenizer = make_tokenizer()
    low_res_scheduler, scheduler = x4_schedulers()
    pipe = StableDiffusionUpscalePipeline(
        vae=make_vae(seed, levels=3, scaling_factor=0.08333),
        text_encoder=make_text_encoder(tokenizer, seed),
        tokenizer=tokenizer,
        unet=make_x4_unet(seed),
        low_res_scheduler=low_res_scheduler,
        scheduler=scheduler,
        max_noise_level=350,
    )
    pipe.save_pretrained(dest / "stage-3-x4")


def build(dest: Path, seed: int = 0, progress: Progress | None = None) -> Path:
    """Build every tiny IF folder under ``dest`` (created if missing) and return ``dest``."""
    say: Progress = progress or (lambda _msg: None)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    parts = _build_stage_1(dest, seed, say)
    _build_stage_2(dest, seed, parts, say)
    _build_stage_3(dest, seed, say)
    say("done")
    return dest
