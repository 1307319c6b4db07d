"""unCLIP, as Karlo (kakaobrain's open DALL-E 2): a prior maps the prompt's CLIP text embedding to a
CLIP image embedding, a pixel-space decoder paints a small picture from it, and two super-resolution
UNets enlarge it 4x. The image-variation checkpoint skips the prior and encodes a picture instead.

diffusers keeps these pipelines under `pipelines.deprecated`; they still work, but their folders do
not load back with `from_pretrained`: model_index.json names `text_proj` as ["diffusers", ...] when
saved and ["unclip", ...] on the hub, and neither resolves any more (nor may `text_proj=` be passed for
them). So each component is loaded from its own subfolder with its own class, which reads exactly the
same files, and the pipelines are built with their constructors.

Roles: `base` (the text-to-image folder, all of it) and `variation` (the image-variation folder, of
which only the CLIP image encoder and its processor are loaded: the rest equals base's and is shared).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

from diffusers import PriorTransformer, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.pipelines.deprecated.unclip import (
    UnCLIPImageVariationPipeline,
    UnCLIPPipeline,
    UnCLIPTextProjModel,
)
from PIL import Image, ImageOps
from transformers import (
    CLIPImageProcessor,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from .. import prompts, ranking
from ..config import Preset
from ..errors import ErrorCode, RequestError
from ..params import OpSpec
from ..prompts import Reader
from ..request import OpRequest
from .base import Family, Generation, is_single_file, load_model

#: Weighted components of the text-to-image folder, by subfolder.
BASE_MODELS: dict[str, Any] = {
    "prior": PriorTransformer,
    "decoder": UNet2DConditionModel,
    "text_proj": UnCLIPTextProjModel,
    "super_res_first": UNet2DModel,
    "super_res_last": UNet2DModel,
    "text_encoder": CLIPTextModelWithProjection,
}
SCHEDULERS = ("prior_scheduler", "decoder_scheduler", "super_res_scheduler")
#: What the variation pipeline takes from base.
DECODER_SIDE = (
    "decoder",
    "text_encoder",
    "tokenizer",
    "text_proj",
    "super_res_first",
    "super_res_last",
    "decoder_scheduler",
    "super_res_scheduler",
)


class UnCLIP(Family):
    name = "unclip"
    title = "unCLIP (Karlo)"
    about = (
        "unCLIP, here Kakao Brain's Karlo (an open DALL-E 2), paints in three stages: a prior guesses "
        "what CLIP would see in a picture matching the prompt, a decoder paints a 64 px picture of "
        "that, and two super-resolution passes bring it to 256 px. Going through CLIP's idea of a "
        "picture makes it good at overall composition, style and at variations of a given picture "
        "(which skip the prior and read the picture itself). It only makes 256 px squares, cannot "
        "inpaint or take a negative prompt, renders small details and lettering poorly, and each job "
        "runs three denoising loops. Deprecated in diffusers, kept to compare with its successors."
    )
    roles: ClassVar[dict[str, str]] = {
        "base": "the Karlo text-to-image folder (prior, decoder, super-resolution, text encoder)",
        "variation": "the Karlo image-variations folder: only its CLIP image encoder is loaded, the "
        "decoder side comes from base",
    }
    default_resolution = 256  # the super-resolution output; the decoder paints at 64
    preview_space = "pixels"
    tiny_sources: ClassVar[dict[str, str]] = {"base": "base", "variation": "variation"}

    # -- offer ------------------------------------------------------------------------------------
    def ops(self, preset: Preset) -> list[str]:
        return ["txt2img", "variation"] if "variation" in preset.sources else ["txt2img"]

    def op_spec(self, op: str, spec: OpSpec, preset: Preset) -> OpSpec:
        """Output at the model's own size; no named samplers (UnCLIPScheduler steps take the next
        timestep, which no other scheduler accepts); stage lengths of at least 2 (UnCLIPScheduler
        divides by steps - 1)."""
        steps = spec.params["steps"]
        decoder_steps = replace(steps, default=25, min=2, doc="decoder denoising steps")
        super_res = replace(steps, name="super_res_steps", default=7, min=2, doc="super-resolution steps")
        guidance = replace(spec.params["guidance_scale"], default=8.0, doc="decoder classifier-free guidance")
        add = [decoder_steps, super_res, guidance]
        if op == "txt2img":
            add += [
                replace(steps, name="prior_steps", default=25, min=2, doc="prior denoising steps"),
                replace(guidance, name="prior_guidance_scale", default=4.0, doc="prior guidance"),
            ]
        spec = spec.changed(add=add, drop=["scheduler", "negative_prompt", "width", "height"])
        return self.ranked(op, prompts.text_spec(spec, prompts.PLAIN, prompts.WINDOW), preset)

    def check(self, req: OpRequest) -> None:
        """Plain prompts within one CLIP window: the prior reads the prompt as one CLIP embedding."""
        why = "turns the prompt into one CLIP embedding for its prior"
        prompts.check_plain(req, self.title, why, [Reader("base", limit=prompts.WINDOW)])
        ranking.check(req)

    # -- ranking ----------------------------------------------------------------------------------
    def ranks(self, preset: Preset) -> bool:
        """Karlo's text encoder and its image-variation encoder are one CLIP's two towers: with the
        `variation` folder the preset can rank."""
        return "variation" in preset.sources

    def clip(self, gen: Generation) -> ranking.Clip:
        """base's text encoder with the variation folder's image encoder (loaded by variation jobs)."""
        base = gen.models.component(gen.preset, "base")
        images = gen.models.component(gen.preset, "variation")
        return ranking.clip_towers(
            base.text_encoder, base.tokenizer, images["image_encoder"], images["feature_extractor"]
        )

    # -- components -------------------------------------------------------------------------------
    def load(self, models: Any, preset: Preset, role: str, source: str) -> Any:
        if is_single_file(source):
            raise RequestError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"model {preset.name!r}: unCLIP loads from diffusers folders or hub ids only, "
                f"not from the single file {source!r}",
                "model",
            )
        if role == "variation":
            return {
                "image_encoder": load_model(
                    CLIPVisionModelWithProjection, preset, source, models.dtype, "image_encoder"
                ),
                "feature_extractor": CLIPImageProcessor.from_pretrained(
                    source, subfolder="feature_extractor"
                ),
            }
        return self.load_base(preset, source, models.dtype)

    def load_base(self, preset: Preset, source: str, dtype: Any) -> UnCLIPPipeline:
        """The text-to-image pipeline, component by component (see the module doc for why)."""
        parts: dict[str, Any] = {
            name: load_model(cls, preset, source, dtype, name) for name, cls in BASE_MODELS.items()
        }
        parts["tokenizer"] = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
        parts |= {name: UnCLIPScheduler.from_pretrained(source, subfolder=name) for name in SCHEDULERS}
        pipe = UnCLIPPipeline(**parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def needs(self, preset: Preset, kind: str, extras: Sequence[str]) -> list[str]:
        return ["base", "variation"] if kind == "variation" else ["base"]

    def build_view(self, preset: Preset, kind: str, parts: dict[str, Any], extras: Sequence[str]) -> Any:
        """Pipelines of their own over base's very modules (and the variation encoder)."""
        base = parts["base"]
        if kind == "variation":
            shared = {name: getattr(base, name) for name in DECODER_SIDE}
            pipe = UnCLIPImageVariationPipeline(**shared, **parts["variation"])
        else:
            pipe = UnCLIPPipeline(**base.components)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def warm(self, preset: Preset, op: str) -> list[tuple[str, tuple[str, ...]]]:
        return [("variation" if op == "variation" else "txt2img", ())]

    def estimate_steps(self, op: str, params: dict[str, Any]) -> int:
        """All three loops (two for variations, which have no prior)."""
        return sum(self.stages(op, params))

    def stages(self, op: str, params: dict[str, Any]) -> tuple[int, ...]:
        """Steps of each denoising loop one picture runs, in order."""
        loops = (params["steps"], params["super_res_steps"])
        return (params["prior_steps"], *loops) if op == "txt2img" else loops

    # -- ops --------------------------------------------------------------------------------------
    # The pipelines have no step callbacks: the watched schedulers of each stage report progress and
    # cancel, and the plan tells progress how long the later stages are.

    def txt2img(self, gen: Generation, width: int, height: int) -> list[Image.Image]:
        """Pictures at the model's own size (width/height are not offered)."""
        params = gen.params
        gen.steps.plan(*self.stages("txt2img", params))
        pipe = self._scheduled(gen, "txt2img", SCHEDULERS)
        result = pipe(
            prompt=prompts.plain(params["prompt"]),
            prior_num_inference_steps=params["prior_steps"],
            decoder_num_inference_steps=params["steps"],
            super_res_num_inference_steps=params["super_res_steps"],
            prior_guidance_scale=params["prior_guidance_scale"],
            decoder_guidance_scale=params["guidance_scale"],
            num_images_per_prompt=len(gen.seeds),
            generator=gen.generators(),
            output_type="pil",
        )
        return result.images

    def variation(self, gen: Generation, image: Image.Image) -> list[Image.Image]:
        """Square pictures at the model's size, cropped to the selection's shape (centred, as CLIP's
        processor read the input) and scaled to the working size."""
        params = gen.params
        gen.steps.plan(*self.stages("variation", params))
        pipe = self._scheduled(gen, "variation", SCHEDULERS[1:])
        result = pipe(
            image=image,
            decoder_num_inference_steps=params["steps"],
            super_res_num_inference_steps=params["super_res_steps"],
            decoder_guidance_scale=params["guidance_scale"],
            num_images_per_prompt=len(gen.seeds),
            generator=gen.generators(),
            output_type="pil",
        )
        return [ImageOps.fit(picture, image.size, Image.LANCZOS) for picture in result.images]

    def _scheduled(self, gen: Generation, kind: str, schedulers: Sequence[str]) -> Any:
        """The view with a fresh, watched copy of each stage's own scheduler."""
        pipe = gen.view(kind)
        for attr in schedulers:
            gen.schedule(pipe, attr=attr, named=False, space=self.preview_space)
        return pipe
