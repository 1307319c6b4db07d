"""Progress in the steps a painter asked for, not in the daemon's model calls.

The daemon's progress `total` counts every model call of every loop: a sampler's extra call, a prior's
steps, a cascade's stages. A painter who asked for 30 steps at strength 0.6 expects to see 18, and
variations multiply that. Pure Python: tested against a real daemon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .presets import Catalog
from .request import JobRequest


def asked_steps(request: JobRequest, welcome: dict[str, Any]) -> int:
    """The denoising steps the user asked for, all pictures together: `steps` after `strength` (img2img
    runs int(steps * strength) of them) times the variations, for every compared preset.

    The daemon's `total` counts model calls of every loop (a scheduler's extra call, a prior's
    steps); progress shows this number instead, so a painter who asked for 30 steps sees 30.
    """
    catalog = Catalog.from_welcome(welcome)
    params = request.params
    if request.op == "compare":
        op, names = str(params.get("op")), [str(m) for m in params.get("models") or []]
    else:
        op, names = request.op, [request.model or ""]
    total = 0
    for name in names:
        preset = catalog.get(name)
        specs = preset.specs(op) if preset is not None else {}
        steps = params.get("steps", (specs.get("steps") or {}).get("default"))
        if steps is None:
            continue
        per_picture = int(steps)
        if "strength" in specs or (not specs and "strength" in params):
            strength = params.get("strength", (specs.get("strength") or {}).get("default"))
            if strength is not None:
                per_picture = max(1, int(per_picture * float(strength)))
        total += per_picture * int(params.get("variations") or 1)
    return total


@dataclass
class StepCount:
    """Turns the daemon's progress (step of total model calls) into the steps the user asked for:
    never backwards (the daemon's total may grow while it runs), and ending on `asked` of `asked`."""

    asked: int
    shown: int = 0
    fraction: float = 0.0

    def update(self, step: int, total: int) -> tuple[float, str]:
        self.fraction = max(self.fraction, min(1.0, step / max(1, total)))
        if self.asked <= 0:  # nothing to go by: the daemon's own numbers
            return self.fraction, f"Underpaint: step {step} of {total}"
        now = min(self.asked, max(1 if step > 0 else 0, int(self.fraction * self.asked + 0.5)))
        self.shown = max(self.shown, now)
        return self.fraction, f"Underpaint: step {self.shown} of {self.asked}"
