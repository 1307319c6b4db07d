"""A tiny, seeded, randomly initialised DDPM folder (``base/``): a pixel-space UNet2DModel and the
DDPMScheduler configured like google/ddpm-cat-256 (linear betas, 1000 training steps, clipped
samples), saved as a DDPMPipeline so it loads exactly as the real checkpoints do.

The real cat model works on 256 px pictures with six UNet levels; this one on 32 px with two, one of
them with self-attention as in the real model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import Progress, manual_seed

if TYPE_CHECKING:  # heavy imports stay lazy so importing this module is cheap
    from diffusers import UNet2DModel

FOLDERS = ("base",)

#: Side of the pictures the tiny model "was trained" on (UNet2DModel's sample_size).
RESOLUTION = 32
TRAIN_STEPS = 1000


def make_unet(seed: int) -> UNet2DModel:
    from diffusers import UNet2DModel

    manual_seed(seed, "ddpm/unet")
    return UNet2DModel(
        sample_size=RESOLUTION,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


def make_scheduler() -> Any:
    """google/ddpm-cat-256's scheduler config."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=TRAIN_STEPS,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=True,
        variance_type="fixed_small",
    )


def build(dest: Path, seed: int = 0, progress: Progress | None = None) -> Path:
    """Build the ddpm tiny folder under ``dest`` (created if missing) and return ``dest``."""
    from diffusers import DDPMPipeline

    say: Progress = progress or (lambda _msg: None)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    say(f"base: pixel-space unet ({RESOLUTION} px) + DDPM scheduler")
    DDPMPipeline(unet=make_unet(seed), scheduler=make_scheduler()).save_pretrained(dest / "base")
    say("done")
    return dest
