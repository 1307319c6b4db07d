"""DDPM specifics: which sampler `steps` picks (DDIM below the model's 1000 training steps, the model's
own DDPM schedule at 1000 or when a scheduler is named), the model's own size, progress and cancel
without a pipeline callback, the parameters an unconditional model refuses, and sharing of its UNet.
The generic checks every family passes are in test_families.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline
from helpers import pixels

from underpaint.daemon.builders.tiny import ensure_tiny
from underpaint.daemon.builders.tiny.ddpm import RESOLUTION
from underpaint.daemon.config import load_config
from underpaint.daemon.families import detect_family
from underpaint.daemon.serving.models import ModelManager, module_bytes
from underpaint.protocol import DaemonError, JobCancelled

MODEL = "tiny-ddpm"


@pytest.fixture(scope="module")
def folder(underpaint_home: Path) -> Path:
    """The tiny DDPM checkpoint the daemon serves (built once, shared with it)."""
    return ensure_tiny(underpaint_home / "models", "ddpm") / "base"


def _direct(cls: Any, folder: Path, seed: int, steps: int) -> np.ndarray:
    """The same model run by diffusers itself, outside the daemon: what the daemon must reproduce."""
    pipe = cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    generator = [torch.Generator("cpu").manual_seed(seed)]
    image = pipe(batch_size=1, generator=generator, num_inference_steps=steps, output_type="pil").images[0]
    return np.asarray(image.convert("RGBA"))


def test_fewer_steps_run_ddim_at_the_models_own_size(client: Any, folder: Path) -> None:
    result = client.run("txt2img", {"steps": 4, "seed": 7}, model=MODEL)
    image = pixels(result["images"][0])
    assert image.shape == (RESOLUTION, RESOLUTION, 4), "the model's own size, not a requested one"
    assert result["params"]["steps"] == 4 and "width" not in result["params"]
    ddim = _direct(DDIMPipeline, folder, 7, 4)
    assert np.array_equal(image, ddim), "4 steps are DDIM's 4 steps over the same model"
    assert not np.array_equal(image, _direct(DDPMPipeline, folder, 7, 4)), "not DDPM's"


def test_same_seed_same_picture_other_seed_other_picture(client: Any) -> None:
    first = client.run("txt2img", {"steps": 3, "seed": 21}, model=MODEL)
    again = client.run("txt2img", first["params"], model=MODEL)
    other = client.run("txt2img", {**first["params"], "seed": 22}, model=MODEL)
    assert np.array_equal(pixels(first["images"][0]), pixels(again["images"][0]))
    assert not np.array_equal(pixels(first["images"][0]), pixels(other["images"][0]))


def test_a_named_scheduler_runs_in_the_ddpm_loop(client: Any, folder: Path) -> None:
    named = client.run("txt2img", {"steps": 4, "seed": 7, "scheduler": "ddpm"}, model=MODEL)
    assert np.array_equal(pixels(named["images"][0]), _direct(DDPMPipeline, folder, 7, 4))
    with pytest.raises(DaemonError) as err:  # Euler needs input scaling that DDPM's loop never does
        client.submit("txt2img", {"scheduler": "euler"}, model=MODEL)
    assert err.value.code == "unknown_scheduler" and "dpmpp_2m" in str(err.value)


def test_full_schedule_reports_1000_steps_with_pixel_previews_and_cancels(client: Any) -> None:
    job = client.submit("txt2img", {"seed": 3}, model=MODEL, preview=True)
    progress = []
    for event in client.events(job, timeout=120):
        if event["type"] == "loading":  # the preset's first load (when this test runs alone)
            continue
        assert event["type"] == "progress", event
        progress.append(event)
        if len(progress) == 3:
            break
    client.cancel(job)
    later: list[dict[str, Any]] = []
    with pytest.raises(JobCancelled):
        client.wait(job, on_progress=later.append, timeout=120)
    assert [e["step"] for e in progress] == [1, 2, 3] and {e["total"] for e in progress} == {1000}
    # Steps are milliseconds here: a few may finish while the cancel travels, not the remaining 997.
    assert len(later) < 50, f"cancel stopped the 1000-step schedule, not after {len(later)} more steps"
    preview = progress[-1]["preview"]
    assert (preview["width"], preview["height"], preview["channels"]) == (RESOLUTION, RESOLUTION, 3)
    assert np.frombuffer(preview["data"], np.uint8).std() > 10, "the noisy pixels themselves"


def test_text_and_size_params_are_refused_clearly(client: Any) -> None:
    welcome = client.hello("test_family_ddpm")
    preset = next(p for p in welcome["models"] if p["name"] == MODEL)
    assert preset["ops"] == ["txt2img"] and preset["resolution"] == RESOLUTION
    spec = preset["op_specs"]["txt2img"]["params"]
    assert set(spec) == {"steps", "seed", "variations", "scheduler", "output_format"}
    assert spec["steps"]["default"] == 1000 and spec["steps"]["max"] == 1000
    assert welcome["limits"]["max_steps"] < 1000 and "limits.max_steps" in spec["steps"]["doc"]
    for name, value in (("prompt", "a cat"), ("negative_prompt", "dogs"), ("width", 64)):
        with pytest.raises(DaemonError) as err:
            client.submit("txt2img", {name: value}, model=MODEL)
        assert err.value.code == "invalid_value" and err.value.field == f"params.{name}"
        assert f"{MODEL!r}" in str(err.value) and f"does not take params.{name}" in str(err.value)
    with pytest.raises(DaemonError) as err:
        client.submit("txt2img", {"steps": 1001}, model=MODEL)
    assert err.value.code == "out_of_range"


def test_both_samplers_share_the_one_unet_and_the_folder_is_detected(
    underpaint_home: Path, folder: Path
) -> None:
    manager = ModelManager(
        load_config(), torch.device("cpu"), torch.float32, tiny_root=underpaint_home / "models"
    )
    preset = manager.preset(MODEL)
    ddpm, ddim = manager.view(preset, "ddpm"), manager.view(preset, "ddim")
    assert ddim.unet is ddpm.unet and manager.loads == 1
    assert manager.used_bytes() == module_bytes(ddpm.unet)
    assert (
        type(ddpm.scheduler).__name__ == "DDPMScheduler" and type(ddim.scheduler).__name__ == "DDIMScheduler"
    )
    assert detect_family(str(folder)) == "ddpm"
