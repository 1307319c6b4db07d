"""Live mode's bookkeeping, free of GIMP: when a change is due to be sent, which result is newest.

The dialog looks at the source every tick; a change is sent once the input (pixels and settings) has
stayed the same for the debounce delay, and only if it differs from what was sent last. Results
arrive in any order (a superseded job may still deliver its last step): one is shown only when its
job was sent after the one shown now. Pure Python: tested in pytest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .modes import (
    CONNECTION,
    MAX_INT,
    MODEL,
    PADDING,
    Arg,
    Mode,
    _loras,
    _negative,
    _prompt,
    _strength,
)

LANE = "gimp-live"  # one lane per session: each Live run has a session of its own
LIVE_LAYER = "Underpaint live"
LIVE_MARK = "underpaint-live-layer"  # parasite marking the live layer (found again, removed at the end)
ACTIONS = (("update", "Update the live layer"), ("keep", "Keep the live layer"), ("stop", "Remove it"))
LIVE_ARGS: tuple[Arg, ...] = (
    _prompt(),
    _negative(),
    _strength(0.5),
    Arg("seed", "int", "See_d", "The fixed seed of every live picture", 1, 0, MAX_INT, param="seed"),
    Arg(
        "delay",
        "float",
        "Debounce dela_y (s)",
        "Seconds the canvas must rest before it is sent",
        0.5,
        0.0,
        10.0,
    ),  # fmt: skip
    _loras(),
    Arg(
        "action",
        "choice",
        "Ac_tion",
        "Non-interactive calls: update (render the source into the live layer), keep (copy the live "
        "layer as a normal result layer) or stop (remove the live layer); the dialog does all three",
        "update",
        choices=ACTIONS,
    ),
    Arg("family-settings", "str", "_Family settings", "More parameters as name=value pairs", ""),
    MODEL,
    PADDING,
    *CONNECTION,
)
LIVE = Mode(
    "live",
    "sdedit",
    "_Live...",
    "Live",
    "Re-paint the selection (or the layer) live while you paint: every change is sent, the newest "
    "result shows in the 'Underpaint live' layer",
    LIVE_ARGS,
)


def input_key(pixels: bytes, mask: bytes | None, values: dict[str, Any]) -> str:
    """A fingerprint of what a live job would be made of: the source pixels, the mask, the settings."""
    digest = hashlib.blake2b(pixels, digest_size=16)
    digest.update(mask or b"")
    digest.update(json.dumps(values, sort_keys=True, default=str).encode())
    return digest.hexdigest()


@dataclass
class Debounce:
    """Sends a change once the input has rested for `delay` seconds, never the same input twice."""

    delay: float
    seen: str | None = None
    changed_at: float = 0.0
    sent: str | None = None

    def due(self, key: str, now: float) -> bool:
        """Whether `key` (the input now) should be sent now; True marks it sent."""
        if key != self.seen:
            self.seen, self.changed_at = key, now
        if self.seen == self.sent or now - self.changed_at < self.delay:
            return False
        self.sent = self.seen
        return True

    def retry(self) -> None:
        """The last send failed: send the same input again at the next change or tick."""
        self.sent = None


@dataclass
class Newest:
    """Which result to show: the jobs in the order they were sent, and the one shown."""

    sent: list[str] = field(default_factory=list)
    shown: int = -1

    def add(self, job: str) -> None:
        self.sent.append(job)

    def take(self, job: str) -> bool:
        """Whether the result of `job` is newer than the one shown (then it is the one shown)."""
        if job not in self.sent or self.sent.index(job) <= self.shown:
            return False
        self.shown = self.sent.index(job)
        return True

    @property
    def running(self) -> str | None:
        """The newest job sent, while its result is not shown yet."""
        return self.sent[-1] if self.sent and self.shown < len(self.sent) - 1 else None
