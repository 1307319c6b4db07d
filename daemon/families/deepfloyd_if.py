"""DeepFloyd IF, the open Imagen: a cascade of pixel-space diffusion models steered by a T5 encoder.

Stage I (`base`, an IFPipeline) draws a small picture (64 px for IF-I) from T5's reading of the prompt;
stage II (`stage_2`, IF-II) enlarges it 4x, conditioned on the same text; an optional stage III
(`stage_3`, the Stable Diffusion x4 upscaler with its own CLIP text encoder) enlarges it 4x again.

Components are cached per role, each a whole pipeline: stage II is loaded without a text encoder (the
T5-XXL of stage I is the largest part of IF, and stage II only needs its output), so the prompt is
encoded once per picture with stage I's T5 and the embeddings go to every IF stage. img2img and
inpainting are views (diffusers' IF img2img/inpainting pipelines) over the same stage I and II
weights, so switching ops loads nothing twice.

Stage I always works at the requested size divided by the preset's whole cascade factor (16 for
I -> II -> III), whatever `stages` says: the same seed gives the same composition with 1, 2 or 3
stages, so one stage is a quick draft of what three finish; the last stage's picture is scaled to
exactly the requested size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import (
    IFImg2ImgPipeline,
    IFImg2ImgSuperResolutionPipeline,
    IFInpaintingPipeline,
    IFInpaintingSuperResolutionPipeline,
    IFPipeline,
    IFSuperResolutionPipeline,
    StableDiffusionUpscalePipeline,
)
from PIL import Image

from .. import prompts
from ..config import Preset
from ..errors import ErrorCode, RequestError
from ..params import OpSpec, Param
from ..prompts import Reader
from ..request import OpRequest
from .base import Family, Generation, load_pipeline

CASCADE: tuple[str, ...] = ("base", "stage_2", "stage_3")  # in the order they run
SUPER_RES = 4  # every stage after the first enlarges 4x
CASCADE_OPS = ("txt2img", "sdedit", "inpaint")
#: Named samplers that read IF's learned variance; the others get 6 output channels for 3 and fail.
IF_SCHEDULERS = ("ddpm", "dpmpp_2m", "dpmpp_2m_karras")
STAGE_2_GUIDANCE = 4.0  # IF-II's own default guidance
STAGE_3_NOISE = 100  # noise the x4 upscaler adds to stage II's picture inside the cascade
NO_CHECKS: dict[str, Any] = {"safety_checker": None, "feature_extractor": None, "watermarker": None}
T5_TOKENS = 76  # the IF pipelines read 77 T5 tokens, the last of them the end marker
T5_READER = Reader("base", limit=T5_TOKENS, name="T5")
STAGE_3_READER = Reader("stage_3", limit=prompts.WINDOW, name="stage III's CLIP")

#: view kind -> (the role it is built on, its pipeline class)
VIEWS: dict[str, tuple[str, Any]] = {
    "txt2img": ("base", IFPipeline),
    "img2img": ("base", IFImg2ImgPipeline),
    "inpaint": ("base", IFInpaintingPipeline),
    "sr": ("stage_2", IFSuperResolutionPipeline),
    "sr_img2img": ("stage_2", IFImg2ImgSuperResolutionPipeline),
    "sr_inpaint": ("stage_2", IFInpaintingSuperResolutionPipeline),
    "stage_3": ("stage_3", StableDiffusionUpscalePipeline),
}
#: op -> the view each stage of the cascade runs
OP_VIEWS: dict[str, dict[str, str]] = {
    "txt2img": {"base": "txt2img", "stage_2": "sr", "stage_3": "stage_3"},
    "sdedit": {"base": "img2img", "stage_2": "sr_img2img", "stage_3": "stage_3"},
    "inpaint": {"base": "inpaint", "stage_2": "sr_inpaint", "stage_3": "stage_3"},
}


@dataclass(frozen=True)
class Text:
    """T5's reading of the prompt and of the negative prompt (batch 1 each)."""

    cond: torch.Tensor
    uncond: torch.Tensor

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        """Arguments of a stage whose prompt batch is `n` pictures."""
        return {
            "prompt_embeds": self.cond.repeat(n, 1, 1),
            "negative_prompt_embeds": self.uncond.repeat(n, 1, 1),
        }


@dataclass
class Edit:
    """What sdedit and inpaint add to a cascade: the picture, its mask, how much to repaint."""

    image: Image.Image
    strength: float
    mask: Image.Image | None = None


class DeepFloydIF(Family):
    name = "if"
    title = "DeepFloyd IF"
    about = (
        "DeepFloyd IF paints straight in pixels, in steps of growing size: stage I draws a small "
        "64 px picture from the prompt, stage II enlarges it four times to 256 px while inventing "
        "detail, and an optional stage III (the Stable Diffusion x4 upscaler) takes it to 1024 px. "
        "It reads the prompt with T5-XXL, a large language model rather than CLIP, so it follows "
        "long prompts with several objects, counts and positions closely and can spell short words "
        "inside the picture. The cost is size and speed: the text encoder alone is about 9 GB in "
        "half precision and every stage is its own diffusion run. Layout is settled at 64 px, so "
        "fewer `stages` give a fast draft of the same composition. Few fine-tunes, no ControlNets, "
        "and edits pass through the small stages, so fine detail of the original is redrawn."
    )
    roles: ClassVar[dict[str, str]] = {
        "base": "stage I: the IF-I text-to-image model (64 px) with the T5 text encoder",
        "stage_2": "stage II: the IF-II x4 super-resolution model (64 -> 256 px); its T5 is never loaded",
        "stage_3": "stage III (optional): the Stable Diffusion x4 upscaler (256 -> 1024 px)",
    }
    default_resolution = 1024
    preview_space = "pixels"
    tiny_sources: ClassVar[dict[str, str]] = {
        "base": "stage-1",
        "stage_2": "stage-2",
        "stage_3": "stage-3-x4",
    }
    tiny_resolution = 64

    # -- offer ------------------------------------------------------------------------------------
    def cascade(self, preset: Preset) -> list[str]:
        """The stages this preset has, in the order they run."""
        return [role for role in CASCADE if role in preset.sources]

    def ops(self, preset: Preset) -> list[str]:
        return [*CASCADE_OPS, "upscale"] if len(self.cascade(preset)) > 1 else list(CASCADE_OPS)

    def op_spec(self, op: str, spec: OpSpec, preset: Preset) -> OpSpec:
        return self._text_spec(op, self._op_spec(op, spec, preset), preset)

    def _text_spec(self, op: str, spec: OpSpec, preset: Preset) -> OpSpec:
        """Plain prompts: T5's window, or only CLIP's when the x4 stage alone reads the prompt."""
        if op == "upscale" and "stage_3" in preset.sources:
            return prompts.text_spec(spec, prompts.PLAIN, prompts.WINDOW)
        note = (
            f"; stage III counts at most {prompts.WINDOW} CLIP tokens" if "stage_3" in preset.sources else ""
        )
        return prompts.text_spec(spec, prompts.PLAIN, T5_TOKENS, note)

    def _op_spec(self, op: str, spec: OpSpec, preset: Preset) -> OpSpec:
        if op == "upscale":
            return self._upscale_spec(spec, preset)
        stages = len(self.cascade(preset))
        add = [_if_scheduler_param(spec)]
        if stages > 1:
            add += [
                Param(
                    "stages",
                    "int",
                    stages,
                    "cascade stages to run (1 = stage I only, a quick draft of the same composition); "
                    "the last one's picture is scaled to the output size",
                    1,
                    stages,
                ),
                replace(
                    spec.params["steps"],
                    name="super_res_steps",
                    default=20,
                    doc="denoising steps of each stage after the first (before strength)",
                ),
            ]
        return spec.changed(add=add, defaults={"guidance_scale": 7.0})

    def _upscale_spec(self, spec: OpSpec, preset: Preset) -> OpSpec:
        factor = replace(
            spec.params["factor"], choices=(SUPER_RES,), default=SUPER_RES, doc="4 = the x4 stage"
        )
        if "stage_3" in preset.sources:  # the SD x4 upscaler: the common upscale spec holds
            return spec.changed(add=[factor])
        noise = replace(
            spec.params["noise_level"],
            default=250,
            max=999,
            doc="noise added to the input before stage II enlarges it (more = more invented detail)",
        )
        return spec.changed(add=[factor, noise, _if_scheduler_param(spec)], defaults={"guidance_scale": 4.0})

    def check(self, req: OpRequest) -> None:
        """Plain prompts within the window of every encoder that reads them; and since diffusers runs
        int(steps * strength) steps in every img2img stage, one must remain."""
        prompts.check_plain(req, self.title, "reads the prompt with T5, not CLIP", self.readers(req))
        strength = req.params.get("strength")
        if req.op not in ("sdedit", "inpaint") or strength is None:
            return
        if "stage_2" in self.chain(req.preset, req.params):
            steps = req.params["super_res_steps"]
            if int(steps * strength) < 1:
                raise RequestError(
                    ErrorCode.INVALID_VALUE,
                    f"params.super_res_steps ({steps}) x params.strength ({strength:g}) leaves stage II "
                    "no step to run",
                    "params.super_res_steps",
                )

    def readers(self, req: OpRequest) -> list[Reader]:
        """The text encoders the job reads its prompt with: T5 (stage I's, for every IF stage) and
        the x4 upscaler's CLIP when stage III runs."""
        if req.op == "upscale":
            return [STAGE_3_READER] if "stage_3" in req.preset.sources else [T5_READER]
        chain = self.chain(req.preset, req.params)
        return [T5_READER] + ([STAGE_3_READER] if "stage_3" in chain else [])

    def chain(self, preset: Preset, params: dict[str, Any]) -> list[str]:
        """The stages a job runs: the first `stages` of the preset's cascade."""
        cascade = self.cascade(preset)
        return cascade[: params.get("stages") or len(cascade)]

    def describe(self, preset: Preset) -> dict[str, Any]:
        return {"stages": len(self.cascade(preset))}

    # -- components -------------------------------------------------------------------------------
    def load(self, models: Any, preset: Preset, role: str, source: str) -> Any:
        dtype = models.dtype
        if role == "base":
            return load_pipeline(
                IFPipeline, preset, source, dtype, requires_safety_checker=False, **NO_CHECKS
            )
        if role == "stage_2":
            # Stage II's repo carries T5 too; it is never used (stage I's embeddings are), so skip it.
            return load_pipeline(
                IFSuperResolutionPipeline,
                preset,
                source,
                dtype,
                text_encoder=None,
                tokenizer=None,
                requires_safety_checker=False,
                **NO_CHECKS,
            )
        return _load_x4(preset, source, dtype)

    def needs(self, preset: Preset, kind: str, extras: Sequence[str]) -> list[str]:
        return [VIEWS[kind][0]]

    def build_view(self, preset: Preset, kind: str, parts: dict[str, Any], extras: Sequence[str]) -> Any:
        role, cls = VIEWS[kind]
        part = parts[role]
        if role == "stage_3":
            return part
        shared = {
            "tokenizer": part.tokenizer,
            "text_encoder": part.text_encoder,
            "unet": part.unet,
            "scheduler": part.scheduler,
            "requires_safety_checker": False,
            **NO_CHECKS,
        }
        if role == "stage_2":
            shared["image_noising_scheduler"] = part.image_noising_scheduler
        pipe = cls(**shared)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def warm(self, preset: Preset, op: str) -> list[tuple[str, tuple[str, ...]]]:
        if op == "upscale":
            if "stage_3" in preset.sources:
                return [("stage_3", ())]
            return [("txt2img", ()), ("sr", ())]
        views = OP_VIEWS.get(op, OP_VIEWS["txt2img"])
        kinds = ["txt2img"] + [views[role] for role in self.cascade(preset)]
        return [(kind, ()) for kind in dict.fromkeys(kinds)]

    # -- ops --------------------------------------------------------------------------------------
    def txt2img(self, gen: Generation, width: int, height: int) -> list[Image.Image]:
        return self.run_cascade(gen, "txt2img", (width, height))

    def img2img(self, gen: Generation, image: Image.Image, strength: float) -> list[Image.Image]:
        return self.run_cascade(gen, "sdedit", image.size, Edit(image, strength))

    def inpaint(
        self, gen: Generation, image: Image.Image, mask: Image.Image, strength: float
    ) -> list[Image.Image]:
        return self.run_cascade(gen, "inpaint", image.size, Edit(image, strength, mask))

    def upscale(self, gen: Generation, image: Image.Image, factor: int) -> list[Image.Image]:
        params = gen.params
        if "stage_3" not in gen.preset.sources:
            return self.enlarge(gen, image)
        pipe = _schedule(gen, "stage_3", "stage_3")
        steps, noise = params["steps"], params["noise_level"]
        return self.x4(gen, pipe, [image], gen.generators(), steps, noise, single=True)

    def enlarge(self, gen: Generation, image: Image.Image) -> list[Image.Image]:
        """Upscale with stage II (a preset without stage III): IF-II conditioned on T5's reading of
        the prompt, every seed from the one input picture."""
        params, text = gen.params, self.encode(gen)
        pipe = _schedule(gen, "sr", "stage_2")
        size = _fit((image.width * SUPER_RES, image.height * SUPER_RES), _unet_multiple(pipe))
        _expect(pipe, params["steps"])
        return pipe(
            image=[image],
            **text.batch(1),
            num_images_per_prompt=len(gen.seeds),
            width=size[0],
            height=size[1],
            num_inference_steps=params["steps"],
            guidance_scale=params["guidance_scale"],
            noise_level=params["noise_level"],
            generator=gen.generators(),
            output_type="pil",
            clean_caption=False,
        ).images

    # -- the cascade ------------------------------------------------------------------------------
    def run_cascade(
        self, gen: Generation, op: str, size: tuple[int, int], edit: Edit | None = None
    ) -> list[Image.Image]:
        """Run the job's stages in turn; each stage's pictures feed the next one."""
        chain = self.chain(gen.preset, gen.params)
        text = self.encode(gen)
        pipes = [_schedule(gen, OP_VIEWS[op][role], role) for role in chain]
        sizes = self.stage_sizes(gen.preset, dict(zip(chain, pipes, strict=True)), size)
        strength = edit.strength if edit else None
        gen.steps.plan(*(self.loop_steps(gen, role, strength) for role in chain))
        generators = gen.generators()  # one generator per picture, carried through every stage
        pictures = self.stage_1(gen, pipes[0], text, sizes[0], generators, edit)
        for role, pipe, out in zip(chain[1:], pipes[1:], sizes[1:], strict=True):
            steps = gen.params["super_res_steps"]
            if role == "stage_3":
                pictures = self.x4(gen, pipe, pictures, generators, steps, STAGE_3_NOISE)
            else:
                pictures = self.stage_2(gen, pipe, text, pictures, out, generators, edit)
        return [p if p.size == size else p.resize(size, Image.LANCZOS) for p in pictures]

    def stage_sizes(
        self, preset: Preset, pipes: dict[str, Any], size: tuple[int, int]
    ) -> list[tuple[int, int]]:
        """Output size of each stage in `pipes`. Stage I works at `size` over the whole cascade's
        factor (whatever part of it runs), on sides its UNet can halve down to its lowest level."""
        factor = SUPER_RES ** (len(self.cascade(preset)) - 1)
        sizes = [_fit((size[0] / factor, size[1] / factor), _unet_multiple(pipes["base"]))]
        for role, pipe in pipes.items():
            if role == "stage_2":
                sizes.append(_fit((sizes[-1][0] * SUPER_RES, sizes[-1][1] * SUPER_RES), _unet_multiple(pipe)))
            elif role == "stage_3":  # the x4 upscaler's output is 4x its (fitted) input
                low = _fit(sizes[-1], _unet_multiple(pipe))
                sizes.append((low[0] * SUPER_RES, low[1] * SUPER_RES))
        return sizes

    def loop_steps(self, gen: Generation, role: str, strength: float | None) -> int:
        """Steps the denoising loop of `role` runs (img2img stages cut the schedule by strength)."""
        steps = gen.params["steps" if role == "base" else "super_res_steps"]
        if strength is None or role == "stage_3":
            return steps
        return min(int(steps * strength), steps)

    def encode(self, gen: Generation) -> Text:
        """Stage I's T5 reads the prompt and the negative prompt in one batch, once per job; every
        stage of every picture reuses the result (stage II has no text encoder of its own loaded)."""

        def compute() -> Text:
            pipe = gen.view("txt2img")
            texts = [
                prompts.plain(gen.params.get("prompt")),
                prompts.plain(gen.params.get("negative_prompt")),
            ]
            embeds, _ = pipe.encode_prompt(texts, do_classifier_free_guidance=False, clean_caption=False)
            return Text(embeds[:1], embeds[1:])

        return gen.once("if/t5", compute)

    def stage_1(
        self,
        gen: Generation,
        pipe: Any,
        text: Text,
        size: tuple[int, int],
        generators: list[torch.Generator],
        edit: Edit | None,
    ) -> list[Image.Image]:
        params = gen.params
        _expect(pipe, self.loop_steps(gen, "base", edit.strength if edit else None))
        args: dict[str, Any] = {
            **text.batch(1),
            "num_inference_steps": params["steps"],
            "guidance_scale": params["guidance_scale"],
            "num_images_per_prompt": len(gen.seeds),
            "generator": generators,
            "output_type": "pil",
            "clean_caption": False,
        }
        if edit is None:
            return pipe(**args, width=size[0], height=size[1]).images
        # Tensors, not PIL: the IF pipelines would resize a PIL picture to their native size.
        args |= {"image": _pixels(edit.image, size), "strength": edit.strength}
        if edit.mask is not None:
            args["mask_image"] = _mask(edit.mask, size)
        return pipe(**args).images

    def stage_2(
        self,
        gen: Generation,
        pipe: Any,
        text: Text,
        pictures: list[Image.Image],
        size: tuple[int, int],
        generators: list[torch.Generator],
        edit: Edit | None,
    ) -> list[Image.Image]:
        """IF-II: enlarge each picture 4x with stage I's embeddings (one prompt per picture)."""
        n = len(pictures)
        _expect(pipe, self.loop_steps(gen, "stage_2", edit.strength if edit else None))
        args: dict[str, Any] = {
            "image": pictures,
            **text.batch(n),
            "num_inference_steps": gen.params["super_res_steps"],
            "guidance_scale": STAGE_2_GUIDANCE,
            "generator": generators,
            "output_type": "pil",
            "clean_caption": False,
        }
        if edit is None:
            return pipe(**args, width=size[0], height=size[1]).images
        args |= {"original_image": _pixels(edit.image, size).repeat(n, 1, 1, 1), "strength": edit.strength}
        if edit.mask is not None:
            args["mask_image"] = _mask(edit.mask, size)
        return pipe(**args).images

    def x4(
        self,
        gen: Generation,
        pipe: Any,
        pictures: list[Image.Image],
        generators: list[torch.Generator],
        steps: int,
        noise_level: int,
        single: bool = False,
    ) -> list[Image.Image]:
        """The SD x4 upscaler, with its own CLIP reading of the prompt. `single`: one input picture
        gives every seed's variation (the upscale op); otherwise one output per input picture."""
        multiple = _unet_multiple(pipe)
        pictures = [_resized(p, _fit(p.size, multiple)) for p in pictures]
        prompt = prompts.plain(gen.params.get("prompt"))
        negative = prompts.plain(gen.params.get("negative_prompt")) or None
        n = 1 if single else len(pictures)
        _expect(pipe, steps)
        args: dict[str, Any] = {
            "prompt": [prompt] * n,
            "negative_prompt": [negative] * n if negative else None,
            "image": pictures,
            "num_inference_steps": steps,
            "noise_level": noise_level,
            "num_images_per_prompt": len(gen.seeds) if single else 1,
            "generator": generators,
            "output_type": "pil",
        }
        if single:
            args["guidance_scale"] = gen.params["guidance_scale"]
        return pipe(**args).images


# -- helpers ------------------------------------------------------------------------------------------
def _if_scheduler_param(spec: OpSpec) -> Param:
    """The common `scheduler` parameter, narrowed to the samplers that fit IF's UNets."""
    return replace(
        spec.params["scheduler"],
        choices=("", *IF_SCHEDULERS),
        doc="sampler; empty = the model's own (DDPM); only samplers that read IF's learned variance",
    )


def _load_x4(preset: Preset, source: str, dtype: torch.dtype) -> Any:
    """Stage III: a repo without the preset's variant files loads its plain files instead."""
    try:
        return load_pipeline(StableDiffusionUpscalePipeline, preset, source, dtype, **NO_CHECKS)
    except ValueError as exc:
        if not preset.variant or f"variant={preset.variant}" not in str(exc):
            raise
    return load_pipeline(
        StableDiffusionUpscalePipeline, replace(preset, variant=None), source, dtype, **NO_CHECKS
    )


def _schedule(gen: Generation, kind: str, role: str) -> Any:
    """The view of `kind` with this job's watched scheduler. Previews: IF stages denoise RGB pixels,
    the x4 upscaler its own VAE's latents."""
    return gen.schedule(gen.view(kind), space="generic" if role == "stage_3" else "pixels")


def _expect(pipe: Any, steps: int) -> None:
    """Tell progress how many steps `pipe`'s next loop runs. Newer pipelines keep that count in
    `_num_timesteps` themselves; the IF and x4 ones do not, and DDPM has no begin index that would
    show where `strength` cut the schedule, so without it an edit's stage would seem full length."""
    pipe._num_timesteps = steps


def _unet_multiple(pipe: Any) -> int:
    """Sides must survive the UNet's halvings down to its lowest level."""
    return 2 ** (len(pipe.unet.config.block_out_channels) - 1)


def _fit(size: tuple[float, float], multiple: int) -> tuple[int, int]:
    """The nearest sides that are multiples of `multiple` (at least one multiple)."""
    w, h = (max(multiple, round(side / multiple) * multiple) for side in size)
    return (w, h)


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.LANCZOS)


def _pixels(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """An RGB picture at `size` as the IF pipelines' tensors: 1 x 3 x H x W in -1 … 1."""
    array = np.asarray(_resized(image.convert("RGB"), size), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def _mask(mask: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """An 8-bit mask at `size` as 1 x 1 x H x W in 0 … 1 (the pipelines threshold it at 0.5)."""
    small = mask.convert("L").resize(size, Image.BILINEAR)
    return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)[None, None]
