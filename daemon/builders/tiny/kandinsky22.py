"""Tiny, seeded, randomly initialised Kandinsky 2.2 folders, laid out like the kandinsky-community repos.

Kandinsky 2.2 is two models: a *prior* that turns CLIP text into a CLIP image embedding, and a *decoder*
UNet that paints MoVQ latents conditioned on that embedding. Layout under the destination folder:

- ``prior/``: KandinskyV22PriorPipeline (PriorTransformer, CLIP text and vision encoders with
  projection, CLIP BPE tokenizer, CLIPImageProcessor, UnCLIPScheduler).
- ``decoder/``: KandinskyV22Pipeline (UNet with ``addition_embed_type="image"`` predicting mean and
  variance: 8 output channels; a 4-level MoVQ, so latents are 8x smaller than the picture).
- ``decoder-inpaint/``: the inpainting decoder (9-channel UNet); movq and scheduler are byte-identical
  copies of decoder's.
- ``controlnet-depth/``: the ControlNet decoder (UNet with ``addition_embed_type="image_hint"``, whose
  hint encoder downsamples 8x to meet the movq latents; 4 latent + 4 hint channels in); movq and
  scheduler copied from decoder.

A random PriorTransformer starts with ``clip_std`` = 0, which maps every prompt to the same embedding;
the builder sets ``clip_std`` and ``clip_mean`` so prompts stay apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import (
    MAX_TOKENS,
    TEXT_HIDDEN,
    Progress,
    clip_text_config,
    copy_shared,
    make_tokenizer,
    manual_seed,
)

if TYPE_CHECKING:  # heavy imports stay lazy so importing this module is cheap
    from diffusers import PriorTransformer, UNet2DConditionModel, VQModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

FOLDERS = ("prior", "decoder", "decoder-inpaint", "controlnet-depth")
#: Width of the CLIP image embedding the prior predicts and the decoders read (1280 in the real model).
EMBED_DIM = TEXT_HIDDEN
#: Side of the square picture the CLIP image encoder looks at (224 in the real model).
CLIP_IMAGE_SIZE = 32
#: Subfolders every decoder folder shares byte for byte with decoder/.
DECODER_SHARED = ("movq", "scheduler")


# --------------------------------------------------------------------------- prior


def make_text_encoder(tokenizer: CLIPTokenizer, seed: int) -> CLIPTextModelWithProjection:
    """A 2-layer CLIP text model whose projected pooled output is as wide as the image embedding."""
    from transformers import CLIPTextModelWithProjection

    config = clip_text_config(tokenizer, EMBED_DIM, 37, "gelu")
    manual_seed(seed, "prior/text_encoder")
    return CLIPTextModelWithProjection(config).eval()


def make_image_encoder(seed: int) -> CLIPVisionModelWithProjection:
    """A 2-layer CLIP vision model on 32 px pictures (16 patches), projected to the embedding width."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=EMBED_DIM,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=8,
        projection_dim=EMBED_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_channels=3,
        num_hidden_layers=2,
        hidden_act="gelu",
    )
    manual_seed(seed, "prior/image_encoder")
    return CLIPVisionModelWithProjection(config).eval()


def make_image_processor() -> Any:
    """CLIP's own preprocessing (resize, centre crop, normalise), at the tiny encoder's size."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
    )


def make_prior(seed: int) -> PriorTransformer:
    """A 1-layer PriorTransformer with a non-degenerate output scale (see the module docstring)."""
    import torch
    from diffusers import PriorTransformer

    manual_seed(seed, "prior/prior")
    prior = PriorTransformer(
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=1,
        embedding_dim=EMBED_DIM,
        num_embeddings=MAX_TOKENS,
        additional_embeddings=4,
    )
    with torch.no_grad():
        prior.clip_std.copy_(1.0 + 0.5 * torch.rand_like(prior.clip_std))
        prior.clip_mean.normal_(0.0, 0.5)
    return prior.eval()


def prior_scheduler() -> Any:
    """The real prior's scheduler: it predicts the clean embedding, clipped to +-10."""
    from diffusers import UnCLIPScheduler

    return UnCLIPScheduler(
        variance_type="fixed_small_log",
        prediction_type="sample",
        num_train_timesteps=1000,
        clip_sample=True,
        clip_sample_range=10.0,
    )


# --------------------------------------------------------------------------- decoders


def make_movq(seed: int) -> VQModel:
    """A 4-level MoVQ (8x, like the real one), attention only at the smallest level."""
    from diffusers import VQModel

    manual_seed(seed, "decoder/movq")
    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
        up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3,
        block_out_channels=[32, 32, 64, 64],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        vq_embed_dim=4,
        sample_size=64,
    ).eval()


def make_unet(seed: int, name: str, in_channels: int, embed_type: str) -> UNet2DConditionModel:
    """A decoder UNet: conditioned on the image embedding (time embedding and projected tokens),
    predicting noise and variance (8 channels out)."""
    from diffusers import UNet2DConditionModel

    manual_seed(seed, f"{name}/unet")
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=8,
        addition_embed_type=embed_type,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        encoder_hid_dim=EMBED_DIM,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=EMBED_DIM,
        attention_head_dim=8,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
    ).eval()


def wake_hint_encoder(unet: UNet2DConditionModel, seed: int) -> None:
    """PyTorch's default init shrinks the signal about 2x per layer of the 7-conv hint encoder, so a
    random one outputs almost nothing and the hint would not matter. Redraw its convs at a gain that
    keeps a 0 … 1 hint at about unit scale."""
    import math

    import torch

    manual_seed(seed, "controlnet-depth/hint")
    with torch.no_grad():
        for conv in unet.add_embedding.input_hint_block:
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.normal_(0.0, 1.6 / math.sqrt(conv.weight[0].numel()))
                conv.bias.zero_()


def decoder_scheduler() -> Any:
    """The real decoders' DDPM schedule (linear betas, epsilon prediction)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
        prediction_type="epsilon",
        thresholding=False,
    )


# --------------------------------------------------------------------------- folders


def _build_prior(dest: Path, seed: int, say: Progress) -> None:
    from diffusers import KandinskyV22PriorPipeline

    say("prior: tokenizer + text encoder + image encoder + prior transformer")
    tokenizer = make_tokenizer()
    pipe = KandinskyV22PriorPipeline(
        prior=make_prior(seed),
        image_encoder=make_image_encoder(seed),
        text_encoder=make_text_encoder(tokenizer, seed),
        tokenizer=tokenizer,
        scheduler=prior_scheduler(),
        image_processor=make_image_processor(),
    )
    pipe.save_pretrained(dest / "prior")


def _build_decoders(dest: Path, seed: int, say: Progress) -> None:
    from diffusers import KandinskyV22ControlnetPipeline, KandinskyV22InpaintPipeline, KandinskyV22Pipeline

    say("decoder: unet (4 channels in, 8 out) + movq (4 levels, 8x)")
    movq = make_movq(seed)
    unet = make_unet(seed, "decoder", 4, "image")
    decoder = KandinskyV22Pipeline(unet=unet, scheduler=decoder_scheduler(), movq=movq)
    decoder.save_pretrained(dest / "decoder")
    variants = {
        "decoder-inpaint": (KandinskyV22InpaintPipeline, 9, "image"),
        "controlnet-depth": (KandinskyV22ControlnetPipeline, 8, "image_hint"),
    }
    for name, (cls, channels, embed) in variants.items():
        say(f"{name}: unet ({channels} channels in, {embed})")
        unet = make_unet(seed, name, channels, embed)
        if embed == "image_hint":
            wake_hint_encoder(unet, seed)
        cls(unet=unet, scheduler=decoder_scheduler(), movq=movq).save_pretrained(dest / name)
        copy_shared(dest / "decoder", dest / name, DECODER_SHARED)


def build(dest: Path, seed: int = 0, progress: Progress | None = None) -> Path:
    """Build every kandinsky22 tiny folder under ``dest`` (created if missing) and return ``dest``."""
    say: Progress = progress or (lambda _msg: None)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _build_prior(dest, seed, say)
    _build_decoders(dest, seed, say)
    say("done")
    return dest
