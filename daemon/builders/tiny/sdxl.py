"""Tiny, seeded, randomly initialised Stable Diffusion XL folders for offline tests.

SDXL keeps SD's 8x VAE and 4-channel latents but reads the prompt with two CLIP text encoders whose
hidden states are concatenated (the UNet's cross-attention width is their sum), and it conditions on
the second encoder's pooled projection plus six "micro-conditioning" numbers (original size, crop
corner, target size) through `addition_embed_type="text_time"`. The refiner sees only the second
encoder and five numbers (an aesthetic score replaces the target size). The tiny models keep those
relations with small widths, so a wrong wiring fails here the way it would with real weights.

Layout under the destination folder (see ``FOLDERS``):

- ``base/``: StableDiffusionXLPipeline (UNet 4 channels, 64 px native, 8x VAE, two text encoders).
- ``refiner/``: StableDiffusionXLImg2ImgPipeline with no first text encoder, its own UNet and
  byte-identical copies of base's vae, text_encoder_2, tokenizer_2 and scheduler.
- ``inpaint/``: StableDiffusionXLInpaintPipeline (UNet 9 channels), other parts copied from base.
- ``controlnet-canny/``: a ControlNetModel matching base's UNet (8x hint encoder, random zero convs).
- ``clip/``: a CLIPModel with its tokenizer and image processor, for ranking pictures (``rank``).

The UNets attend sharply (``sharpen_cross_attention``), as trained ones do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import (
    NATIVE_RESOLUTION,
    TEXT_HIDDEN,
    Progress,
    build_clip,
    clip_text_config,
    controlnet_from_unet,
    copy_shared,
    keep_hint_scale,
    make_openclip_tokenizer,
    make_text_encoder,
    make_tokenizer,
    make_vae,
    manual_seed,
    sharpen_cross_attention,
)

if TYPE_CHECKING:  # heavy imports stay lazy so importing this module is cheap
    from diffusers import ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

CONTROLNET_KINDS = ("canny",)
FOLDERS = ("base", "refiner", "inpaint", *(f"controlnet-{kind}" for kind in CONTROLNET_KINDS), "clip")

#: Width of the second (OpenCLIP bigG in real SDXL) encoder: unlike the first, so mix-ups fail.
TEXT2_HIDDEN = 48
#: Width of each micro-conditioning number's Fourier embedding (256 in real SDXL).
TIME_EMBED = 8
#: SDXL's VAE latent scale (SD 1.x uses 0.18215).
SDXL_VAE_SCALE = 0.13025
#: Subfolders base shares with the variant folders (the refiner has no first text encoder).
BASE_PARTS = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
REFINER_PARTS = ("vae", "text_encoder_2", "tokenizer_2", "scheduler")


# --------------------------------------------------------------------------- models


def make_text_encoder_2(tokenizer: CLIPTokenizer, seed: int) -> CLIPTextModelWithProjection:
    """The second encoder: CLIP with a text projection, whose pooled output conditions the UNet."""
    from transformers import CLIPTextModelWithProjection

    config = clip_text_config(tokenizer, TEXT2_HIDDEN, 64, "gelu")
    manual_seed(seed, "text_encoder_2")
    return CLIPTextModelWithProjection(config).eval()


def make_sdxl_unet(seed: int, name: str, in_channels: int = 4, refiner: bool = False) -> UNet2DConditionModel:
    """An SDXL-shaped UNet: no attention at the top level, linear projections, text_time embedding.

    Base: cross-attention over both encoders, 6 micro-conditioning numbers. Refiner: only the second
    encoder, 5 numbers (original size, crop corner, aesthetic score), and other widths.
    """
    from diffusers import UNet2DConditionModel

    cross = TEXT2_HIDDEN if refiner else TEXT_HIDDEN + TEXT2_HIDDEN
    numbers = 5 if refiner else 6
    manual_seed(seed, name)
    unet = UNet2DConditionModel(
        sample_size=NATIVE_RESOLUTION // 8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 32) if refiner else (32, 64),
        layers_per_block=1,
        transformer_layers_per_block=(1, 1),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=cross,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=numbers * TIME_EMBED + TEXT2_HIDDEN,
        norm_num_groups=32,
    ).eval()
    return sharpen_cross_attention(unet)


def make_controlnet(unet: UNet2DConditionModel, seed: int, kind: str) -> ControlNetModel:
    """A ControlNet copied from base's UNet (text_time embedding included); four conditioning levels
    downsample 8x like the VAE, the zero convs get small random weights and the hint encoder keeps its
    signal's scale, so the control map matters."""
    controlnet = controlnet_from_unet(unet, (16, 16, 32, 32), seed, f"sdxl/controlnet-{kind}", std=0.05)
    return keep_hint_scale(controlnet, seed, f"sdxl/controlnet-{kind}")


def sdxl_scheduler() -> Any:
    """SDXL base's own scheduler config: Euler with leading spacing."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )


# --------------------------------------------------------------------------- folders


def _build_base(dest: Path, seed: int, say: Progress) -> dict[str, Any]:
    """base/: the text-to-image pipeline whose parts the other folders copy."""
    from diffusers import StableDiffusionXLPipeline

    say("base: tokenizers + two text encoders")
    tokenizer, tokenizer_2 = make_tokenizer(), make_openclip_tokenizer()
    parts: dict[str, Any] = {
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "text_encoder": make_text_encoder(tokenizer, seed),
        "text_encoder_2": make_text_encoder_2(tokenizer_2, seed),
    }
    say("base: vae (4 levels, 8x)")
    parts["vae"] = make_vae(seed, scaling_factor=SDXL_VAE_SCALE)
    say("base: unet (text_time)")
    parts["unet"] = make_sdxl_unet(seed, "sdxl/base/unet")
    pipe = StableDiffusionXLPipeline(**parts, scheduler=sdxl_scheduler(), add_watermarker=False)
    pipe.save_pretrained(dest / "base")
    return parts


def _build_refiner(dest: Path, seed: int, parts: dict[str, Any], say: Progress) -> None:
    """refiner/: img2img over the second encoder only, with aesthetic-score conditioning."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    say("refiner: unet (second encoder, aesthetic score)")
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=parts["vae"],
        text_encoder=None,
        text_encoder_2=parts["text_encoder_2"],
        tokenizer=None,
        tokenizer_2=parts["tokenizer_2"],
        unet=make_sdxl_unet(seed, "sdxl/refiner/unet", refiner=True),
        scheduler=sdxl_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    pipe.save_pretrained(dest / "refiner")
    copy_shared(dest / "base", dest / "refiner", REFINER_PARTS)


def _build_inpaint(dest: Path, seed: int, parts: dict[str, Any], say: Progress) -> None:
    """inpaint/: a 9-channel UNet (latents, mask, masked-image latents) beside base's parts."""
    from diffusers import StableDiffusionXLInpaintPipeline

    say("inpaint: unet (9 channels)")
    shared = {k: v for k, v in parts.items() if k != "unet"}
    unet = make_sdxl_unet(seed, "sdxl/inpaint/unet", in_channels=9)
    pipe = StableDiffusionXLInpaintPipeline(
        **shared, unet=unet, scheduler=sdxl_scheduler(), add_watermarker=False
    )
    pipe.save_pretrained(dest / "inpaint")
    copy_shared(dest / "base", dest / "inpaint", BASE_PARTS)


def build(dest: Path, seed: int = 0, progress: Progress | None = None) -> Path:
    """Build every sdxl tiny folder under ``dest`` (created if missing) and return ``dest``."""
    say: Progress = progress or (lambda _msg: None)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    parts = _build_base(dest, seed, say)
    _build_refiner(dest, seed, parts, say)
    _build_inpaint(dest, seed, parts, say)
    for kind in CONTROLNET_KINDS:
        say(f"controlnet-{kind}")
        make_controlnet(parts["unet"], seed, kind).save_pretrained(dest / f"controlnet-{kind}")
    say("clip (for ranking)")
    build_clip(dest / "clip", seed)
    say("done")
    return dest
