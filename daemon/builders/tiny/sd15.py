"""Tiny, seeded, randomly initialised SD-1.x-style diffusers folders for offline tests.

Nothing here downloads anything: every component is constructed from a config and saved with
``save_pretrained`` so the daemon can load it through the very same ``from_pretrained`` path it
uses for real checkpoints. The weights are random, so any output is noise-like; that is expected.

Layout under the destination folder (see ``FOLDERS``):

- ``base/``: StableDiffusionPipeline (UNet 4 channels, 64 px native resolution, 8x VAE).
- ``inpaint/``: StableDiffusionInpaintPipeline (UNet 9 channels); vae, text_encoder, tokenizer
  and scheduler are byte-identical copies of base's.
- ``instruct/``: StableDiffusionInstructPix2PixPipeline (UNet 8 channels), shared parts as above.
- ``controlnet-{canny,lineart,scribble,depth}/``: ControlNetModel folders matching base's UNet.
- ``upscale-x4/``: StableDiffusionUpscalePipeline (UNet 7 channels, 4x VAE).
- ``upscale-latent-x2/``: StableDiffusionLatentUpscalePipeline (vae/text parts copied from base).
- ``clip/``: a CLIPModel with its tokenizer and image processor, for ranking pictures (``rank``).

Every text-conditioned UNet attends sharply (``sharpen_cross_attention``), as trained ones do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import (
    NATIVE_RESOLUTION,
    SHARED_PARTS,
    TEXT_HIDDEN,
    Progress,
    build_clip,
    controlnet_from_unet,
    copy_shared,
    keep_hint_scale,
    make_text_encoder,
    make_tokenizer,
    make_vae,
    manual_seed,
    no_safety,
    sd_scheduler,
    sharpen_cross_attention,
)

if TYPE_CHECKING:  # heavy imports stay lazy so importing this module is cheap
    from diffusers import ControlNetModel, UNet2DConditionModel

CONTROLNET_KINDS = ("canny", "lineart", "scribble", "depth")
FOLDERS = (
    "base",
    "inpaint",
    "instruct",
    *(f"controlnet-{kind}" for kind in CONTROLNET_KINDS),
    "upscale-x4",
    "upscale-latent-x2",
    "clip",
)


# --------------------------------------------------------------------------- models


def make_sd_unet(seed: int, in_channels: int, name: str) -> UNet2DConditionModel:
    """An SD-1.x-shaped UNet; attention only at the lower level keeps large sizes cheap."""
    from diffusers import UNet2DConditionModel

    manual_seed(seed, name)
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
    ).eval()
    return sharpen_cross_attention(unet)


def make_controlnet(unet: UNet2DConditionModel, seed: int, kind: str) -> ControlNetModel:
    """A ControlNet copied from the UNet; zero convs get small random weights so it matters."""
    # Four conditioning levels = three stride-2 convs = the VAE's 8x factor.
    controlnet = controlnet_from_unet(unet, (16, 16, 32, 32), seed, f"controlnet-{kind}", std=0.05)
    return keep_hint_scale(controlnet, seed, f"controlnet-{kind}")


def make_x4_unet(seed: int) -> UNet2DConditionModel:
    """The x4 upscaler's UNet (diffusers' dummy, but 1000 class embeds: noise_level <= 350)."""
    from diffusers import UNet2DConditionModel

    manual_seed(seed, "upscale-x4/unet")
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


def make_latent_x2_unet(seed: int) -> UNet2DConditionModel:
    """The latent x2 upscaler's K-diffusion UNet (from diffusers' fast-test dummy)."""
    from diffusers import UNet2DConditionModel

    manual_seed(seed, "upscale-latent-x2/unet")
    return UNet2DConditionModel(
        act_fn="gelu",
        attention_head_dim=8,
        norm_num_groups=None,
        block_out_channels=[32, 32, 64, 64],  # K blocks need widening levels
        # 64 ones/zeros of noise-level embedding + the text encoder's pooled output.
        time_cond_proj_dim=128 + TEXT_HIDDEN,
        conv_in_kernel=1,
        conv_out_kernel=1,
        cross_attention_dim=TEXT_HIDDEN,
        down_block_types=(
            "KDownBlock2D",
            "KCrossAttnDownBlock2D",
            "KCrossAttnDownBlock2D",
            "KCrossAttnDownBlock2D",
        ),
        in_channels=8,
        mid_block_type=None,
        only_cross_attention=False,
        out_channels=5,
        resnet_time_scale_shift="scale_shift",
        time_embedding_type="fourier",
        timestep_post_act="gelu",
        up_block_types=(
            "KCrossAttnUpBlock2D",
            "KCrossAttnUpBlock2D",
            "KCrossAttnUpBlock2D",
            "KUpBlock2D",
        ),
    ).eval()


# --------------------------------------------------------------------------- schedulers


def x4_schedulers() -> tuple[Any, Any]:
    """(low_res_scheduler, scheduler) shaped like stabilityai's x4 upscaler."""
    from diffusers import DDIMScheduler, DDPMScheduler

    low_res = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")
    main = DDIMScheduler(
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return low_res, main


# --------------------------------------------------------------------------- folders


def _build_base(dest: Path, seed: int, say: Progress) -> dict[str, Any]:
    """base/: the text-to-image pipeline whose vae/text parts everything else shares."""
    from diffusers import StableDiffusionPipeline

    say("base: tokenizer + text encoder")
    tokenizer = make_tokenizer()
    text_encoder = make_text_encoder(tokenizer, seed)
    say("base: vae (4 levels, 8x)")
    vae = make_vae(seed)
    say("base: unet (4 channels)")
    unet = make_sd_unet(seed, 4, "base/unet")
    parts = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet}
    pipe = StableDiffusionPipeline(**parts, scheduler=sd_scheduler(), **no_safety())
    pipe.save_pretrained(dest / "base")
    return parts


def _build_variant(dest: Path, seed: int, parts: dict[str, Any], name: str, say: Progress) -> None:
    """inpaint/ (9-channel UNet) or instruct/ (8-channel UNet) beside a copy of base's parts."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionInstructPix2PixPipeline

    channels, cls = {
        "inpaint": (9, StableDiffusionInpaintPipeline),
        "instruct": (8, StableDiffusionInstructPix2PixPipeline),
    }[name]
    say(f"{name}: unet ({channels} channels)")
    unet = make_sd_unet(seed, channels, f"{name}/unet")
    shared = {k: parts[k] for k in SHARED_PARTS}
    pipe = cls(**shared, unet=unet, scheduler=sd_scheduler(), **no_safety())
    pipe.save_pretrained(dest / name)
    copy_shared(dest / "base", dest / name, (*SHARED_PARTS, "scheduler"))


def _build_controlnets(dest: Path, seed: int, unet: UNet2DConditionModel, say: Progress) -> None:
    """controlnet-*/: one differently seeded ControlNet per control kind."""
    for kind in CONTROLNET_KINDS:
        say(f"controlnet-{kind}")
        make_controlnet(unet, seed, kind).save_pretrained(dest / f"controlnet-{kind}")


def _build_upscale_x4(dest: Path, seed: int, parts: dict[str, Any], say: Progress) -> None:
    """upscale-x4/: image-space latents, 3-level (4x) VAE, noise-level class embeddings."""
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


def _build_latent_x2(dest: Path, seed: int, parts: dict[str, Any], say: Progress) -> None:
    """upscale-latent-x2/: K-UNet on base's latents (needs >= 16x16 latents, i.e. 128 px)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionLatentUpscalePipeline

    say("upscale-latent-x2: unet (k-diffusion)")
    shared = {k: parts[k] for k in SHARED_PARTS}
    scheduler = EulerDiscreteScheduler(prediction_type="sample")
    pipe = StableDiffusionLatentUpscalePipeline(**shared, unet=make_latent_x2_unet(seed), scheduler=scheduler)
    pipe.save_pretrained(dest / "upscale-latent-x2")
    copy_shared(dest / "base", dest / "upscale-latent-x2")


def build(dest: Path, seed: int = 0, progress: Progress | None = None) -> Path:
    """Build every sd15 tiny folder under ``dest`` (created if missing) and return ``dest``."""
    say: Progress = progress or (lambda _msg: None)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    parts = _build_base(dest, seed, say)
    for name in ("inpaint", "instruct"):
        _build_variant(dest, seed, parts, name, say)
    _build_controlnets(dest, seed, parts["unet"], say)
    _build_upscale_x4(dest, seed, parts, say)
    _build_latent_x2(dest, seed, parts, say)
    say("clip (for ranking)")
    build_clip(dest / "clip", seed)
    say("done")
    return dest
