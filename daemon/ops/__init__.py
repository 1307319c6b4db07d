"""One module per op. Each has `check(req)` (validation that needs the images or the preset, run
before the job is accepted) and `run(req, models, steps, preprocessors=...)` returning patches."""

from __future__ import annotations

from types import ModuleType

from . import controlnet, inpaint, instruct, sdedit, txt2img, upscale

OPS: dict[str, ModuleType] = {
    "txt2img": txt2img,
    "sdedit": sdedit,
    "inpaint": inpaint,
    "controlnet": controlnet,
    "instruct": instruct,
    "upscale": upscale,
}
