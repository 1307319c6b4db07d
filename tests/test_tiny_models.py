"""The tiny random models load through real ``from_pretrained`` paths and run every pipeline."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import filecmp
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    AutoPipelineForImage2Image,
    ControlNetModel,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionLatentUpscalePipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTokenizer

from underpaint.daemon.builders import tiny as tiny_pkg
from underpaint.daemon.builders.tiny import sd15 as tiny

PROMPT = "a red fox, oil painting"


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build per session; every test reads it."""
    return tiny_pkg.build_family("sd15", tmp_path_factory.mktemp("tiny") / "models", seed=0)


def _quiet(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(size: int, seed: int = 1) -> Image.Image:
    """A deterministic noisy RGB image."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _mask(size: int) -> Image.Image:
    """White (repaint) square in the middle of a black mask."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return Image.fromarray(mask)


def _run_twice(call: Callable[..., Any], **kwargs: Any) -> np.ndarray:
    """Run with the same seeded CPU generator twice; pixels must match and not be constant."""
    outs = []
    for _ in range(2):
        gen = torch.Generator("cpu").manual_seed(1234)
        outs.append(call(generator=gen, output_type="np", **kwargs).images)
    assert np.array_equal(outs[0], outs[1])
    assert np.isfinite(outs[0]).all()
    assert outs[0].std() > 1e-3, "image is constant"
    return outs[0]


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def base(models: Path) -> StableDiffusionPipeline:
    return _quiet(StableDiffusionPipeline.from_pretrained(models / "base"))


def test_layout_and_shared_parts(models: Path) -> None:
    for name in tiny.FOLDERS:
        assert (models / name).is_dir(), name
    assert "random weights" in (models / "README.md").read_text().lower()
    for name in ("inpaint", "instruct", "upscale-latent-x2"):
        for part in tiny.SHARED_PARTS:
            cmp = filecmp.dircmp(models / "base" / part, models / name / part)
            assert not (cmp.left_only or cmp.right_only), (name, part)
            _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
            assert not mismatch and not errors, (name, part, mismatch)


def test_tokenizer_is_real_bpe_and_reloads(models: Path) -> None:
    built = tiny.make_tokenizer()
    ids = built(PROMPT).input_ids
    assert len(set(ids)) > 2
    assert built.unk_token_id not in ids[1:-1]
    loaded = CLIPTokenizer.from_pretrained(models / "base" / "tokenizer")
    assert loaded(PROMPT).input_ids == ids
    assert loaded.model_max_length == 77
    padded = loaded(PROMPT, padding="max_length", max_length=77).input_ids
    assert len(padded) == 77
    # Byte fallback: any text tokenizes without the unknown token.
    assert loaded.unk_token_id not in loaded("Ölgemälde 東京 🦊").input_ids[1:-1]


def test_build_is_seeded(models: Path, tmp_path: Path) -> None:
    again = tiny_pkg.build_family("sd15", tmp_path / "again", seed=0)
    assert _hashes(again) == _hashes(models)
    other = tiny_pkg.build_family("sd15", tmp_path / "other", seed=1)
    unet = "base/unet/diffusion_pytorch_model.safetensors"
    assert _hashes(other)[unet] != _hashes(models)[unet]


def test_progress_reports_each_component(tmp_path: Path) -> None:
    messages: list[str] = []
    tiny.build(tmp_path / "m", progress=messages.append)
    assert len(messages) >= len(tiny.FOLDERS)
    assert any("controlnet-depth" in m for m in messages)


def test_ensure_builds_once_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tiny_pkg.ensure_tiny(tmp_path, "sd15")
    assert final == tmp_path / f"tiny-v{tiny_pkg.TINY_VERSION}" / "sd15"
    assert (final / "base" / "model_index.json").is_file()
    assert "sd15" in (final / "README.md").read_text()
    assert [p.name for p in final.parent.iterdir()] == [final.name]

    def fail(*_a: Any, **_k: Any) -> Path:
        raise AssertionError("must not rebuild")

    monkeypatch.setattr(tiny, "build", fail)
    assert tiny_pkg.ensure_tiny(tmp_path, "sd15") == final


def test_ensure_loses_race_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / f"tiny-v{tiny_pkg.TINY_VERSION}" / "sd15"

    def rival_wins(dest: Path, *_a: Any, **_k: Any) -> Path:
        (final / "base").mkdir(parents=True)  # another process renamed first
        (dest / "base").mkdir()
        return dest

    monkeypatch.setattr(tiny, "build", rival_wins)
    assert tiny_pkg.ensure_tiny(tmp_path, "sd15") == final
    assert [p.name for p in final.parent.iterdir()] == [final.name]


def test_base_text_to_image(base: StableDiffusionPipeline) -> None:
    assert base.unet.config.in_channels == 4
    assert base.vae_scale_factor == 8
    assert base.unet.config.sample_size * base.vae_scale_factor == tiny.NATIVE_RESOLUTION
    img = _run_twice(base, prompt=PROMPT, height=64, width=64, num_inference_steps=3)
    assert img.shape == (1, 64, 64, 3)


def test_image_to_image_from_pipe(base: StableDiffusionPipeline) -> None:
    pipe = _quiet(AutoPipelineForImage2Image.from_pipe(base))
    assert pipe.unet is base.unet
    img = _run_twice(pipe, prompt=PROMPT, image=_image(64), strength=0.7, num_inference_steps=4)
    assert img.shape == (1, 64, 64, 3)


def test_inpaint_folder(models: Path) -> None:
    pipe = _quiet(StableDiffusionInpaintPipeline.from_pretrained(models / "inpaint"))
    assert pipe.unet.config.in_channels == 9
    # The daemon loads only the UNet and shares base's other parts.
    unet = UNet2DConditionModel.from_pretrained(models / "inpaint", subfolder="unet")
    assert unet.config.in_channels == 9
    img = _run_twice(
        pipe,
        prompt=PROMPT,
        image=_image(64),
        mask_image=_mask(64),
        height=64,
        width=64,
        num_inference_steps=3,
    )
    assert img.shape == (1, 64, 64, 3)


def test_instruct_folder(models: Path) -> None:
    pipe = _quiet(StableDiffusionInstructPix2PixPipeline.from_pretrained(models / "instruct"))
    assert pipe.unet.config.in_channels == 8
    img = _run_twice(pipe, prompt="make it snowy", image=_image(64), num_inference_steps=3)
    assert img.shape == (1, 64, 64, 3)


def test_controlnets(models: Path, base: StableDiffusionPipeline) -> None:
    control = _image(64, seed=7)
    outputs = []
    for kind in tiny.CONTROLNET_KINDS:
        controlnet = ControlNetModel.from_pretrained(models / f"controlnet-{kind}")
        pipe = _quiet(StableDiffusionControlNetPipeline(**base.components, controlnet=controlnet))
        outputs.append(
            _run_twice(pipe, prompt=PROMPT, image=control, height=64, width=64, num_inference_steps=2)
        )
        assert outputs[-1].shape == (1, 64, 64, 3)
    # Differently seeded, non-zero control convs: each ControlNet steers differently.
    for i in range(1, len(outputs)):
        assert not np.array_equal(outputs[0], outputs[i])


@pytest.mark.parametrize("unet_from", ["base", "inpaint"])
def test_controlnet_inpaint(models: Path, base: StableDiffusionPipeline, unet_from: str) -> None:
    """Both the 4-channel UNet and the 9-channel one (shared with base's parts) take control."""
    controlnet = ControlNetModel.from_pretrained(models / "controlnet-canny")
    unet = UNet2DConditionModel.from_pretrained(models / unet_from, subfolder="unet")
    components = {**base.components, "unet": unet}
    pipe = _quiet(StableDiffusionControlNetInpaintPipeline(**components, controlnet=controlnet))
    img = _run_twice(
        pipe,
        prompt=PROMPT,
        image=_image(64),
        mask_image=_mask(64),
        control_image=_image(64, 3),
        height=64,
        width=64,
        num_inference_steps=3,
    )
    assert img.shape == (1, 64, 64, 3)


def test_upscale_x4(models: Path) -> None:
    pipe = _quiet(StableDiffusionUpscalePipeline.from_pretrained(models / "upscale-x4"))
    img = _run_twice(pipe, prompt=PROMPT, image=_image(64), noise_level=20, num_inference_steps=2)
    assert img.shape == (1, 256, 256, 3)


def test_upscale_latent_x2(models: Path) -> None:
    pipe = _quiet(StableDiffusionLatentUpscalePipeline.from_pretrained(models / "upscale-latent-x2"))
    img = _run_twice(pipe, prompt=PROMPT, image=_image(128), num_inference_steps=2)
    assert img.shape == (1, 256, 256, 3)


def test_inpaint_from_base_at_256(base: StableDiffusionPipeline) -> None:
    """At 256 px the 8x VAE keeps attention small (a 2-level VAE made this take minutes; speed itself
    is bench's business, not a timed test's)."""
    pipe = _quiet(StableDiffusionInpaintPipeline.from_pipe(base))
    img = _run_twice(
        pipe,
        prompt=PROMPT,
        image=_image(256),
        mask_image=_mask(256),
        height=256,
        width=256,
        num_inference_steps=4,
    )
    assert img.shape == (1, 256, 256, 3)
