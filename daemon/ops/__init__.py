"""One module per op, none of which cares which model family runs it. Each has `check(req, limits)`
(validation that needs the images or the preset, run before the job is accepted) and `run(gen)`: crop
to the selection, call the preset's family (`families.base.Family`), return pasteable patches.
`compare` runs another op on several presets."""

from __future__ import annotations

from types import ModuleType

from . import controlnet, depth, inpaint, instruct, mix, sdedit, txt2img, upscale, variation

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
}
