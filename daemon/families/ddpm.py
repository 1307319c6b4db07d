"""DDPM: the original denoising diffusion model. A UNet2DModel works directly on pixels, with no text
encoder and no VAE: it turns noise into a picture of what it was trained on, at its own size.

The model is trained over 1000 noise levels and the DDPM sampler walks all of them; DDIM samples the
same trained model in far fewer steps. So `steps` picks the sampler: the full count runs the model's
own DDPM schedule, fewer steps run DDIM (a scheduler the user names runs in DDPM's loop instead).
DDPMPipeline reports no steps itself: progress, previews and cancel come from the watched scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from diffusers import DDIMPipeline, DDPMPipeline, DDPMScheduler
from PIL import Image

from ..config import Preset
from ..params import OpSpec, Param
from ..schedulers import SCHEDULER_NAMES
from .base import Family, Generation, load_pipeline

#: Training timesteps of the DDPM checkpoints (google/ddpm-*): the full, default schedule.
TRAIN_STEPS = 1000
#: Samplers that work in DDPMPipeline's plain loop: it never scales the model input (Euler, Heun and
#: LMS need that) and passes `generator` to `step` (PNDM, UniPC and LMS do not take it).
LOOP_SCHEDULERS = tuple(n for n in ("ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_karras") if n in SCHEDULER_NAMES)
#: Common txt2img parameters an unconditional model at a fixed size cannot take.
NOT_TAKEN = ("prompt", "negative_prompt", "guidance_scale", "width", "height")


class DDPM(Family):
    name = "ddpm"
    title = "Unconditional DDPM"
    about = (
        "DDPM is diffusion in its first form: a UNet works straight on the pixels and removes a little "
        "noise at each of 1000 small steps until a picture appears. It takes no prompt: a checkpoint "
        "paints only the kind of picture it was trained on (cats, churches, bedrooms, faces...) at its "
        "one fixed size, here 256 px. Fewer than 1000 steps switch to the DDIM sampler, which gets "
        "similar pictures out of the same model in far fewer steps (try 50). Good for seeing how "
        "diffusion began and what a model learned of its subject; no prompts, no editing, small "
        "pictures, and slow at the full 1000 steps."
    )
    roles: ClassVar[dict[str, str]] = {"base": "a DDPMPipeline checkpoint (UNet2DModel + DDPMScheduler)"}
    default_resolution = 256
    preview_space = "pixels"
    tiny_sources: ClassVar[dict[str, str]] = {"base": "base"}
    tiny_resolution = 32

    # -- offer ------------------------------------------------------------------------------------
    def ops(self, preset: Preset) -> list[str]:
        return ["txt2img"]

    def op_spec(self, op: str, spec: OpSpec, preset: Preset) -> OpSpec:
        steps = Param(
            "steps",
            "int",
            TRAIN_STEPS,
            f"denoising steps: {TRAIN_STEPS} (the model's training steps) runs its own DDPM schedule, "
            f"fewer run DDIM. Up to {TRAIN_STEPS}: this model family's exception to limits.max_steps",
            1,
            TRAIN_STEPS,
        )
        scheduler = Param(
            "scheduler",
            "str",
            "",
            "sampler; empty = DDPM at the full step count, DDIM below it",
            choices=("", *LOOP_SCHEDULERS),
        )
        return spec.changed(
            add=[steps, scheduler],
            drop=NOT_TAKEN,
            doc="an unconditional picture (no prompt) at the model's own size",
        )

    # -- components -------------------------------------------------------------------------------
    def load(self, models: Any, preset: Preset, role: str, source: str) -> Any:
        return load_pipeline(DDPMPipeline, preset, source, models.dtype)

    def needs(self, preset: Preset, kind: str, extras: Sequence[str]) -> list[str]:
        return ["base"]

    def build_view(self, preset: Preset, kind: str, parts: dict[str, Any], extras: Sequence[str]) -> Any:
        """`ddpm`: the model's own schedule (whatever class the folder names, DDPM's loop needs DDPM's
        scheduler); `ddim`: DDIMPipeline, which makes a DDIM scheduler of the same noise levels."""
        base = parts["base"]
        if kind == "ddim":
            pipe = DDIMPipeline(unet=base.unet, scheduler=base.scheduler)
        else:
            pipe = DDPMPipeline(unet=base.unet, scheduler=DDPMScheduler.from_config(base.scheduler.config))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def warm(self, preset: Preset, op: str) -> list[tuple[str, tuple[str, ...]]]:
        return [("ddpm", ()), ("ddim", ())]

    # -- ops --------------------------------------------------------------------------------------
    def txt2img(self, gen: Generation, width: int, height: int) -> list[Image.Image]:
        """At the model's own size: `width`/`height` (the preset's resolution) are not used."""
        steps, named = gen.params["steps"], gen.params.get("scheduler", "")
        pipe = gen.view("ddpm")
        trained = pipe.scheduler.config.num_train_timesteps
        if named or steps >= trained:
            pipe = gen.schedule(pipe, space=self.preview_space)
            steps = min(steps, trained)
        else:
            pipe = gen.schedule(gen.view("ddim"), named=False, space=self.preview_space)
        out = pipe(
            batch_size=len(gen.seeds),
            generator=gen.generators(),
            num_inference_steps=steps,
            output_type="pil",
        )
        return out.images
