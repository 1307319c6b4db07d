"""txt2img: a picture from text at width x height."""

from __future__ import annotations

from ..params import Limits
from ..serving.models import ModelManager
from .common import (
    OpRequest,
    Patch,
    StepReporter,
    full_size,
    prepare_pipe,
    seeds_for,
    text_args,
    whole,
)


def check(req: OpRequest, limits: Limits) -> None:
    """No images needed; size limits are in the param table."""


def run(req: OpRequest, models: ModelManager, steps: StepReporter, **_: object) -> list[Patch]:
    seeds = seeds_for(req.params)
    pipe = prepare_pipe(models.view(req.preset, "txt2img"), req.params)
    width, height = full_size(req)
    out = pipe(**text_args(req.params, seeds), width=width, height=height, **steps.on_step_end())
    return whole(out.images, seeds)
