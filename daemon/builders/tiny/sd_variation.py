"""Tiny, seeded, randomly initialised Stable Diffusion image-variation folder for offline tests.

lambdalabs/sd-image-variations-diffusers is SD 1.x with the text encoder swapped for a CLIP image
encoder: the UNet cross-attends to the image's projected CLIP embedding (one token) instead of the
prompt's hidden states. The tiny copy keeps that wiring, the 8x VAE and SD's scheduler.

Layout under the destination folder (see ``FOLDERS``):

- ``base/``: StableDiffusionImageVariationPipeline (CLIPVisionModelWithProjection, CLIPImageProcessor,
  UNet with 4 channels, 8x VAE, PNDM), no safety checker.
"""

from __future__ import annotations

from pathlib import Path

from .common import Progress, make_vae, sd_scheduler
from .sd15 import make_sd_unet
from .unclip import make_feature_extractor, make_image_encoder

FOLDERS = ("base",)


def build(dest: Path, seed: int = 0, progress: Progress | None = None) -> Path:
    """Build the sd-variation tiny folder under ``dest`` (created if missing) and return ``dest``."""
    from diffusers import StableDiffusionImageVariationPipeline

    say: Progress = progress or (lambda _msg: None)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    say("base: image encoder + vae + unet")
    # The UNet's cross-attention width (32) is the image encoder's projection width.
    pipe = StableDiffusionImageVariationPipeline(
        vae=make_vae(seed),
        image_encoder=make_image_encoder(seed, "sd-variation/image_encoder"),
        unet=make_sd_unet(seed, 4, "sd-variation/unet"),
        scheduler=sd_scheduler(),
        safety_checker=None,
        feature_extractor=make_feature_extractor(),
        requires_safety_checker=False,
    )
    pipe.save_pretrained(dest / "base")
    say("done")
    return dest
