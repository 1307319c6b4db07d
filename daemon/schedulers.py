"""Sampler names accepted by the `scheduler` parameter, mapped to diffusers scheduler classes."""

from __future__ import annotations

from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)

_SCHEDULERS: dict[str, tuple[type, dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),  # as SD does; PRK steps fail below 4 steps
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "unipc": (UniPCMultistepScheduler, {}),
    # Few-step samplers for live painting: meant for LCM / TCD distilled models or LoRAs, 2-8 steps and
    # low guidance (1-2); on an ordinary model they run, but its pictures need many more steps.
    "lcm": (LCMScheduler, {}),
    "tcd": (TCDScheduler, {}),
}

SCHEDULER_NAMES = list(_SCHEDULERS)


def fresh_scheduler(name: str, default: Any) -> Any:
    """A new scheduler for one job: the named one, or a fresh copy of the model's own (`name` "").

    Fresh per job because schedulers keep state between steps; sharing one would leak it.
    """
    if not name:
        return type(default).from_config(default.config)
    cls, overrides = _SCHEDULERS[name]
    return cls.from_config(default.config, **overrides)
