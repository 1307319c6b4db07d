"""One module per op, none of which cares which model family runs it. Each has `check(req, limits)`
(validation that needs the images or the preset, run before the job is accepted) and `run(gen)`: crop
to the selection, call the preset's family (`families.base.Family`), return pasteable patches.
`compare` runs another op on several presets.

`run_op` runs a job's variations one seed at a time: a batch of several images goes through
differently blocked kernels than a single one, so only this way does variation i, re-run alone with
seed + i, give exactly the same pixels (what a painter who reuses a seed expects). With `rank`, it
then orders the pictures by CLIP similarity (ranking.py), best first.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from . import controlnet, depth, inpaint, instruct, mix, reword, sdedit, txt2img, upscale, variation
from .common import family_of

if TYPE_CHECKING:
    from ..families.base import Generation
    from ..request import OpRequest
    from .common import Patch

OPS: dict[str, ModuleType] = {
    "txt2img": txt2img,
    "sdedit": sdedit,
    "inpaint": inpaint,
    "controlnet": controlnet,
    "instruct": instruct,
    "variation": variation,
    "depth": depth,
    "mix": mix,
    "upscale": upscale,
    "reword": reword,
}


def estimate_steps(request: OpRequest) -> int:
    """Steps one picture of the request takes, as its family estimates them."""
    from ..families import family

    return family(request.preset.family).estimate_steps(request.op, request.params)


def run_op(op: str, gen: Generation) -> list[Patch]:
    """Run `op` once per variation seed, reporting progress over all of them."""
    patches: list[Patch] = []
    outer_after = gen.steps.after  # work after this op (compare's later presets)
    per_picture = estimate_steps(gen.req)
    for i, seed in enumerate(gen.seeds):
        start = gen.steps.step
        gen.steps.after = outer_after + per_picture * (len(gen.seeds) - i - 1)
        gen.steps.plan()
        patches += OPS[op].run(gen.for_seed(seed))
        per_picture = max(1, gen.steps.step - start)  # measured: the later pictures take as many
    gen.steps.after = outer_after
    if gen.params.get("rank"):
        from .. import ranking

        gen.steps.check_cancelled()
        patches = ranking.rank(gen, family_of(gen).clip(gen), patches)
    return patches
