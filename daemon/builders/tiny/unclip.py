"""Tiny, seeded, randomly initialised unCLIP (Karlo) folders for offline tests.

Karlo is a cascade: a prior turns the CLIP text embedding into a CLIP image embedding, a pixel-space
decoder paints a small picture from it (64 px in Karlo) and two super-resolution UNets bring it to 4x
that size (256 px). The tiny copy keeps the cascade and the 4x factor at 16 -> 64 px.

Layout under the destination folder (see ``FOLDERS``):

- ``base/``: UnCLIPPipeline (prior, decoder, text_proj, super_res_first/last, CLIP text encoder with
  projection, tokenizer, three UnCLIPSchedulers), like kakaobrain/karlo-v1-alpha.
- ``variation/``: UnCLIPImageVariationPipeline, like kakaobrain/karlo-v1-alpha-image-variations: a
  CLIP image encoder and its processor beside byte-identical copies of base's decoder side.

The prior's ``clip_mean``/``clip_std`` start at zero in diffusers, which would map every prompt to the
same image embedding: they get real spreads here so that prompts lead to different pictures.
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
    from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

FOLDERS = ("base", "variation")

#: Pixel side of the decoder's picture and of the super-resolution output (Karlo: 64 and 256).
DECODER_SIZE = 16
OUTPUT_SIZE = 64
#: CLIP embedding width shared by text encoder, image encoder, prior and text_proj (Karlo: 768).
CLIP_DIM = TEXT_HIDDEN
DECODER_CHANNELS = (32, 64)
#: The super-resolution UNets run at the output size: kept narrow so that stays cheap on a CPU.
SUPER_RES_CHANNELS = (16, 32)
#: Image side the tiny CLIP vision tower reads (Karlo's ViT-L/14: 224).
VISION_SIZE = 32
#: Subfolders the variation folder shares with base, byte for byte.
DECODER_PARTS = (
    "decoder",
    "text_encoder",
    "tokenizer",
    "text_proj",
    "super_res_first",
    "super_res_last",
    "decoder_scheduler",
    "super_res_scheduler",
)


# --------------------------------------------------------------------------- models


def make_text_encoder(tokenizer: CLIPTokenizer, seed: int) -> CLIPTextModelWithProjection:
    """unCLIP reads both the projected text embedding and the hidden states."""
    from transformers import CLIPTextModelWithProjection

    manual_seed(seed, "unclip/text_encoder")
    return CLIPTextModelWithProjection(clip_text_config(tokenizer, projection_dim=CLIP_DIM)).eval()


def make_prior(seed: int) -> PriorTransformer:
    """A one-layer prior whose output statistics are not degenerate (see the module doc)."""
    import torch
    from diffusers import PriorTransformer

    manual_seed(seed, "unclip/prior")
    prior = PriorTransformer(
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=1,
        embedding_dim=CLIP_DIM,
        num_embeddings=MAX_TOKENS,
        additional_embeddings=4,
    )
    with torch.no_grad():
        prior.clip_mean.normal_(0.0, 0.5)
        prior.clip_std.uniform_(0.5, 1.5)
    return prior.eval()


def make_text_proj(seed: int) -> Any:
    """Projects the image embedding into the decoder's time embedding and extra context tokens."""
    import torch
    from diffusers.pipelines.deprecated.unclip import UnCLIPTextProjModel

    manual_seed(seed, "unclip/text_proj")
    proj = UnCLIPTextProjModel(
        clip_extra_context_tokens=4,
        clip_embeddings_dim=CLIP_DIM,
        time_embed_dim=DECODER_CHANNELS[0] * 4,
        cross_attention_dim=CLIP_DIM,
    )
    with torch.no_grad():  # trained models have a non-zero "no image" embedding for guidance
        proj.learned_classifier_free_guidance_embeddings.normal_(0.0, 1.0)
    return proj.eval()


def make_decoder(seed: int) -> UNet2DConditionModel:
    """Pixel-space decoder: RGB in, mean and variance out (learned-range scheduler)."""
    from diffusers import UNet2DConditionModel

    manual_seed(seed, "unclip/decoder")
    return UNet2DConditionModel(
        sample_size=DECODER_SIZE,
        in_channels=3,
        out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=DECODER_CHANNELS,
        layers_per_block=1,
        cross_attention_dim=CLIP_DIM,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type="identity",
    ).eval()


def make_super_res(seed: int, name: str) -> UNet2DModel:
    """Super resolution: noise and the upsampled small picture in (6 channels), RGB out."""
    from diffusers import UNet2DModel

    manual_seed(seed, f"unclip/{name}")
    return UNet2DModel(
        sample_size=OUTPUT_SIZE,
        in_channels=6,
        out_channels=3,
        down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
        up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
        block_out_channels=SUPER_RES_CHANNELS,
        layers_per_block=1,
        norm_num_groups=8,
    ).eval()


def make_image_encoder(seed: int, name: str = "unclip/image_encoder") -> CLIPVisionModelWithProjection:
    """A CLIP vision tower whose projected embedding has the prior's width."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=VISION_SIZE,
        patch_size=4,
        projection_dim=CLIP_DIM,
        hidden_act="quick_gelu",
    )
    manual_seed(seed, name)
    return CLIPVisionModelWithProjection(config).eval()


def make_feature_extractor(size: int = VISION_SIZE) -> CLIPImageProcessor:
    """CLIP's own preprocessing (shortest side, centre crop, CLIP mean/std) at the tiny size."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def make_schedulers() -> dict[str, Any]:
    """Karlo's three schedulers: the prior predicts the sample, the decoder learns its variance."""
    from diffusers import UnCLIPScheduler

    return {
        "prior_scheduler": UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
        ),
        "decoder_scheduler": UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon"),
        "super_res_scheduler": UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon"),
    }


# --------------------------------------------------------------------------- folders


def _build_base(dest: Path, seed: int, say: Progress) -> dict[str, Any]:
    """base/: the text-to-image cascade."""
    from diffusers.pipelines.deprecated.unclip import UnCLIPPipeline

    say("base: tokenizer + text encoder + prior")
    tokenizer = make_tokenizer()
    parts: dict[str, Any] = {
        "tokenizer": tokenizer,
        "text_encoder": make_text_encoder(tokenizer, seed),
        "prior": make_prior(seed),
        "text_proj": make_text_proj(seed),
    }
    say("base: decoder + super resolution")
    parts |= {
        "decoder": make_decoder(seed),
        "super_res_first": make_super_res(seed, "super_res_first"),
        "super_res_last": make_super_res(seed, "super_res_last"),
    }
    schedulers = make_schedulers()
    UnCLIPPipeline(**parts, **schedulers).save_pretrained(dest / "base")
    return parts | schedulers


def _build_variation(dest: Path, seed: int, parts: dict[str, Any], say: Progress) -> None:
    """variation/: base's decoder side plus a CLIP image encoder."""
    from diffusers.pipelines.deprecated.unclip import UnCLIPImageVariationPipeline

    say("variation: image encoder")
    shared = {k: parts[k] for k in DECODER_PARTS}
    pipe = UnCLIPImageVariationPipeline(
        **shared, image_encoder=make_image_encoder(seed), feature_extractor=make_feature_extractor()
    )
    pipe.save_pretrained(dest / "variation")
    copy_shared(dest / "base", dest / "variation", DECODER_PARTS)


def build(dest: Path, seed: int = 0, progress: Progress | None = None) -> Path:
    """Build both unclip tiny folders under ``dest`` (created if missing) and return ``dest``."""
    say: Progress = progress or (lambda _msg: None)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    parts = _build_base(dest, seed, say)
    _build_variation(dest, seed, parts, say)
    say("done")
    return dest
