"""Stable Diffusion 2.x: the pipelines of SD 1.5 (`sd15.py`, which this module extends) over an
OpenCLIP text encoder, plus depth-to-image.

What differs from 1.5 lives in the weights' configs (a gelu text encoder, a tokenizer that pads with
"!", linear-projection UNets, v-prediction for the 768 model), which diffusers reads. What this module
adds: the checkpoints trained *from* the base (inpainting, depth) bring their own UNet and their own
scheduler (SD 2.1 predicts v, the inpainting and depth models predict noise), but never their VAE or
text encoder: those are the base's frozen ones, so they are neither downloaded nor loaded twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import StableDiffusionDepth2ImgPipeline, StableDiffusionInpaintPipeline, UNet2DConditionModel
from PIL import Image

from .. import prompts
from ..config import Preset
from ..errors import ErrorCode, RequestError
from ..ops.common import workspace
from ..request import OpRequest
from .base import CLIP_ROLE, Generation, is_single_file, load_model, load_pipeline
from .sd15 import NO_SAFETY, SD15

#: Components a partial load leaves out: the base's own are used instead.
FROM_BASE = {"vae": None, "text_encoder": None, "tokenizer": None}
#: View kinds that run the inpainting checkpoint's UNet (when the preset has one).
INPAINT_KINDS = ("inpaint", "controlnet_inpaint")
#: SD 2's VAE shrinks 8x; the depth map the pipeline conditions on is at latent size.
LATENT_FACTOR = 8


class SD2(SD15):
    name = "sd2"
    title = "Stable Diffusion 2.x"
    about = (
        "Stable Diffusion 2 works like 1.5 (a UNet cleans up an 8x smaller 'latent' picture that a VAE "
        "then decodes) but understands the prompt through a larger OpenCLIP text encoder, and its "
        "768 px model (2.1) predicts the change to make ('v') instead of the noise. Its depth model "
        "re-paints a picture while keeping its 3D layout, from its own depth estimate or from a depth "
        "layer you paint, which makes restyling a scene dependable; it also has an inpainting model and "
        "the x4 upscaler. Prompts need more description than with 1.5, artist names do little, and far "
        "fewer fine-tunes, LoRAs and ControlNets exist."
    )
    roles: ClassVar[dict[str, str]] = {
        "base": "the text-to-image checkpoint (every op uses its VAE and text encoder)",
        "inpaint": "an SD 2 inpainting checkpoint (9-channel UNet, own scheduler); without it inpaint "
        "uses base",
        "depth": "the depth-to-image checkpoint (5-channel UNet + DPT depth estimator; VAE and text "
        "encoder come from base)",
        "upscale_x4": "the x4 diffusion upscaler",
        "clip": CLIP_ROLE,
    }
    default_resolution = 768
    tiny_sources: ClassVar[dict[str, str]] = {
        "base": "base",
        "inpaint": "inpaint",
        "depth": "depth",
        "upscale_x4": "upscale-x4",
        "clip": "clip",
    }
    tiny_controlnets: ClassVar[dict[str, str]] = {"canny": "controlnet-canny"}
    views: ClassVar[dict[str, Any]] = {
        **{k: v for k, v in SD15.views.items() if k != "instruct"},
        "depth": StableDiffusionDepth2ImgPipeline,
    }

    # -- offer ------------------------------------------------------------------------------------
    def ops(self, preset: Preset) -> list[str]:
        ops = super().ops(preset)
        if "depth" in preset.sources:
            ops.insert(ops.index("inpaint") + 1, "depth")
        return ops

    def check(self, req: OpRequest) -> None:
        """The prompt (as for SD 1.5); and a client depth map must vary where the job works: the
        pipeline stretches the map's range to -1 … 1, and a single gray level has no range (the
        picture would come out as NaN)."""
        super().check(req)
        if req.op != "depth" or "depth" not in req.images:
            return
        ws = workspace(req)
        small = depth_at_latent_size(ws.crop(req.images["depth"].convert("L"), Image.BILINEAR), LATENT_FACTOR)
        if float(small.min()) == float(small.max()):
            raise RequestError(
                ErrorCode.INVALID_VALUE,
                "images.depth is one flat gray level where the picture is re-painted; a depth map "
                "needs near (light) and far (dark) parts. Send none to let the model estimate depth.",
                "images.depth",
            )

    # -- components -------------------------------------------------------------------------------
    def load(self, models: Any, preset: Preset, role: str, source: str) -> Any:
        if role == "depth":
            # No single-file form carries the DPT estimator; load_pipeline says so for such a source.
            return load_pipeline(StableDiffusionDepth2ImgPipeline, preset, source, models.dtype, **FROM_BASE)
        if role == "inpaint":
            return self._load_inpaint(preset, source, models.dtype)
        return super().load(models, preset, role, source)

    def _load_inpaint(self, preset: Preset, source: str, dtype: torch.dtype) -> Any:
        """The UNet and scheduler of an inpainting folder (a partial pipeline); from a single file only
        the UNet, which then runs with base's scheduler (the file does not say what it predicts)."""
        if is_single_file(source):
            return load_model(
                UNet2DConditionModel, preset, source, dtype, "unet", StableDiffusionInpaintPipeline
            )
        return load_pipeline(StableDiffusionInpaintPipeline, preset, source, dtype, **FROM_BASE, **NO_SAFETY)

    def needs(self, preset: Preset, kind: str, extras: Sequence[str]) -> list[str]:
        if kind == "depth":
            return ["base", "depth"]
        return super().needs(preset, kind, extras)

    def build_view(self, preset: Preset, kind: str, parts: dict[str, Any], extras: Sequence[str]) -> Any:
        if kind == "depth":
            return self._depth_view(parts["base"], parts["depth"])
        own = parts.get("inpaint") if kind in INPAINT_KINDS else None
        if own is None:
            return super().build_view(preset, kind, parts, extras)
        pipe = super().build_view(preset, kind, {**parts, "inpaint": getattr(own, "unet", own)}, extras)
        pipe.scheduler = getattr(own, "scheduler", pipe.scheduler)
        return pipe

    def _depth_view(self, base: Any, depth: Any) -> Any:
        pipe = StableDiffusionDepth2ImgPipeline(
            vae=base.vae,
            text_encoder=base.text_encoder,
            tokenizer=base.tokenizer,
            unet=depth.unet,
            scheduler=depth.scheduler,
            depth_estimator=depth.depth_estimator,
            feature_extractor=depth.feature_extractor,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def warm(self, preset: Preset, op: str) -> list[tuple[str, tuple[str, ...]]]:
        if op == "depth":
            return [("depth", ())]
        return super().warm(preset, op)

    # -- ops --------------------------------------------------------------------------------------
    def depth(
        self, gen: Generation, image: Image.Image, depth: Image.Image | None, strength: float
    ) -> list[Image.Image]:
        pipe = gen.schedule(gen.view("depth"), space=self.preview_space)
        args = prompts.sd_text(gen, pipe) | {"image": image, "strength": strength}
        if depth is not None:
            args["depth_map"] = depth_at_latent_size(depth, pipe.vae_scale_factor)
        return pipe(**args).images


def depth_at_latent_size(depth: Image.Image, factor: int) -> torch.Tensor:
    """A client's 8-bit depth map (white = near, like the estimator's inverse depth) as the (1, h, w)
    tensor the depth pipeline takes, already at latent size: averaged over each latent pixel's area,
    where the pipeline's own bicubic shrink would skip most pixels of a painted map."""
    size = (max(1, depth.width // factor), max(1, depth.height // factor))
    small = depth.convert("F").resize(size, Image.BOX)
    return torch.from_numpy(np.asarray(small, dtype=np.float32).copy())[None]
