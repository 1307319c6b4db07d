"""SDXL specifics: the base -> refiner handoff (`refine`), what the refiner shares with base, the `vae`
setting, SDXL ControlNets, and the tiny SDXL folders. The generic checks every family passes (each op,
determinism, prompts, paste-back) are in test_families.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from helpers import composite, ellipse_mask, obj, picture, pixels
from PIL import Image, ImageDraw

from underpaint.daemon.builders.tiny import build_family, ensure_tiny
from underpaint.daemon.builders.tiny.common import make_vae
from underpaint.daemon.builders.tiny.sdxl import FOLDERS, SDXL_VAE_SCALE
from underpaint.daemon.config import load_config
from underpaint.daemon.errors import RequestError
from underpaint.daemon.families import detect_family
from underpaint.daemon.families.base import Generation
from underpaint.daemon.ops import run_op
from underpaint.daemon.params import Limits
from underpaint.daemon.progress import StepReporter
from underpaint.daemon.request import OpRequest
from underpaint.daemon.schedulers import SCHEDULER_NAMES
from underpaint.daemon.serving.catalog import Catalog
from underpaint.daemon.serving.models import ModelManager, module_bytes
from underpaint.protocol import DaemonError

MODEL = "tiny-sdxl"
FAST = {"prompt": "a red fox in the snow", "steps": 4, "seed": 7}
T2I = {**FAST, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def tiny(underpaint_home: Path) -> Path:
    return ensure_tiny(underpaint_home / "models", "sdxl")


@pytest.fixture
def manager(underpaint_home: Path) -> ModelManager:
    return ModelManager(
        load_config(), torch.device("cpu"), torch.float32, tiny_root=underpaint_home / "models"
    )


def _rgb(result: dict[str, Any]) -> np.ndarray:
    return pixels(result["images"][0])[..., :3]


def _generator() -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(T2I["seed"])]


def _diffusers_args() -> dict[str, Any]:
    """The daemon's txt2img arguments for T2I, spelled out for diffusers."""
    return {
        "prompt": T2I["prompt"],
        "num_inference_steps": T2I["steps"],
        "guidance_scale": 7.5,
        "width": 64,
        "height": 64,
    }


# -- the handoff, through the daemon --------------------------------------------------------------
def test_refine_zero_is_base_alone_and_refine_is_diffusers_handoff(client: Any, tiny: Path) -> None:
    """Pixels equal diffusers' own pipelines loaded straight from the folders: refine 0 = base alone;
    refine 0.5 = base with denoising_end 0.5, then the refiner folder with denoising_start 0.5."""
    base_only = _rgb(client.run("txt2img", {**T2I, "refine": 0.0}, model=MODEL))
    steps: list[tuple[int, int]] = []
    handed = client.run(
        "txt2img",
        {**T2I, "refine": 0.5},
        model=MODEL,
        on_progress=lambda e: steps.append((e["step"], e["total"])),
    )
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)], "both halves report into one 4-step job"

    base = StableDiffusionXLPipeline.from_pretrained(tiny / "base", add_watermarker=False)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny / "refiner", add_watermarker=False)
    for pipe in (base, refiner):
        pipe.set_progress_bar_config(disable=True)
    expected = base(**_diffusers_args(), generator=_generator()).images[0]
    assert np.array_equal(base_only, np.asarray(expected)), "refine 0 is exactly base alone"

    gen = _generator()
    latents = base(**_diffusers_args(), generator=gen, denoising_end=0.5, output_type="latent").images
    args = {k: v for k, v in _diffusers_args().items() if k not in ("width", "height")}
    expected = refiner(**args, image=latents, generator=gen, denoising_start=0.5).images[0]
    assert np.array_equal(_rgb(handed), np.asarray(expected)), "the daemon's handoff is diffusers' recipe"
    assert np.abs(_rgb(handed).astype(int) - base_only).mean() > 0.5, "the refiner changed the picture"


def test_refine_on_sdedit_and_inpaint(client: Any) -> None:
    image = picture((96, 64))
    edits = [
        _rgb(client.run("sdedit", {**FAST, "strength": 0.8, "refine": r}, {"image": obj(image)}, model=MODEL))
        for r in (0.0, 0.5)
    ]
    assert not np.array_equal(*edits), "refine changes an sdedit"

    mask = ellipse_mask(image.size, (30, 12, 70, 50), soften=2)
    images = {"image": obj(image), "mask": obj(mask)}
    outside, inside = np.asarray(mask) == 0, np.asarray(mask) == 255
    repainted = []
    for refine in (0.0, 0.5):
        result = client.run("inpaint", {**FAST, "padding": 8, "refine": refine}, images, model=MODEL)
        out = np.asarray(composite(image, result))
        assert np.array_equal(out[outside], np.asarray(image)[outside]), "a pixel outside the mask changed"
        repainted.append(out[inside])
    assert not np.array_equal(*repainted), "refine changes the inpainted area"


def test_refine_is_offered_only_where_a_refiner_is(client: Any, tiny: Path, tmp_path: Path) -> None:
    models = {m["name"]: m for m in client.hello("test_family_sdxl")["models"]}
    sdxl, sd15 = models[MODEL], models["tiny"]
    assert sdxl["family"] == "sdxl" and sdxl["resolution"] == 64
    assert sdxl["ops"] == ["txt2img", "sdedit", "inpaint", "controlnet", "reword"]
    assert models["sdxl"]["resolution"] == 1024 and models["sdxl"]["controlnets"] == ["canny", "depth"]
    for op in ("txt2img", "sdedit", "inpaint"):
        refine = sdxl["op_specs"][op]["params"]["refine"]
        assert (refine["type"], refine["default"], refine["min"], refine["max"]) == ("float", 0.2, 0.0, 1.0)
        assert "refine" not in sd15["op_specs"][op]["params"]
    assert "refine" not in sdxl["op_specs"]["controlnet"]["params"]
    with pytest.raises(DaemonError) as err:
        client.submit("txt2img", {**T2I, "refine": 0.2}, model="tiny")
    assert err.value.code == "invalid_value" and err.value.field == "params.refine"

    # An SDXL preset without a refiner (a user's config) neither lists nor takes `refine`.
    config = tmp_path / "presets.toml"
    config.write_text(f'[presets.bare]\nbase = "{tiny / "base"}"\n')
    loaded = load_config(config)
    bare = loaded.presets["bare"]
    assert bare.family == "sdxl", "detected from the folder's model_index.json"
    catalog = Catalog(loaded, Limits(), SCHEDULER_NAMES)
    assert "refine" not in catalog.spec(bare, "txt2img").params
    assert catalog.validate(loaded.presets[MODEL], "txt2img", {})["refine"] == 0.2
    with pytest.raises(RequestError) as refused:
        catalog.validate(bare, "txt2img", {"refine": 0.2})
    assert refused.value.code == "invalid_value" and "refine" in refused.value.message


# -- ControlNet ----------------------------------------------------------------------------------------
def test_controlnet_map_steers_txt2img_and_inpaint_keeps_the_outside(client: Any) -> None:
    size = (96, 64)
    ring, bar = Image.new("RGB", size), Image.new("RGB", size)
    ImageDraw.Draw(ring).ellipse((20, 8, 76, 56), outline="white", width=4)
    ImageDraw.Draw(bar).rectangle((8, 28, 88, 36), fill="white")
    unit = {"model": "canny", "image": "control", "preprocessor": "none"}
    params = {**FAST, "units": [unit], "width": 96, "height": 64}
    a, b = (_rgb(client.run("controlnet", params, {"control": obj(c)}, model=MODEL)) for c in (ring, bar))
    assert a.shape == (64, 96, 3)
    assert np.abs(a.astype(int) - b).mean() > 2, "the control map steers the picture"
    off = _rgb(
        client.run(
            "controlnet", {**params, "units": [{**unit, "scale": 0.0}]}, {"control": obj(ring)}, model=MODEL
        )
    )
    assert np.abs(a.astype(int) - off).mean() > 2, "the unit's scale matters"

    image = picture(size)
    mask = ellipse_mask(size, (30, 12, 70, 50))
    images = {"image": obj(image), "mask": obj(mask), "control": obj(ring)}
    result = client.run("controlnet", {**FAST, "units": [unit]}, images, model=MODEL)
    out, before = np.asarray(composite(image, result)), np.asarray(image)
    outside, inside = np.asarray(mask) == 0, np.asarray(mask) == 255
    assert np.array_equal(out[outside], before[outside]), "a pixel outside the mask changed"
    assert (np.abs(out[inside].astype(int) - before[inside]).sum(axis=1) > 0).mean() > 0.9


# -- sharing and the handoff, in process -------------------------------------------------------------
def test_refiner_and_inpaint_share_base_and_add_only_their_unets(manager: ModelManager) -> None:
    preset = manager.preset(MODEL)
    base = manager.view(preset, "txt2img")
    after_base = manager.used_bytes()
    assert after_base == module_bytes(base) and manager.loads == 1
    refiner = manager.view(preset, "refiner_img2img")
    assert manager.used_bytes() - after_base == module_bytes(refiner.unet), "only the refiner's UNet"
    refiner_inpaint = manager.view(preset, "refiner_inpaint")
    for view in (refiner, refiner_inpaint):
        assert view.vae is base.vae and view.text_encoder_2 is base.text_encoder_2
        assert view.tokenizer_2 is base.tokenizer_2 and view.text_encoder is None and view.tokenizer is None
        assert view.config.requires_aesthetics_score is True
    assert refiner_inpaint.unet is refiner.unet and refiner.unet is not base.unet
    assert refiner.unet.config.cross_attention_dim == base.text_encoder_2.config.hidden_size

    img2img, inpaint = manager.view(preset, "img2img"), manager.view(preset, "inpaint")
    controlnet = manager.view(preset, "controlnet_inpaint", ["canny"])
    for view in (img2img, inpaint, controlnet):
        assert view.vae is base.vae and view.text_encoder is base.text_encoder
        assert view.text_encoder_2 is base.text_encoder_2 and view.tokenizer is base.tokenizer
    assert img2img.unet is base.unet and controlnet.unet is inpaint.unet
    assert inpaint.unet.config.in_channels == 9
    assert set(manager.component_objects(MODEL)) == {"base", "refiner", "inpaint", "controlnet:canny"}
    assert manager.loads == 4
    parts = (base, refiner.unet, inpaint.unet, controlnet.controlnet)
    assert manager.used_bytes() == sum(module_bytes(p) for p in parts), "nothing is loaded twice"


def _unet_calls(manager: ModelManager, params: dict[str, Any]) -> tuple[int, int, list[tuple[int, int]]]:
    """Run txt2img on the tiny SDXL preset; count each UNet's forward calls and the progress events."""
    preset = manager.preset(MODEL)
    catalog = Catalog(manager.config, Limits(), SCHEDULER_NAMES)
    base = manager.view(preset, "txt2img").unet
    refiner = manager.view(preset, "refiner_img2img").unet
    calls = {"base": 0, "refiner": 0}
    hooks = [
        unet.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
        for name, unet in (("base", base), ("refiner", refiner))
    ]
    events: list[tuple[int, int]] = []
    req = OpRequest("txt2img", preset, catalog.validate(preset, "txt2img", params))
    steps = StepReporter(lambda step, total, _: events.append((step, total)), lambda: False, False)
    try:
        run_op("txt2img", Generation(req, manager, steps))
    finally:
        for hook in hooks:
            hook.remove()
    return calls["base"], calls["refiner"], events


def test_handoff_runs_both_unets_and_gives_each_at_least_one_step(manager: ModelManager) -> None:
    # SDXL's schedule for 4 steps is 751, 501, 251, 1 ("leading" spacing).
    assert _unet_calls(manager, {**T2I, "refine": 0.0})[:2] == (4, 0)
    assert _unet_calls(manager, {**T2I, "refine": 0.5})[:2] == (2, 2)
    base, refiner, events = _unet_calls(manager, T2I)  # default refine 0.2: cut-off below t=200
    assert (base, refiner) == (3, 1) and events == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # Cut by diffusers' rule, 0.001 would leave the refiner nothing and 1.0 would leave base nothing.
    assert _unet_calls(manager, {**T2I, "refine": 0.001})[:2] == (3, 1)
    assert _unet_calls(manager, {**T2I, "refine": 1.0})[:2] == (1, 3)
    two = _unet_calls(manager, {**T2I, "refine": 0.5, "variations": 2})
    assert two[:2] == (4, 4) and two[2][-1] == (8, 8), "each variation is handed over"


def test_vae_setting_replaces_base_vae_inside_the_base_component(tiny: Path, tmp_path: Path) -> None:
    make_vae(seed=5, scaling_factor=SDXL_VAE_SCALE).save_pretrained(tmp_path / "fixed-vae")
    config = tmp_path / "presets.toml"
    config.write_text(
        f'[presets.fixed]\nfamily = "sdxl"\nbase = "{tiny / "base"}"\nvae = "{tmp_path / "fixed-vae"}"\n'
    )
    manager = ModelManager(load_config(config), torch.device("cpu"), torch.float32)
    base = manager.view(manager.preset("fixed"), "txt2img")
    fixed = AutoencoderKL.from_pretrained(tmp_path / "fixed-vae")
    own = AutoencoderKL.from_pretrained(tiny / "base" / "vae")
    state, fixed_state, own_state = base.vae.state_dict(), fixed.state_dict(), own.state_dict()
    assert all(torch.equal(state[k], fixed_state[k]) for k in state), "base holds the preset's VAE"
    assert not all(torch.equal(state[k], own_state[k]) for k in state)
    assert manager.loads == 1 and set(manager.component_objects("fixed")) == {"base"}
    assert manager.used_bytes() == module_bytes(base), "the VAE is part of base, counted once"


# -- the tiny folders -----------------------------------------------------------------------------------
def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def test_tiny_sdxl_folders_keep_sdxl_structure_and_are_detected(tiny: Path) -> None:
    for folder in ("base", "refiner", "inpaint"):
        assert detect_family(str(tiny / folder), fallback=None) == "sdxl"
    text = _config(tiny / "base" / "text_encoder")["hidden_size"]
    text_2 = _config(tiny / "base" / "text_encoder_2")
    unet, refiner = _config(tiny / "base" / "unet"), _config(tiny / "refiner" / "unet")
    assert text != text_2["hidden_size"], "the two encoders differ, so a mix-up cannot pass"
    assert unet["addition_embed_type"] == refiner["addition_embed_type"] == "text_time"
    assert unet["cross_attention_dim"] == text + text_2["hidden_size"]
    time = unet["addition_time_embed_dim"]
    assert unet["projection_class_embeddings_input_dim"] == 6 * time + text_2["projection_dim"]
    assert refiner["cross_attention_dim"] == text_2["hidden_size"]
    assert refiner["projection_class_embeddings_input_dim"] == 5 * time + text_2["projection_dim"]
    assert json.loads((tiny / "refiner" / "model_index.json").read_text())["text_encoder"] == [None, None]
    assert _config(tiny / "inpaint" / "unet")["in_channels"] == 9
    vae = _config(tiny / "base" / "vae")
    assert 2 ** (len(vae["block_out_channels"]) - 1) == 8 and vae["scaling_factor"] == 0.13025
    controlnet = _config(tiny / "controlnet-canny")
    assert controlnet["addition_embed_type"] == "text_time"
    assert 2 ** (len(controlnet["conditioning_embedding_out_channels"]) - 1) == 8
    for part in ("vae", "text_encoder_2", "tokenizer_2", "scheduler"):
        for a, b in zip(
            sorted((tiny / "base" / part).iterdir()), sorted((tiny / "refiner" / part).iterdir()), strict=True
        ):
            assert a.read_bytes() == b.read_bytes(), f"refiner/{part} is base's, byte for byte"


def test_tiny_sdxl_build_is_seeded(tiny: Path, tmp_path: Path) -> None:
    """A fresh build with the same seed is byte-identical to the cached one (and `build` names every
    folder of FOLDERS)."""
    again = build_family("sdxl", tmp_path / "sdxl")
    files = sorted(p.relative_to(tiny) for p in tiny.rglob("*") if p.is_file())
    assert {f.parts[0] for f in files} == {*FOLDERS, "README.md"}
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (tiny / name).read_bytes() == (again / name).read_bytes(), f"{name} differs between builds"
