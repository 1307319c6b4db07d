"""Tiny, seeded, randomly initialised Stable Diffusion 2.x folders, shaped like the real ones where it
matters to the code that loads them.

What makes them SD 2 rather than SD 1.5 (the traps a loader must get right):

- the text encoder is OpenCLIP-H shaped: a CLIPTextModel with plain ``gelu`` and a wider hidden size
  (1024 vs 768 in real weights, 64 vs 32 here), and its tokenizer pads with ``"!"``;
- UNets use linear projections in their transformers (``use_linear_projection``); the 768 base also
  upcasts attention and predicts *v* (``prediction_type="v_prediction"``);
- the inpainting and depth checkpoints were trained from the 512 epsilon model: they keep their own
  (epsilon) scheduler while sharing the frozen VAE and text encoder with base.

Layout under the destination folder (see ``FOLDERS``):

- ``base/``: StableDiffusionPipeline (4-channel UNet, 64 px native, 8x VAE, DDIM v-prediction).
- ``inpaint/``: StableDiffusionInpaintPipeline (9-channel UNet, PNDM epsilon).
- ``depth/``: StableDiffusionDepth2ImgPipeline (5-channel UNet, random plain-ViT DPT estimator and its
  image processor, PNDM epsilon).
- ``controlnet-canny/``: a ControlNetModel matching base's UNet.
- ``upscale-x4/``: StableDiffusionUpscalePipeline (7-channel UNet, 4x VAE) over base's text encoder.
- ``clip/``: a CLIPModel with its tokenizer and image processor, for ranking pictures (``rank``).

Subfolders named in ``SHARED_PARTS`` are byte-identical copies of base's, as in the real repos.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import (
    NATIVE_RESOLUTION,
    SHARED_PARTS,
    Progress,
    build_clip,
    clip_text_config,
    controlnet_from_unet,
    copy_shared,
    make_openclip_tokenizer,
    make_vae,
    manual_seed,
    no_safety,
    sd_scheduler,
    sharpen_cross_attention,
)
from .sd15 import x4_schedulers

if TYPE_CHECKING:  # heavy imports stay lazy so importing this module is cheap
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, DPTForDepthEstimation, DPTImageProcessor

FOLDERS = ("base", "inpaint", "depth", "controlnet-canny", "upscale-x4", "clip")

#: Width of the tiny OpenCLIP-shaped text encoder (= the UNets' cross-attention width).
TEXT_HIDDEN = 64
#: Side the tiny DPT estimator works at (its image processor resizes every picture to it).
DEPTH_SIDE = 32


# --------------------------------------------------------------------------- models


def make_text_encoder(tokenizer: CLIPTokenizer, seed: int) -> CLIPTextModel:
    """A 2-layer CLIP text model with OpenCLIP's plain gelu (SD 1.x's CLIP uses quick_gelu)."""
    from transformers import CLIPTextModel

    config = clip_text_config(tokenizer, TEXT_HIDDEN, 4 * TEXT_HIDDEN, "gelu")
    manual_seed(seed, "sd2/text_encoder")
    return CLIPTextModel(config).eval()


def make_unet(seed: int, in_channels: int, name: str, upcast: bool = False) -> UNet2DConditionModel:
    """An SD-2-shaped UNet: linear projections; `upcast` attention like the 768-v model."""
    from diffusers import UNet2DConditionModel

    manual_seed(seed, f"sd2/{name}")
    unet = UNet2DConditionModel(
        sample_size=NATIVE_RESOLUTION // 8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 32),
        layers_per_block=1,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
        use_linear_projection=True,
        upcast_attention=upcast,
    ).eval()
    return sharpen_cross_attention(unet)


def make_depth_estimator(seed: int) -> DPTForDepthEstimation:
    """A plain-ViT DPT (the real one is DPT-Hybrid). Its default init (std 0.02) leaves the ReLU head
    at ~0 everywhere, a flat map the pipeline cannot normalise: a wider init gives real variation."""
    from transformers import DPTConfig, DPTForDepthEstimation

    config = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=DEPTH_SIDE,
        patch_size=8,
        is_hybrid=False,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[16, 16, 32, 32],
        fusion_hidden_size=16,
        initializer_range=0.2,
    )
    manual_seed(seed, "sd2/depth/depth_estimator")
    return DPTForDepthEstimation(config).eval()


def make_depth_processor() -> DPTImageProcessor:
    from transformers import DPTImageProcessor

    return DPTImageProcessor(size={"height": DEPTH_SIDE, "width": DEPTH_SIDE})


def make_x4_unet(seed: int) -> UNet2DConditionModel:
    """The x4 upscaler's UNet: image + noisy latents in, noise level as a class embedding (<= 350)."""
    from diffusers import UNet2DConditionModel

    manual_seed(seed, "sd2/upscale-x4/unet")
    return UNet2DConditionModel(
        sample_size=NATIVE_RESOLUTION,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 32, 32),
        layers_per_block=1,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        use_linear_projection=True,
        only_cross_attention=(True, True, False),
        num_class_embeds=1000,
    ).eval()


# --------------------------------------------------------------------------- schedulers


def v_scheduler() -> Any:
    """SD 2.1 (768)'s scheduler: DDIM predicting v."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


# --------------------------------------------------------------------------- folders


def _build_base(dest: Path, seed: int, say: Progress) -> dict[str, Any]:
    """base/: the 768-v-style text-to-image pipeline whose VAE and text parts the others share."""
    from diffusers import StableDiffusionPipeline

    say("base: tokenizer + text encoder (gelu, '!' padding)")
    tokenizer = make_openclip_tokenizer()
    text_encoder = make_text_encoder(tokenizer, seed)
    say("base: vae (4 levels, 8x)")
    vae = make_vae(seed)
    say("base: unet (linear projection, upcast attention, v-prediction)")
    unet = make_unet(seed, 4, "base/unet", upcast=True)
    parts = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet}
    StableDiffusionPipeline(**parts, scheduler=v_scheduler(), **no_safety()).save_pretrained(dest / "base")
    return parts


def _build_inpaint(dest: Path, seed: int, parts: dict[str, Any], say: Progress) -> None:
    from diffusers import StableDiffusionInpaintPipeline

    say("inpaint: unet (9 channels, epsilon)")
    shared = {k: parts[k] for k in SHARED_PARTS}
    unet = make_unet(seed, 9, "inpaint/unet")
    pipe = StableDiffusionInpaintPipeline(**shared, unet=unet, scheduler=sd_scheduler(), **no_safety())
    pipe.save_pretrained(dest / "inpaint")
    copy_shared(dest / "base", dest / "inpaint")


def _build_depth(dest: Path, seed: int, parts: dict[str, Any], say: Progress) -> None:
    from diffusers import StableDiffusionDepth2ImgPipeline

    say("depth: unet (5 channels, epsilon) + DPT estimator")
    shared = {k: parts[k] for k in SHARED_PARTS}
    pipe = StableDiffusionDepth2ImgPipeline(
        **shared,
        unet=make_unet(seed, 5, "depth/unet"),
        scheduler=sd_scheduler(),
        depth_estimator=make_depth_estimator(seed),
        feature_extractor=make_depth_processor(),
    )
    pipe.save_pretrained(dest / "depth")
    copy_shared(dest / "base", dest / "depth")


def _build_controlnet(dest: Path, seed: int, unet: UNet2DConditionModel, say: Progress) -> None:
    say("controlnet-canny")
    # Four conditioning levels = three stride-2 convs = the VAE's 8x factor.
    controlnet = controlnet_from_unet(unet, (16, 16, 32, 32), seed, "sd2/controlnet-canny", std=0.05)
    controlnet.save_pretrained(dest / "controlnet-canny")


def _build_upscale_x4(dest: Path, seed: int, parts: dict[str, Any], say: Progress) -> None:
    """upscale-x4/: the real x4 upscaler reads prompts with SD 2's OpenCLIP encoder, so this one does."""
    from diffusers import StableDiffusionUpscalePipeline

    say("upscale-x4: unet (7 channels) + vae (3 levels, 4x)")
    low_res_scheduler, scheduler = x4_schedulers()
    pipe = StableDiffusionUpscalePipeline(
        vae=make_vae(seed, levels=3, scaling_factor=0.08333),
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=make_x4_unet(seed),
        low_res_scheduler=low_res_scheduler,
        scheduler=scheduler,
        max_noise_level=350,
    )
    pipe.save_pretrained(dest / "upscale-x4")
    copy_shared(dest / "base", dest / "upscale-x4", ("text_encoder", "tokenizer"))


def build(dest: Path, seed: int = 0, progress: Progress | None = None) -> Path:
    """Build every sd2 tiny folder under ``dest`` (created if missing) and return ``dest``."""
    say: Progress = progress or (lambda _msg: None)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    parts = _build_base(dest, seed, say)
    _build_inpaint(dest, seed, parts, say)
    _build_depth(dest, seed, parts, say)
    _build_controlnet(dest, seed, parts["unet"], say)
    _build_upscale_x4(dest, seed, parts, say)
    say("clip (for ranking)")
    build_clip(dest / "clip", seed)
    say("done")
    return dest
