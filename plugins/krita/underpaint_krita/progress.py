"""What the progress bar says: the steps the painter asked for, not the daemon's scheduler calls.

The daemon's `progress` counts model calls over the whole job (PROTOCOL.md 6.3): every picture, a
prior and a decoder, a cascade's stages; some samplers make one call more than their steps (PNDM: 5
calls for 4 steps), and `total` may grow while the job runs. A painter asked for "30 steps at
strength 0.5, 2 pictures", so the bar runs 0 … 100 % of the daemon's fraction and the text maps that
fraction onto the painter's numbers: "picture 2 of 2 · step 9 of 15". Pure Python, unit-tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Expected:
    """What the painter asked for: denoising steps per picture (after strength) and pictures."""

    steps: int
    pictures: int = 1


def expected(params: dict[str, Any]) -> Expected | None:
    """From the submitted params; None when they name no steps (the daemon's default: no numbers to
    promise, the bar shows only the percentage)."""
    steps = params.get("steps")
    if not isinstance(steps, int) or steps < 1:
        return None
    strength = params.get("strength")
    if isinstance(strength, (int, float)) and 0 < strength < 1:
        steps = min(steps, max(1, int(steps * strength)))  # what diffusers runs for img2img and inpaint
    pictures = max(1, int(params.get("variations") or 1)) * max(1, len(params.get("models") or [None]))
    return Expected(steps, pictures)


@dataclass
class Progress:
    """One job's progress as shown; `percent` and the numbers never go back while the job runs."""

    expect: Expected | None
    percent: int = 0
    picture: int = 0
    step: int = 0

    def update(self, step: int, total: int) -> None:
        """Apply a daemon `progress` (step of total model calls)."""
        step = min(max(0, step), total)
        fraction = step / total if total > 0 else 0.0
        self.percent = max(self.percent, step * 100 // total if total > 0 else 0)
        if self.expect is None:
            return
        per, pictures = self.expect.steps, self.expect.pictures
        done = math.ceil(fraction * per * pictures - 1e-9)  # painter's steps begun, all pictures
        picture = min(pictures, max(1, math.ceil(done / per)))
        step_in = min(per, max(0, done - (picture - 1) * per))
        if (picture, step_in) > (self.picture, self.step):
            self.picture, self.step = picture, step_in

    def text(self) -> str:
        """'step 3 of 15', 'picture 2 of 3 · step 1 of 15', or '40 %' without expectations."""
        if self.expect is None:
            return f"{self.percent} %"
        steps = f"step {max(1, self.step)} of {self.expect.steps}"
        if self.expect.pictures > 1:
            return f"picture {max(1, self.picture)} of {self.expect.pictures} \u00b7 {steps}"
        return steps
