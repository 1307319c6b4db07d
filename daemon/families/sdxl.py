"""Stable Diffusion XL: SD's latent recipe at 1024 px, with two CLIP text encoders and an optional
refiner that takes over the last, low-noise part of the denoising.

Components are cached per role: `base` is a whole StableDiffusionXLPipeline (both text encoders and
tokenizers, VAE, UNet, scheduler), loaded with the preset's `vae` in place of its own when one is set;
`refiner` and `inpaint` are only UNets (those checkpoints repeat base's VAE and second text encoder,
so reading them again would hold the same weights twice); `controlnet:<name>` are SDXL ControlNets.
Every op's pipeline is a view built with the diffusers constructors over those shared objects.

The handoff follows diffusers' own recipe: base runs with `denoising_end` and returns latents, the
refiner continues them with `denoising_start` at the same point of the same schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.models import MultiControlNetModel
from PIL import Image

from .. import p2p, prompts, ranking
from ..config import Preset
from ..params import OpSpec, Param
from ..prompts import Reader
from ..request import OpRequest
from .base import (
    CLIP_ROLE,
    Family,
    Generation,
    check_pickle,
    is_single_file,
    load_clip,
    load_model,
    load_pipeline,
    single_file_kwargs,
)

#: Ops whose spec gains `refine` when the preset has a refiner.
REFINED_OPS = ("txt2img", "sdedit", "inpaint", "reword")
DEFAULT_REFINE = 0.2  # diffusers' and Stability's usual split: base 80 %, refiner the last 20 %


def refine_param() -> Param:
    return Param(
        "refine",
        "float",
        DEFAULT_REFINE,
        "share of the denoising the refiner does (base stops at 1 - refine); 0 = base only; "
        "with 2 or more steps each model runs at least one",
        0.0,
        1.0,
    )


class SDXL(Family):
    name = "sdxl"
    title = "Stable Diffusion XL"
    about = (
        "SDXL works like Stable Diffusion 1.5 (it denoises an 8x smaller latent picture and a VAE "
        "decodes it) with a UNet about three times larger, two CLIP text encoders read together, and "
        "training at 1024 px that also tells the model the picture's size and crop. It composes "
        "large pictures better and follows longer prompts more closely than SD 1.5. A refiner, a "
        "second UNet trained only on the low-noise end, can take over the last part of the denoising "
        "(`refine`) to sharpen fine texture. Native size 1024 px: well below 768 px it falls apart. "
        "It is slower and needs far more memory (about 8 GB of GPU memory in half precision, more "
        "with the refiner), its own VAE overflows in float16 (presets name a fixed one), and it has "
        "fewer inpainting models and ControlNets than SD 1.5; text inside pictures is better but "
        "still unreliable."
    )
    roles: ClassVar[dict[str, str]] = {
        "base": "the SDXL base checkpoint (every op uses its VAE and both text encoders)",
        "refiner": "the SDXL refiner: only its UNet is loaded, it reuses base's VAE and second encoder",
        "inpaint": "an SDXL inpainting checkpoint (9-channel UNet); without it inpaint uses base",
        "vae": "a VAE that replaces base's when base loads (e.g. madebyollin/sdxl-vae-fp16-fix, "
        "because SDXL's own VAE overflows in float16)",
        "clip": CLIP_ROLE,
    }
    default_resolution = 1024
    preview_space = "sdxl"
    tiny_sources: ClassVar[dict[str, str]] = {
        "base": "base",
        "refiner": "refiner",
        "inpaint": "inpaint",
        "clip": "clip",
    }
    tiny_controlnets: ClassVar[dict[str, str]] = {"canny": "controlnet-canny"}
    tiny_resolution = 64

    # LoRAs go into base's UNet and both text encoders and the inpainting UNet; the refiner's UNet
    # (another architecture) runs without them.
    lora_roles: ClassVar[tuple[str, ...]] = ("base", "inpaint")
    lora_ops: ClassVar[tuple[str, ...]] = ("txt2img", "sdedit", "inpaint", "controlnet", "reword")

    views: ClassVar[dict[str, Any]] = {
        "txt2img": StableDiffusionXLPipeline,
        "img2img": StableDiffusionXLImg2ImgPipeline,
        "inpaint": StableDiffusionXLInpaintPipeline,
        "refiner_img2img": StableDiffusionXLImg2ImgPipeline,
        "refiner_inpaint": StableDiffusionXLInpaintPipeline,
        "controlnet": StableDiffusionXLControlNetPipeline,
        "controlnet_img2img": StableDiffusionXLControlNetImg2ImgPipeline,
        "controlnet_inpaint": StableDiffusionXLControlNetInpaintPipeline,
    }

    # -- offer ------------------------------------------------------------------------------------
    def ops(self, preset: Preset) -> list[str]:
        ops = ["txt2img", "sdedit", "inpaint"] + (["controlnet"] if preset.controlnets else [])
        return ops + ["reword"]

    def op_spec(self, op: str, spec: OpSpec, preset: Preset) -> OpSpec:
        if op in REFINED_OPS and "refiner" in preset.sources:
            spec = spec.changed(add=[refine_param()])
        if op == "reword":
            spec = p2p.reword_spec(spec)
        else:
            spec = prompts.text_spec(spec, prompts.WEIGHTED, prompts.MAX_TOKENS)
        return self.with_loras(op, self.ranked(op, spec, preset))

    def check(self, req: OpRequest) -> None:
        """Prompt syntax and length, in the windows of both text encoders (the refiner reads the second)."""
        prompts.check_weighted(req, self.title, [Reader("base"), Reader("base", "tokenizer_2")])
        ranking.check(req)

    # -- components -------------------------------------------------------------------------------
    def load(self, models: Any, preset: Preset, role: str, source: str) -> Any:
        dtype = models.dtype
        if role == "clip":
            return load_clip(preset, source, dtype)
        if role.startswith("controlnet:"):
            return load_model(ControlNetModel, preset, source, dtype)
        if role == "refiner":
            return load_model(
                UNet2DConditionModel, preset, source, dtype, "unet", StableDiffusionXLImg2ImgPipeline
            )
        if role == "inpaint":
            return load_model(
                UNet2DConditionModel, preset, source, dtype, "unet", StableDiffusionXLInpaintPipeline
            )
        extra: dict[str, Any] = {"add_watermarker": False}
        if preset.sources.get("vae"):
            extra["vae"] = load_vae(preset, preset.sources["vae"], dtype)
        return load_pipeline(StableDiffusionXLPipeline, preset, source, dtype, **extra)

    def cache_key(self, preset: Preset, role: str, source: str) -> str:
        """Base loads with the preset's replacement VAE inside it: presets that name the same base with
        another VAE must not share it."""
        vae = preset.sources.get("vae")
        return f"{source}|vae={vae}" if role == "base" and vae else source

    def needs(self, preset: Preset, kind: str, extras: Sequence[str]) -> list[str]:
        roles = ["base"]
        if kind.startswith("refiner"):
            roles.append("refiner")
        elif kind in ("inpaint", "controlnet_inpaint") and "inpaint" in preset.sources:
            roles.append("inpaint")
        return roles + [f"controlnet:{name}" for name in extras]

    def build_view(self, preset: Preset, kind: str, parts: dict[str, Any], extras: Sequence[str]) -> Any:
        base = parts["base"]
        if kind.startswith("refiner"):
            args = refiner_parts(base, parts["refiner"])
        else:
            args = base_parts(base)
        if kind in ("inpaint", "controlnet_inpaint") and "inpaint" in parts:
            args["unet"] = parts["inpaint"]
        if kind.startswith("controlnet"):
            nets = [parts[f"controlnet:{name}"] for name in extras]
            args["controlnet"] = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
        pipe = self.views[kind](**args)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def warm(self, preset: Preset, op: str) -> list[tuple[str, tuple[str, ...]]]:
        kind = {"sdedit": "img2img", "inpaint": "inpaint"}.get(op, "txt2img")
        views = [(kind, ())]
        if op in REFINED_OPS and "refiner" in preset.sources:
            views.append(("refiner_inpaint" if op == "inpaint" else "refiner_img2img", ()))
        return views

    # -- ops --------------------------------------------------------------------------------------
    def txt2img(self, gen: Generation, width: int, height: int) -> list[Image.Image]:
        size = {"width": width, "height": height}
        return self.refined(gen, ("txt2img", size), ("refiner_img2img", {}), strength=None)

    def img2img(self, gen: Generation, image: Image.Image, strength: float) -> list[Image.Image]:
        first = {"image": image, "strength": strength}
        return self.refined(gen, ("img2img", first), ("refiner_img2img", {}), strength)

    def inpaint(
        self, gen: Generation, image: Image.Image, mask: Image.Image, strength: float
    ) -> list[Image.Image]:
        # Without width/height the pipelines would work at the model's native size, not the crop's.
        size = {"mask_image": mask, "width": image.width, "height": image.height}
        first = {"image": image, "strength": strength, **size}
        return self.refined(gen, ("inpaint", first), ("refiner_inpaint", size), strength)

    def refined(
        self,
        gen: Generation,
        first: tuple[str, dict[str, Any]],
        then: tuple[str, dict[str, Any]],
        strength: float | None,
    ) -> list[Image.Image]:
        """Run base's view `first`; with `refine`, stop it early and let the refiner's view `then`
        finish the same latents (the generators carry on from base to refiner, image by image)."""
        pipe = gen.schedule(gen.view(first[0]), space=self.preview_space)
        text = prompts.sd_text(gen, pipe)
        split = handoff(pipe.scheduler, text["num_inference_steps"], strength, gen.params.get("refine", 0.0))
        if split is None:
            return pipe(**text, **first[1]).images
        fraction, base_steps, refiner_steps = split
        gen.steps.plan(base_steps, refiner_steps)
        latents = pipe(**text | first[1] | {"denoising_end": fraction, "output_type": "latent"}).images
        refiner = gen.schedule(gen.view(then[0]), space=self.preview_space)
        # The refiner reads the prompt with the second encoder only; the generators carry on.
        text = prompts.retext(text, gen, refiner)
        return refiner(**text, **then[1], image=latents, denoising_start=fraction).images

    def reword(
        self,
        gen: Generation,
        edit: p2p.Edit,
        size: tuple[int, int],
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
        strength: float = 1.0,
    ) -> list[p2p.Pair]:
        """The source job's views and arguments (as txt2img and inpaint call them), run by p2p; with
        `refine`, base's part of both prompts is the edit, and the refiner finishes each picture."""
        if image is None:
            first = ("txt2img", {"width": size[0], "height": size[1]})
            then: tuple[str, dict[str, Any]] = ("refiner_img2img", {})
            cut = None
        else:
            sized = {"mask_image": mask, "width": image.width, "height": image.height}
            first = ("inpaint", {"image": image, "strength": strength, **sized})
            then, cut = ("refiner_inpaint", sized), strength
        return [self.reworded(gen, edit, seed, first, then, cut) for seed in gen.seeds]

    def reworded(
        self,
        gen: Generation,
        edit: p2p.Edit,
        seed: int,
        first: tuple[str, dict[str, Any]],
        then: tuple[str, dict[str, Any]],
        strength: float | None,
    ) -> p2p.Pair:
        """One seed of `reword`. The refiner has attention of its own and only the low-noise end to
        paint: it finishes the edited picture as it would the plain job's (and the source picture
        too where a local blend needs its pixels)."""
        params = gen.params
        pipe = gen.schedule(gen.view(first[0]), space=self.preview_space)
        split = handoff(pipe.scheduler, params["steps"], strength, params.get("refine", 0.0))
        if split is None:
            return p2p.pair(p2p.run(gen, pipe, edit, seed, first[1]))
        fraction, base_steps, refiner_steps = split
        branches = [p2p.EDITED, p2p.SOURCE] if edit.blend else [p2p.EDITED]
        gen.steps.plan(base_steps, *[refiner_steps] * len(branches))
        args = first[1] | {"denoising_end": fraction}
        outcome = p2p.run(gen, pipe, edit, seed, args, output_type="latent")
        pictures: dict[int, Image.Image] = {}
        for branch in branches:
            refiner = gen.schedule(gen.view(then[0]), space=self.preview_space)
            text = prompts.encode(refiner, (edit.source, edit.edited)[branch], edit.negative)
            pictures[branch] = refiner(
                **text,
                **then[1],
                num_inference_steps=params["steps"],
                guidance_scale=params["guidance_scale"],
                num_images_per_prompt=1,
                generator=[outcome.generators[branch]],
                output_type="pil",
                image=outcome.images[branch],
                denoising_start=fraction,
            ).images[0]
        edited = pictures[p2p.EDITED]
        region = p2p.region_image(outcome.region, edited.size)
        return p2p.Pair(pictures.get(p2p.SOURCE), edited, region)

    def controlnet(
        self,
        gen: Generation,
        units: list[dict[str, Any]],
        maps: list[Image.Image],
        size: tuple[int, int],
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
    ) -> list[Image.Image]:
        nets = [u["model"] for u in units]
        args: dict[str, Any] = {
            "controlnet_conditioning_scale": _pick([u["scale"] for u in units]),
            "control_guidance_start": _pick([u["start"] for u in units]),
            "control_guidance_end": _pick([u["end"] for u in units]),
            "width": size[0],
            "height": size[1],
        }
        if image is None:
            kind, args["image"] = "controlnet", _pick(maps)
        else:
            args |= {"image": image, "control_image": _pick(maps), "strength": gen.params["strength"]}
            kind = "controlnet_img2img"
            if mask is not None:
                kind, args["mask_image"] = "controlnet_inpaint", mask
        pipe = gen.schedule(gen.view(kind, nets), space=self.preview_space)
        return pipe(**prompts.sd_text(gen, pipe), **args).images


# -- loading ------------------------------------------------------------------------------------------
def load_vae(preset: Preset, source: str, dtype: torch.dtype) -> Any:
    """The preset's replacement VAE: a VAE repo or folder, a pipeline folder's vae/, or a single file
    (configured by the vae/ of the preset's configs folder, when it names one). The preset's
    `variant` names base's weight files: VAE repos such as the fp16 fix have no variants."""
    preset = replace(preset, variant=None)
    if is_single_file(source):
        check_pickle(preset, source)
        kwargs = single_file_kwargs(preset, dtype)
        if "config" in kwargs:
            kwargs["subfolder"] = "vae"
        return AutoencoderKL.from_single_file(source, **kwargs)
    subfolder = "vae" if (Path(source) / "vae" / "config.json").is_file() else None
    return load_model(AutoencoderKL, preset, source, dtype, subfolder)


def base_parts(base: Any) -> dict[str, Any]:
    """Constructor arguments of a view over base's components."""
    return {
        "vae": base.vae,
        "text_encoder": base.text_encoder,
        "text_encoder_2": base.text_encoder_2,
        "tokenizer": base.tokenizer,
        "tokenizer_2": base.tokenizer_2,
        "unet": base.unet,
        "scheduler": base.scheduler,
        "force_zeros_for_empty_prompt": base.config.force_zeros_for_empty_prompt,
        "add_watermarker": False,
    }


def refiner_parts(base: Any, unet: Any) -> dict[str, Any]:
    """A refiner view: its own UNet over base's VAE and second encoder. It keeps base's scheduler
    config, so both halves of a handoff cut the very same timestep schedule."""
    return {
        "vae": base.vae,
        "text_encoder": None,
        "text_encoder_2": base.text_encoder_2,
        "tokenizer": None,
        "tokenizer_2": base.tokenizer_2,
        "unet": unet,
        "scheduler": base.scheduler,
        "requires_aesthetics_score": True,
        "force_zeros_for_empty_prompt": False,
        "add_watermarker": False,
    }


# -- the handoff --------------------------------------------------------------------------------------
def handoff(
    scheduler: Any, steps: int, strength: float | None, refine: float
) -> tuple[float, int, int] | None:
    """Where base hands over to the refiner: (denoising fraction, base steps, refiner steps), or None
    for base only (refine 0, or a single step to run).

    The fraction is `1 - refine`, cut on the job's own schedule the way diffusers cuts it. When that
    would leave one model without a step (few steps, a small strength), the cut moves to the nearest
    step boundary that gives each model one, so a non-zero `refine` always runs the refiner.
    """
    if refine <= 0:
        return None
    timesteps = _job_timesteps(scheduler, steps, strength)
    if len(timesteps) < 2:
        return None
    total = scheduler.config.num_train_timesteps
    fraction = 1.0 - refine
    cutoff = round(total - fraction * total)  # what diffusers computes from denoising_end
    base = sum(1 for t in timesteps if t >= cutoff)
    if not 0 < base < len(timesteps) or not 0 < fraction < 1:
        base = min(max(base, 1), len(timesteps) - 1)
        fraction = 1.0 - math.floor(timesteps[base - 1]) / total
        if not 0 < fraction < 1:
            return None
    return fraction, base, len(timesteps) - base


def _job_timesteps(scheduler: Any, steps: int, strength: float | None) -> list[float]:
    """The timesteps base's loop will run: the job's schedule, cut by `strength` as diffusers'
    img2img/inpaint `get_timesteps` does. Computed on a plain copy, so the job's own scheduler and
    its progress are untouched."""
    probe = type(scheduler).from_config(scheduler.config)
    probe.set_timesteps(steps)
    timesteps = [float(t) for t in probe.timesteps]
    if strength is not None:
        start = steps - min(int(steps * strength), steps)
        timesteps = timesteps[start * probe.order :]
    return timesteps


def _pick(values: list[Any]) -> Any:
    """Single units take scalars, several take lists (diffusers' MultiControlNet convention)."""
    return values[0] if len(values) == 1 else values
