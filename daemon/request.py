"""A validated job as the ops and families see it, and the seeds of its variations."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .config import Preset
from .params import MAX_SEED


@dataclass
class OpRequest:
    """A validated job: preset, params with defaults filled in, and decoded input images."""

    op: str
    preset: Preset
    params: dict[str, Any]
    images: dict[str, Image.Image] = field(default_factory=dict)


def seeds_for(params: dict[str, Any]) -> list[int]:
    """Seed of every variation; a random base seed when the client gave none (always reported)."""
    if params.get("seed") is None:
        params["seed"] = random.randint(0, MAX_SEED)
    base = int(params["seed"])
    return [(base + i) % (MAX_SEED + 1) for i in range(int(params.get("variations", 1)))]


def generators(seeds: list[int]) -> list[torch.Generator]:
    """CPU generators: the same seed gives the same noise on every device; image i draws only from
    its own generator, so variation i alone with seed + i gives the same picture."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]
