"""Kandinsky 2.2: a prior turns the prompt into a CLIP image embedding, then a decoder UNet paints MoVQ
latents from that embedding alone. Because the decoder only ever sees an image embedding, a picture can
stand in for a prompt: `variation` decodes a picture's own embedding, and `mix` blends the embeddings of
several prompts and pictures with the prior's `interpolate`.

Components are cached per role: `prior` is a whole KandinskyV22PriorPipeline (prior transformer, CLIP
text and image encoders, tokenizer, image processor), `base` a whole KandinskyV22Pipeline (decoder UNet,
MoVQ, scheduler); `inpaint` and each `controlnet:<name>` are only UNets, because those checkpoints
decode with the very same MoVQ. Every op's pipeline is a view built with the diffusers constructors over
those shared objects.

Each picture's seed drives both its prior and its decoder (each from a generator of its own seeded with
it, so the decoder's noise does not depend on how many prior loops ran): a new seed is a new reading of
the prompt, and variation i alone with seed + i gives image i again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import (
    KandinskyV22ControlnetImg2ImgPipeline,
    KandinskyV22ControlnetPipeline,
    KandinskyV22Img2ImgPipeline,
    KandinskyV22InpaintPipeline,
    KandinskyV22Pipeline,
    KandinskyV22PriorPipeline,
    UNet2DConditionModel,
)
from PIL import Image

from .. import prompts, ranking
from ..config import Preset
from ..errors import ErrorCode, RequestError
from ..params import UNIT_FIELDS, OpSpec, Param
from ..prompts import Reader
from ..request import OpRequest
from .base import Family, Generation, is_single_file, load_model, load_pipeline

Embeds = tuple[torch.Tensor, torch.Tensor]  # (image embedding, negative image embedding): one row each

#: Decoder pipeline of each view kind (the prior's view is kind "prior").
DECODERS: dict[str, Any] = {
    "txt2img": KandinskyV22Pipeline,
    "img2img": KandinskyV22Img2ImgPipeline,
    "inpaint": KandinskyV22InpaintPipeline,
    "controlnet": KandinskyV22ControlnetPipeline,
    "controlnet_img2img": KandinskyV22ControlnetImg2ImgPipeline,
}

#: Samplers the Kandinsky decoders can drive. They hand `generator=` to the scheduler's `step` and never
#: call `scale_model_input`: PNDM, UniPC, Heun and LMS refuse the generator, Euler needs scaled inputs.
SAMPLERS = ("", "ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_karras")

#: Ops whose prompt (or prompts) go through the prior's own denoising loop.
PRIOR_OPS = ("txt2img", "sdedit", "inpaint", "controlnet", "mix")

#: ControlNet unit fields the Kandinsky ControlNet decoders have no knob for.
FIXED_UNIT_FIELDS = {"scale": "conditioning scale", "start": "start", "end": "end"}


class Kandinsky22(Family):
    name = "kandinsky22"
    title = "Kandinsky 2.2"
    about = (
        "Kandinsky 2.2 paints in two stages. A prior reads the prompt with a CLIP text encoder and "
        "predicts the CLIP embedding that a matching picture would have; a decoder UNet then paints "
        "MoVQ latents (8x smaller than the picture) from that embedding alone. Since the decoder never "
        "sees words, a picture can take the place of a prompt: Variation repaints a picture from its "
        "embedding and Mix blends prompts and pictures with weights. Native size 768 px, rich colour "
        "and composition, with an inpainting decoder and a depth ControlNet. Weak at lettering and "
        "exact prompt details, its ControlNet takes one hint at full strength only, and the two "
        "stages cost more memory and time than SD 1.5."
    )
    roles: ClassVar[dict[str, str]] = {
        "prior": "the prior (CLIP text and image encoders + prior transformer): prompt -> image embedding",
        "base": "the decoder (UNet + MoVQ): image embedding -> picture; every op uses its MoVQ",
        "inpaint": "the inpainting decoder (9-channel UNet); inpaint is offered only with it",
    }
    required_roles = ("prior", "base")
    default_resolution = 768
    preview_space = "generic"  # MoVQ latents have no known linear map to RGB
    tiny_sources: ClassVar[dict[str, str]] = {
        "prior": "prior",
        "base": "decoder",
        "inpaint": "decoder-inpaint",
    }
    tiny_controlnets: ClassVar[dict[str, str]] = {"depth": "controlnet-depth"}
    tiny_resolution = 64

    def estimate_steps(self, op: str, params: dict[str, Any]) -> int:
        """Every picture runs its prior loops (one per prompt, plus one for the negative when mixing)
        and then the decoder."""
        decoder = super().estimate_steps(op, params)
        if op not in PRIOR_OPS:
            return decoder
        loops = 1
        if op == "mix":
            loops = 1 + sum(
                1 for item in params["items"] if item["prompt"] is not None and item["weight"] > 0
            )
        return loops * params.get("prior_steps", 0) + decoder

    # -- offer ------------------------------------------------------------------------------------
    def ops(self, preset: Preset) -> list[str]:
        ops = ["txt2img", "sdedit"]
        if "inpaint" in preset.sources:
            ops.append("inpaint")
        if preset.controlnets:
            ops.append("controlnet")
        return ops + ["variation", "mix"]

    def op_spec(self, op: str, spec: OpSpec, preset: Preset) -> OpSpec:
        add = [replace(spec.params["scheduler"], choices=SAMPLERS)]
        if op in PRIOR_OPS:
            steps = spec.params["steps"]
            add += [
                Param("prior_steps", "int", 25, "prior steps (prompt -> image embedding)", 2, steps.max),
                Param("prior_guidance_scale", "float", 4.0, "guidance of the prior", 0.0, 30.0),
            ]
        if op == "inpaint":
            # The inpainting decoder always repaints the masked area from pure noise.
            strength = spec.params["strength"]
            add.append(replace(strength, min=1.0, doc="always 1: the inpainting decoder repaints fully"))
        spec = spec.changed(add=add, defaults={"steps": 50, "guidance_scale": 4.0})
        return self.ranked(op, prompts.text_spec(spec, prompts.PLAIN, prompts.WINDOW), preset)

    def check(self, req: OpRequest) -> None:
        """Plain prompts within one CLIP window (the prior turns each into one image embedding); one
        full-strength ControlNet unit."""
        why = "turns each prompt into one CLIP image embedding with its prior"
        prompts.check_plain(req, self.title, why, [Reader("prior", limit=prompts.WINDOW)])
        if req.op == "controlnet":
            _check_units(req.params["units"])
        ranking.check(req)

    # -- ranking ----------------------------------------------------------------------------------
    def ranks(self, preset: Preset) -> bool:
        """The prior holds a whole CLIP: text and image towers projecting into one space."""
        return True

    def clip(self, gen: Generation) -> ranking.Clip:
        """The prior's own encoders and processor (loaded for every prompt op anyway)."""
        prior = gen.models.component(gen.preset, "prior")
        return ranking.clip_towers(
            prior.text_encoder, prior.tokenizer, prior.image_encoder, prior.image_processor
        )

    # -- components -------------------------------------------------------------------------------
    def load(self, models: Any, preset: Preset, role: str, source: str) -> Any:
        if is_single_file(source):
            raise RequestError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"model {preset.name!r}: Kandinsky 2.2 loads from diffusers folders or hub ids only, "
                f"not from the single file {source!r}",
                "model",
            )
        dtype = models.dtype
        if role == "prior":
            return load_pipeline(KandinskyV22PriorPipeline, preset, source, dtype)
        if role == "base":
            return load_pipeline(KandinskyV22Pipeline, preset, source, dtype)
        # The inpainting and ControlNet decoders decode with base's MoVQ: only their UNet is loaded.
        return load_model(UNet2DConditionModel, preset, source, dtype, "unet")

    def needs(self, preset: Preset, kind: str, extras: Sequence[str]) -> list[str]:
        if kind == "prior":
            return ["prior"]
        roles = ["base"]
        if kind == "inpaint":
            roles.append("inpaint")
        return roles + [f"controlnet:{name}" for name in extras]

    def build_view(self, preset: Preset, kind: str, parts: dict[str, Any], extras: Sequence[str]) -> Any:
        if kind == "prior":
            pipe = KandinskyV22PriorPipeline(**parts["prior"].components)
        else:
            base = parts["base"]
            unet = base.unet
            if kind == "inpaint":
                unet = parts["inpaint"]
            elif kind.startswith("controlnet"):
                unet = parts[f"controlnet:{extras[0]}"]
            pipe = DECODERS[kind](unet=unet, scheduler=base.scheduler, movq=base.movq)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def warm(self, preset: Preset, op: str) -> list[tuple[str, tuple[str, ...]]]:
        decoder: tuple[str, tuple[str, ...]] = ("txt2img", ())
        if op == "inpaint" and "inpaint" in preset.sources:
            decoder = ("inpaint", ())
        elif op == "controlnet" and preset.controlnets:
            decoder = ("controlnet", (sorted(preset.controlnets)[0],))
        return [("prior", ()), decoder]

    # -- the prior --------------------------------------------------------------------------------
    def prior(self, gen: Generation) -> Any:
        """The prior view with this job's own UnCLIP scheduler (the `scheduler` parameter is the
        decoder's sampler, not the prior's)."""
        return gen.schedule(gen.view("prior"), named=False, space=self.preview_space)

    def embeds(self, gen: Generation, loops: int, steps: int, compute: Callable[[], Embeds]) -> Embeds:
        """One picture's embeddings (`compute` runs `loops` prior loops); plans progress: those prior
        loops, then `steps` decoder steps."""
        gen.steps.plan(*[gen.params.get("prior_steps", 0)] * loops, steps)
        return compute()

    def prompt_embeds(self, gen: Generation, seed: int, steps: int) -> Embeds:
        """The prompt's image embedding. A negative prompt goes through the prior too, and its
        embedding steers the decoder away; without one, the decoder steers away from a blank picture."""
        params = gen.params

        def compute() -> Embeds:
            out = self.prior(gen)(
                prompt=prompts.plain(params["prompt"]),
                negative_prompt=prompts.plain(params.get("negative_prompt")) or None,
                num_inference_steps=params["prior_steps"],
                guidance_scale=params["prior_guidance_scale"],
                generator=generator(seed),
            )
            return out.image_embeds, out.negative_image_embeds

        return self.embeds(gen, 1, steps, compute)

    def picture_embeds(self, gen: Generation, image: Image.Image, steps: int) -> Embeds:
        """A picture's CLIP image embedding (the prior's own encoder and preprocessing); the negative
        is the embedding of a blank picture, as diffusers does without a negative prompt."""

        def compute() -> Embeds:
            prior = gen.view("prior")
            with torch.no_grad():
                pixels = prior.image_processor(image, return_tensors="pt").pixel_values
                pixels = pixels.to(device=prior.device, dtype=prior.image_encoder.dtype)
                return prior.image_encoder(pixels).image_embeds, prior.get_zero_embed(1)

        return self.embeds(gen, 0, steps, compute)

    def pictures(self, gen: Generation, paint: Callable[[int], Image.Image]) -> list[Image.Image]:
        """One picture per seed (`paint` gets the seed: see `generator`)."""
        return [paint(seed) for seed in gen.seeds]

    # -- the decoder ------------------------------------------------------------------------------
    def decode(
        self,
        gen: Generation,
        kind: str,
        embeds: Embeds,
        size: tuple[int, int],
        seed: int,
        extras: Sequence[str] = (),
        pictures: dict[str, Image.Image] | None = None,
        hint: Image.Image | None = None,
        **kwargs: Any,
    ) -> Image.Image:
        """Run the decoder view of `kind` at `size` for one picture: `pictures` (image, mask_image) and
        the `hint` are fitted to the decoder's grid; the picture comes back at `size`."""
        pipe = gen.schedule(gen.view(kind, extras), space=self.preview_space)
        work = _grid_size(size, _movq_factor(pipe) ** 2)
        for name, picture in (pictures or {}).items():
            kwargs[name] = picture.resize(work, Image.BICUBIC)
        if hint is not None:
            kwargs["hint"] = _hint_tensor(hint, work).to(device=pipe.device, dtype=pipe.unet.dtype)
        if kind == "controlnet_img2img":
            # This pipeline does not count its steps: tell the progress watcher what strength leaves.
            pipe._num_timesteps = int(gen.params["steps"] * kwargs["strength"])
        positive, negative = embeds
        image = pipe(
            image_embeds=positive,
            negative_image_embeds=negative,
            width=work[0],
            height=work[1],
            num_inference_steps=gen.params["steps"],
            guidance_scale=gen.params["guidance_scale"],
            generator=generator(seed),
            output_type="pil",
            **kwargs,
        ).images[0]
        return image if image.size == size else image.resize(size, Image.LANCZOS)

    # -- ops --------------------------------------------------------------------------------------
    def txt2img(self, gen: Generation, width: int, height: int) -> list[Image.Image]:
        steps = gen.params["steps"]
        return self.pictures(
            gen,
            lambda seed: self.decode(
                gen, "txt2img", self.prompt_embeds(gen, seed, steps), (width, height), seed
            ),
        )

    def img2img(self, gen: Generation, image: Image.Image, strength: float) -> list[Image.Image]:
        steps = int(gen.params["steps"] * strength)

        def paint(seed: int) -> Image.Image:
            embeds = self.prompt_embeds(gen, seed, steps)
            return self.decode(
                gen, "img2img", embeds, image.size, seed, pictures={"image": image}, strength=strength
            )

        return self.pictures(gen, paint)

    def inpaint(
        self, gen: Generation, image: Image.Image, mask: Image.Image, strength: float
    ) -> list[Image.Image]:
        # Since diffusers 0.19 the Kandinsky inpainting pipelines repaint white, as Underpaint's masks do.
        pictures = {"image": image, "mask_image": mask}

        def paint(seed: int) -> Image.Image:
            embeds = self.prompt_embeds(gen, seed, gen.params["steps"])
            return self.decode(gen, "inpaint", embeds, image.size, seed, pictures=pictures)

        return self.pictures(gen, paint)

    def controlnet(
        self,
        gen: Generation,
        units: list[dict[str, Any]],
        maps: list[Image.Image],
        size: tuple[int, int],
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
    ) -> list[Image.Image]:
        """The unit's control map is the decoder's `hint`. There is no ControlNet inpainting decoder:
        with a mask, this is ControlNet img2img of the selection, pasted back through the mask."""
        params, extras = gen.params, (units[0]["model"],)

        def paint(seed: int) -> Image.Image:
            if image is None:
                embeds = self.prompt_embeds(gen, seed, params["steps"])
                return self.decode(gen, "controlnet", embeds, size, seed, extras, hint=maps[0])
            strength = params["strength"]
            embeds = self.prompt_embeds(gen, seed, int(params["steps"] * strength))
            return self.decode(
                gen,
                "controlnet_img2img",
                embeds,
                size,
                seed,
                extras,
                {"image": image},
                maps[0],
                strength=strength,
            )

        return self.pictures(gen, paint)

    def variation(self, gen: Generation, image: Image.Image) -> list[Image.Image]:
        embeds = self.picture_embeds(gen, image, gen.params["steps"])
        return self.pictures(gen, lambda seed: self.decode(gen, "txt2img", embeds, image.size, seed))

    def mix(
        self, gen: Generation, items: list[tuple[str | Image.Image, float]], size: tuple[int, int]
    ) -> list[Image.Image]:
        """Blend with the prior's `interpolate`. Weights count as shares of their sum (2:2 is 1:1), and
        items of weight 0 are left out, so they cost nothing and change nothing."""
        params = gen.params
        kept = [(item, weight) for item, weight in items if weight > 0]
        total = sum(weight for _, weight in kept)
        # interpolate runs the prior once per prompt, and once more for the negative embedding.
        loops = sum(isinstance(item, str) for item, _ in kept) + 1

        def paint(seed: int) -> Image.Image:
            def compute() -> Embeds:
                out = self.prior(gen).interpolate(
                    [prompts.plain(item) if isinstance(item, str) else item for item, _ in kept],
                    [weight / total for _, weight in kept],
                    num_inference_steps=params["prior_steps"],
                    generator=generator(seed),
                    negative_prompt=prompts.plain(params.get("negative_prompt")),
                    guidance_scale=params["prior_guidance_scale"],
                )
                return out.image_embeds, out.negative_image_embeds

            return self.decode(gen, "txt2img", self.embeds(gen, loops, params["steps"], compute), size, seed)

        return self.pictures(gen, paint)


def generator(seed: int) -> torch.Generator:
    """A fresh CPU generator: the prior and the decoder of a picture each get their own from its seed."""
    return torch.Generator("cpu").manual_seed(seed)


def _check_units(units: list[dict[str, Any]]) -> None:
    """Kandinsky's ControlNet decoders take one hint, always at full strength for every step."""
    if len(units) != 1:
        raise RequestError(
            ErrorCode.INVALID_VALUE,
            f"params.units has {len(units)} units; Kandinsky 2.2 takes exactly one ControlNet hint",
            "params.units",
        )
    for key, what in FIXED_UNIT_FIELDS.items():
        value, default = units[0][key], UNIT_FIELDS[key].default
        if value != default:
            raise RequestError(
                ErrorCode.INVALID_VALUE,
                f"params.units.0.{key} is {value:g}; Kandinsky 2.2's ControlNet decoders have no {what} "
                f"setting: leave it at {default:g}",
                f"params.units.0.{key}",
            )


def _movq_factor(pipe: Any) -> int:
    """How much smaller than the picture the MoVQ latents are (8 for the real and the tiny model)."""
    return 2 ** (len(pipe.movq.config.block_out_channels) - 1)


def _grid_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """The nearest size the decoders work at: diffusers rounds latents up to multiples of the MoVQ
    factor (sides of factor**2 px), and inputs must match that size exactly."""
    w, h = (max(multiple, round(side / multiple) * multiple) for side in size)
    return (w, h)


def _hint_tensor(hint: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """A control map as the ControlNet decoders take it: a batch of one RGB picture in 0 … 1."""
    rgb = np.asarray(hint.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)
