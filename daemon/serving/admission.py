"""What a shared box needs to stay fair and alive: caps per client identity and in all, a budget for
image bytes waiting in the queue, and admission of each job by its cost (time) and memory.

A client identity is its session, or its CurveZMQ public key when the daemon has keys (then every
connection and session of that key counts together). Without keys anyone can open sessions, so the
daemon-wide caps are what bound them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..errors import ErrorCode, RequestError
from ..ops import estimate_steps
from ..request import OpRequest
from .policy import MIB, Policy

#: Working memory a denoising loop needs per pixel of its picture, as a rough upper estimate.
WORK_BYTES_PER_PIXEL = 1024
#: Pixels of one "megapixel" in job costs.
MEGAPIXEL = 1 << 20


class Budget:
    """Jobs and image bytes waiting, per identity and in all (thread-safe: the worker releases)."""

    def __init__(self, policy: Policy, max_jobs_per_client: int) -> None:
        self.policy = policy
        self.max_jobs_per_client = max_jobs_per_client
        self._lock = threading.Lock()
        self._jobs: dict[str, int] = {}
        self._bytes: dict[str, int] = {}
        self.jobs = 0
        self.bytes = 0

    def reserve_bytes(self, identity: str, n: int) -> None:
        """Count `n` bytes against the budgets, or refuse with `queue_full`."""
        with self._lock:
            mine = self._bytes.get(identity, 0)
            if mine + n > self.policy.max_queued_bytes_per_client:
                raise _full(
                    "max_queued_bytes_per_client",
                    f"your waiting jobs' images would take {(mine + n) / MIB:.0f} MiB; at most "
                    f"{self.policy.max_queued_bytes_per_client / MIB:.0f} MiB may wait per client",
                )
            if self.bytes + n > self.policy.max_queued_bytes:
                raise _full(
                    "max_queued_bytes",
                    f"the queue holds {self.bytes / MIB:.0f} MiB of images; at most "
                    f"{self.policy.max_queued_bytes / MIB:.0f} MiB may wait in all",
                )
            self._bytes[identity] = mine + n
            self.bytes += n

    def release_bytes(self, identity: str, n: int) -> None:
        with self._lock:
            left = self._bytes.get(identity, 0) - n
            if left > 0:
                self._bytes[identity] = left
            else:
                self._bytes.pop(identity, None)
            self.bytes -= n

    def check_job(self, identity: str, waiting: int = 0) -> None:
        """Room for one more waiting job of `identity` (which has `waiting` submits not yet
        accepted), or `queue_full`."""
        with self._lock:
            mine = self._jobs.get(identity, 0) + waiting
            if mine >= self.max_jobs_per_client:
                raise _full(
                    "max_queued_per_client", f"you already have {mine} jobs queued (the limit per client)"
                )
            if self.jobs >= self.policy.max_queued:
                raise _full("max_queued", f"the daemon already has {self.jobs} jobs queued (its limit)")

    def add_job(self, identity: str) -> None:
        with self._lock:
            self._jobs[identity] = self._jobs.get(identity, 0) + 1
            self.jobs += 1

    def remove_job(self, identity: str) -> None:
        with self._lock:
            left = self._jobs.get(identity, 0) - 1
            if left > 0:
                self._jobs[identity] = left
            else:
                self._jobs.pop(identity, None)
            self.jobs -= 1


def _full(limit: str, message: str) -> RequestError:
    err = RequestError(ErrorCode.QUEUE_FULL, message)
    err.extra = {"limit": limit}
    return err


# -- cost -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cost:
    megapixel_steps: float
    memory_bytes: int


def job_cost(request: OpRequest) -> Cost:
    """Pixels x steps x variations of every picture the job makes, and its memory estimate: decoded
    inputs + result images + working memory of its largest picture."""
    parts = [p.request for p in getattr(request, "parts", ())] or [request]
    pixel_steps = 0.0
    outputs = 0
    largest = 0
    for part in parts:
        pixels = work_pixels(part)
        variations = int(part.params.get("variations") or 1)
        pixel_steps += pixels * estimate_steps(part) * variations
        outputs += pixels * 4 * variations
        largest = max(largest, pixels)
    inputs = sum(image_bytes(img) for img in request.images.values())
    return Cost(pixel_steps / MEGAPIXEL, inputs + outputs + largest * WORK_BYTES_PER_PIXEL)


def work_pixels(req: OpRequest) -> int:
    """Pixels of one picture: the output of upscale; width x height of ops that have them and no
    input image; resolution² for ops with an input image (the working size's longer side is
    `resolution`); the preset's resolution² for families with a fixed size."""
    p, native = req.params, req.preset.resolution
    image = req.images.get("image")
    if req.op == "upscale" and image is not None:
        factor = int(p.get("factor") or 4)
        return image.width * image.height * factor * factor
    if image is None and ("width" in p or "height" in p):
        return int(p.get("width") or native) * int(p.get("height") or native)
    side = int(p.get("resolution") or native)
    return side * side


def image_bytes(img: Any) -> int:
    return img.width * img.height * len(img.getbands())


def admit(request: OpRequest, policy: Policy) -> Cost:
    """Refuse a job too long or too big for this daemon (`job_too_large`)."""
    cost = job_cost(request)
    if cost.megapixel_steps > policy.max_job_cost:
        raise RequestError(
            ErrorCode.JOB_TOO_LARGE,
            f"the job costs {cost.megapixel_steps:.0f} megapixel-steps (pixels x steps x variations / "
            f"2^20); this daemon takes at most {policy.max_job_cost:g}: use fewer steps, variations or "
            "pixels",
        )
    if cost.memory_bytes > policy.max_job_memory_bytes:
        raise RequestError(
            ErrorCode.JOB_TOO_LARGE,
            f"the job would need about {cost.memory_bytes / MIB:.0f} MiB; this daemon takes at most "
            f"{policy.max_job_memory_bytes / MIB:.0f} MiB per job: use a smaller size",
        )
    return cost
