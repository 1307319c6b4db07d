"""Stable Diffusion image variations (lambdalabs/sd-image-variations-diffusers): SD 1.x whose UNet
cross-attends to a picture's CLIP image embedding instead of a prompt's text embedding.

One role, `base`: a whole StableDiffusionImageVariationPipeline (CLIP vision encoder with projection,
its image processor, UNet, VAE, scheduler). The only op is `variation`.

Two things the lambdalabs model card asks for and the pipeline's defaults do not do: its better
weights live on the hub branch `v2.0`, and the encoder must see the picture squashed to its input size
by a plain bicubic resize without antialiasing (how the model was trained), not CLIP's usual
shortest-side resize and centre crop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionImageVariationPipeline
from PIL import Image

from ..config import Preset
from ..params import OpSpec
from .base import Family, Generation, load_pipeline

log = logging.getLogger("underpaint.families.sd_variation")

#: Guidance the lambdalabs model card uses; SD's usual 7.5 over-saturates image-conditioned results.
GUIDANCE = 3.0
#: Hub branches the model cards recommend over `main`, by repo id.
REVISIONS = {"lambdalabs/sd-image-variations-diffusers": "v2.0"}


class SDVariation(Family):
    name = "sd-variation"
    title = "Stable Diffusion image variations"
    about = (
        "Stable Diffusion image variations is SD 1.x retrained to take a picture where other models take "
        "a prompt: a CLIP image encoder sums the picture (or the selected part of it) up in one "
        "embedding, and the UNet paints new pictures that keep its subject, palette and mood but not its "
        "layout or details. No prompt, no negative prompt; low guidance (around 3) looks best. Native "
        "size 512 px. Handy to explore alternatives to a reference or to fill a selection with more of "
        "the same; it cannot be steered with words and does not preserve composition, faces or text."
    )
    roles: ClassVar[dict[str, str]] = {
        "base": "an image-variation checkpoint (StableDiffusionImageVariationPipeline folder or hub id)",
    }
    default_resolution = 512
    tiny_sources: ClassVar[dict[str, str]] = {"base": "base"}

    # -- offer ------------------------------------------------------------------------------------
    def ops(self, preset: Preset) -> list[str]:
        return ["variation"]

    def op_spec(self, op: str, spec: OpSpec, preset: Preset) -> OpSpec:
        return spec.changed(defaults={"guidance_scale": GUIDANCE})

    # -- components -------------------------------------------------------------------------------
    def load(self, models: Any, preset: Preset, role: str, source: str) -> Any:
        # The hub checkpoint ships a safety checker: painters' own pictures are not filtered.
        kwargs = {"safety_checker": None, "requires_safety_checker": False}
        cls = StableDiffusionImageVariationPipeline
        revision = REVISIONS.get(source)
        if revision is None:
            return load_pipeline(cls, preset, source, models.dtype, **kwargs)
        try:
            return load_pipeline(cls, preset, source, models.dtype, revision=revision, **kwargs)
        except OSError as exc:  # e.g. offline with only `main` in the cache: still better than nothing
            log.warning("%s: branch %s unavailable (%s); loading the default branch", source, revision, exc)
            return load_pipeline(cls, preset, source, models.dtype, **kwargs)

    def needs(self, preset: Preset, kind: str, extras: Sequence[str]) -> list[str]:
        return ["base"]

    def build_view(self, preset: Preset, kind: str, parts: dict[str, Any], extras: Sequence[str]) -> Any:
        """A pipeline of its own over base's very modules, so swapping its scheduler leaves base alone."""
        pipe = StableDiffusionImageVariationPipeline(
            **parts["base"].components, requires_safety_checker=False
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def warm(self, preset: Preset, op: str) -> list[tuple[str, tuple[str, ...]]]:
        return [("variation", ())]

    # -- ops --------------------------------------------------------------------------------------
    def variation(self, gen: Generation, image: Image.Image) -> list[Image.Image]:
        """New pictures at the working size, from the crop's CLIP image embedding."""
        params = gen.params
        pipe = gen.schedule(gen.view("variation"), space=self.preview_space)
        result = pipe(
            image=encoder_input(image, pipe.feature_extractor),
            width=image.width,
            height=image.height,
            num_inference_steps=params["steps"],
            guidance_scale=params["guidance_scale"],
            num_images_per_prompt=len(gen.seeds),
            generator=gen.generators(),
            output_type="pil",
        )
        return result.images


def encoder_input(image: Image.Image, processor: Any) -> torch.Tensor:
    """The picture as the model was trained to see it: squashed to the encoder's square input by a
    bicubic resize without antialiasing, then normalised with CLIP's mean and deviation."""
    size = (processor.crop_size["height"], processor.crop_size["width"])
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    batch = pixels.permute(2, 0, 1).unsqueeze(0)
    batch = F.interpolate(batch, size=size, mode="bicubic", align_corners=False, antialias=False)
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    return (batch - mean) / std
