"""Stable Diffusion 1.x: a UNet denoising 4-channel latents of an 8x VAE, steered by one CLIP text
encoder. Every op of Underpaint started here; SD 2.x (`sd2.py`) reuses this module.

Components are cached per role: `base` is a whole StableDiffusionPipeline (UNet, VAE, text encoder,
tokenizer, scheduler); `inpaint` and `instruct` are only UNets (those checkpoints share base's VAE and
text encoder); `controlnet:<name>`, `upscale_x4` and `upscale_x2` are their own. The pipeline of each
op is a view built with the diffusers constructors over those shared objects, so switching ops loads
nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionLatentUpscalePipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from diffusers.models import MultiControlNetModel
from PIL import Image

from .. import p2p, prompts, ranking
from ..config import Preset
from ..params import OpSpec
from ..prompts import Reader
from ..request import OpRequest
from .base import CLIP_ROLE, Family, Generation, load_clip, load_model, load_pipeline

NO_SAFETY = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

UPSCALERS = {"upscale_x4": StableDiffusionUpscalePipeline, "upscale_x2": StableDiffusionLatentUpscalePipeline}


class SD15(Family):
    name = "sd15"
    title = "Stable Diffusion 1.x"
    about = (
        "Stable Diffusion 1.5 paints in a compressed 'latent' space (an 8x smaller picture of 4 "
        "channels) and decodes it with a VAE; a CLIP text encoder turns the prompt into guidance. "
        "Native size 512 px. The best-supported family: inpainting and InstructPix2Pix checkpoints, "
        "many ControlNets, countless fine-tunes and LoRAs, fast on modest GPUs. Weak at readable text, "
        "hands and anything far from 512 px; prompts follow loosely."
    )
    roles: ClassVar[dict[str, str]] = {
        "base": "the text-to-image checkpoint (every op uses its VAE and text encoder)",
        "inpaint": "an inpainting checkpoint (9-channel UNet); without it inpaint uses base",
        "instruct": "an InstructPix2Pix checkpoint (8-channel UNet)",
        "upscale_x4": "the x4 diffusion upscaler",
        "upscale_x2": "the latent x2 upscaler",
        "clip": CLIP_ROLE,
    }
    default_resolution = 512
    tiny_sources: ClassVar[dict[str, str]] = {
        "base": "base",
        "inpaint": "inpaint",
        "instruct": "instruct",
        "upscale_x4": "upscale-x4",
        "upscale_x2": "upscale-latent-x2",
        "clip": "clip",
    }
    tiny_controlnets: ClassVar[dict[str, str]] = {
        k: f"controlnet-{k}" for k in ("canny", "lineart", "scribble", "depth")
    }

    # LoRAs go into base's UNet and text encoder and the inpainting / InstructPix2Pix UNets (same
    # blocks); the upscalers take none.
    lora_roles: ClassVar[tuple[str, ...]] = ("base", "inpaint", "instruct")
    lora_ops: ClassVar[tuple[str, ...]] = ("txt2img", "sdedit", "inpaint", "controlnet", "instruct", "reword")

    # Pipeline class of each view kind; subclasses (SD 2.x) extend it.
    views: ClassVar[dict[str, Any]] = {
        "txt2img": StableDiffusionPipeline,
        "img2img": StableDiffusionImg2ImgPipeline,
        "inpaint": StableDiffusionInpaintPipeline,
        "instruct": StableDiffusionInstructPix2PixPipeline,
        "controlnet": StableDiffusionControlNetPipeline,
        "controlnet_img2img": StableDiffusionControlNetImg2ImgPipeline,
        "controlnet_inpaint": StableDiffusionControlNetInpaintPipeline,
    }

    # -- offer ------------------------------------------------------------------------------------
    def ops(self, preset: Preset) -> list[str]:
        ops = ["txt2img", "sdedit", "inpaint"]
        if preset.controlnets:
            ops.append("controlnet")
        if "instruct" in preset.sources:
            ops.append("instruct")
        if self.upscale_factors(preset):
            ops.append("upscale")
        return ops + ["reword"]

    def upscale_factors(self, preset: Preset) -> tuple[int, ...]:
        return tuple(f for f in (4, 2) if f"upscale_x{f}" in preset.sources)

    def op_spec(self, op: str, spec: OpSpec, preset: Preset) -> OpSpec:
        note = ""
        if op == "upscale":
            factors = self.upscale_factors(preset)
            factor = replace(spec.params["factor"], choices=factors, default=factors[0])
            spec = spec.changed(add=[factor])
            if 2 in factors:
                note = f"; the x2 upscaler reads it plain, up to {prompts.WINDOW} tokens"
        if op == "reword":
            spec = p2p.reword_spec(spec)
        else:
            spec = prompts.text_spec(spec, prompts.WEIGHTED, prompts.MAX_TOKENS, note)
        return self.with_loras(op, self.ranked(op, spec, preset))

    def check(self, req: OpRequest) -> None:
        """Prompt syntax and length, counted with the tokenizer of the text encoder the op uses."""
        if req.op == "upscale" and req.params["factor"] == 2:
            # The latent upscaler reads the encoder's last layer before its final norm, which compel
            # does not produce: plain text in one window there.
            why = "reads the prompt plain in its x2 latent upscaler"
            prompts.check_plain(req, self.title, why, [Reader("upscale_x2", limit=prompts.WINDOW)])
        else:
            role = "upscale_x4" if req.op == "upscale" else "base"
            prompts.check_weighted(req, self.title, [Reader(role)])
        ranking.check(req)

    # -- components -------------------------------------------------------------------------------
    def load(self, models: Any, preset: Preset, role: str, source: str) -> Any:
        dtype = models.dtype
        if role == "clip":
            return load_clip(preset, source, dtype)
        if role.startswith("controlnet:"):
            return load_model(ControlNetModel, preset, source, dtype)
        if role in ("inpaint", "instruct"):
            single = StableDiffusionInpaintPipeline if role == "inpaint" else StableDiffusionPipeline
            return load_model(UNet2DConditionModel, preset, source, dtype, "unet", single)
        if role in UPSCALERS:
            return load_pipeline(UPSCALERS[role], preset, source, dtype)
        return load_pipeline(self.views["txt2img"], preset, source, dtype, **self.base_kwargs())

    def base_kwargs(self) -> dict[str, Any]:
        return {"safety_checker": None, "requires_safety_checker": False}

    def needs(self, preset: Preset, kind: str, extras: Sequence[str]) -> list[str]:
        if kind in UPSCALERS:
            return [kind]
        roles = ["base"]
        if kind in ("inpaint", "controlnet_inpaint") and "inpaint" in preset.sources:
            roles.append("inpaint")
        if kind == "instruct":
            roles.append("instruct")
        return roles + [f"controlnet:{name}" for name in extras]

    def build_view(self, preset: Preset, kind: str, parts: dict[str, Any], extras: Sequence[str]) -> Any:
        if kind in UPSCALERS:
            return parts[kind]
        base = parts["base"]
        shared: dict[str, Any] = {
            "vae": base.vae,
            "text_encoder": base.text_encoder,
            "tokenizer": base.tokenizer,
            "unet": base.unet,
            "scheduler": base.scheduler,
            **NO_SAFETY,
        }
        if kind in ("inpaint", "controlnet_inpaint") and "inpaint" in parts:
            shared["unet"] = parts["inpaint"]
        if kind == "instruct":
            shared["unet"] = parts["instruct"]
        if kind.startswith("controlnet"):
            nets = [parts[f"controlnet:{name}"] for name in extras]
            shared["controlnet"] = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
        pipe = self.views[kind](**shared)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def warm(self, preset: Preset, op: str) -> list[tuple[str, tuple[str, ...]]]:
        kind = {"inpaint": "inpaint", "instruct": "instruct"}.get(op, "txt2img")
        if op == "upscale":
            kind = f"upscale_x{self.upscale_factors(preset)[0]}"
        return [(kind, ())]

    # -- ops --------------------------------------------------------------------------------------
    def run(self, gen: Generation, kind: str, extras: Sequence[str] = (), **kwargs: Any) -> list[Image.Image]:
        """Call the view of `kind` with the job's text, seeds and scheduler, plus `kwargs`."""
        pipe = gen.schedule(gen.view(kind, extras), space=self.preview_space)
        args = prompts.sd_text(gen, pipe) | kwargs
        return pipe(**args).images

    def txt2img(self, gen: Generation, width: int, height: int) -> list[Image.Image]:
        return self.run(gen, "txt2img", width=width, height=height)

    def img2img(self, gen: Generation, image: Image.Image, strength: float) -> list[Image.Image]:
        return self.run(gen, "img2img", image=image, strength=strength)

    def inpaint(
        self, gen: Generation, image: Image.Image, mask: Image.Image, strength: float
    ) -> list[Image.Image]:
        # Without width/height the pipeline would work at the model's native size, not the crop's.
        return self.run(
            gen,
            "inpaint",
            image=image,
            mask_image=mask,
            width=image.width,
            height=image.height,
            strength=strength,
        )

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
        args = {
            "controlnet_conditioning_scale": _pick([u["scale"] for u in units]),
            "control_guidance_start": _pick([u["start"] for u in units]),
            "control_guidance_end": _pick([u["end"] for u in units]),
            "width": size[0],
            "height": size[1],
        }
        if image is None:
            return self.run(gen, "controlnet", nets, image=_pick(maps), **args)
        args |= {"image": image, "control_image": _pick(maps), "strength": gen.params["strength"]}
        if mask is None:
            return self.run(gen, "controlnet_img2img", nets, **args)
        return self.run(gen, "controlnet_inpaint", nets, mask_image=mask, **args)

    def instruct(self, gen: Generation, image: Image.Image) -> list[Image.Image]:
        pipe = gen.schedule(gen.view("instruct"), space=self.preview_space)
        text = prompts.sd_text(gen, pipe, field="instruction")
        return pipe(**text, image=image, image_guidance_scale=gen.params["image_guidance_scale"]).images

    def upscale(self, gen: Generation, image: Image.Image, factor: int) -> list[Image.Image]:
        params = gen.params
        space = "sd" if factor == 2 else "generic"  # x2 works on SD latents, x4 on its own VAE's
        pipe = gen.schedule(gen.view(f"upscale_x{factor}"), space=space)
        if factor == 4:
            text = prompts.text_args(gen, pipe)
        else:  # plain (see check)
            text = {
                "prompt": prompts.plain(params["prompt"]),
                "negative_prompt": prompts.plain(params["negative_prompt"]) or None,
            }
        common = {
            **text,
            "num_inference_steps": params["steps"],
            "guidance_scale": params["guidance_scale"],
            "output_type": "pil",
        }
        work = _workable(image, _size_multiple(pipe, factor))
        if factor == 4:
            out = pipe(
                **common,
                image=work,
                noise_level=params["noise_level"],
                num_images_per_prompt=len(gen.seeds),
                generator=gen.generators(),
            )
            return out.images
        # The latent upscaler has no num_images_per_prompt: one call (one stage) per variation.
        gen.steps.plan(*[params["steps"]] * len(gen.seeds))
        return [pipe(**common, image=work, generator=g).images[0] for g in gen.generators()]

    def reword(
        self,
        gen: Generation,
        edit: p2p.Edit,
        size: tuple[int, int],
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
        strength: float = 1.0,
    ) -> list[p2p.Pair]:
        """The source job's own view and arguments (as txt2img and inpaint call them), run by p2p."""
        kind = "txt2img" if image is None else "inpaint"
        call: dict[str, Any] = {"width": size[0], "height": size[1]}
        if image is not None:
            call |= {"image": image, "mask_image": mask, "strength": strength}
        pairs = []
        for seed in gen.seeds:
            pipe = gen.schedule(gen.view(kind), space=self.preview_space)
            pairs.append(p2p.pair(p2p.run(gen, pipe, edit, seed, call)))
        return pairs


def _pick(values: list[Any]) -> Any:
    """Single units take scalars, several take lists (diffusers' MultiControlNet convention)."""
    return values[0] if len(values) == 1 else values


def _size_multiple(pipe: Any, factor: int) -> int:
    """Input sides must survive the UNet's downsampling (and, for x2, the VAE's 8x)."""
    unet_factor = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    return unet_factor * (pipe.vae_scale_factor if factor == 2 else 1)


def _workable(image: Image.Image, multiple: int) -> Image.Image:
    """Resize to the nearest sides the model accepts; the op scales the result to the exact target."""
    size = tuple(max(multiple, round(side / multiple) * multiple) for side in image.size)
    return image if size == image.size else image.resize(size, Image.LANCZOS)
