"""DeepFloyd IF specifics: the stage I -> II -> III cascade (`stages`, `super_res_steps`, each stage's size
and steps), stage II fed with stage I's T5 embeddings, the samplers IF can take, edits through the
cascade, x4 upscaling by stage III or stage II, and the tiny IF folders. The generic checks every family
passes (each op, determinism, prompts, paste-back) are in test_families.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import IFPipeline, IFSuperResolutionPipeline
from helpers import composite, ellipse_mask, obj, picture, pixels
from PIL import Image
from transformers import T5Tokenizer

from underpaint.daemon.builders.tiny import ensure_tiny
from underpaint.daemon.builders.tiny.deepfloyd_if import FOLDERS, STAGE_1_SIZE, STAGE_2_SIZE
from underpaint.daemon.config import Config, load_config
from underpaint.daemon.families import detect_family, family
from underpaint.daemon.families.base import Generation
from underpaint.daemon.families.deepfloyd_if import VIEWS
from underpaint.daemon.ops import run_op
from underpaint.daemon.params import Limits
from underpaint.daemon.progress import StepReporter
from underpaint.daemon.request import OpRequest
from underpaint.daemon.schedulers import SCHEDULER_NAMES
from underpaint.daemon.serving.catalog import Catalog
from underpaint.daemon.serving.models import ModelManager, module_bytes
from underpaint.protocol import DaemonError

MODEL = "tiny-if"
FAST = {"prompt": "a red fox in the snow", "steps": 3, "super_res_steps": 2, "seed": 5}
SIZE = (96, 64)  # not square: stage sizes keep the aspect
#: Size of each stage's denoising loop for SIZE: stage I at SIZE / 16, stage II x4; the x4 upscaler
#: denoises latents the size of its input (stage II's picture) and decodes them 4x larger.
LOOP_SIZES = [(6, 4), (24, 16), (24, 16)]


@pytest.fixture(scope="module")
def tiny(underpaint_home: Path) -> Path:
    return ensure_tiny(underpaint_home / "models", "if")


@pytest.fixture
def manager(underpaint_home: Path) -> ModelManager:
    return ModelManager(
        load_config(), torch.device("cpu"), torch.float32, tiny_root=underpaint_home / "models"
    )


def _rgb(result: dict[str, Any], index: int = 0) -> np.ndarray:
    return pixels(result["images"][index])[..., :3].astype(np.int16)


def _generation(manager: ModelManager, op: str, params: dict[str, Any], **images: Image.Image) -> Generation:
    """An in-process job of the tiny preset (or of another preset of `manager`'s config)."""
    preset = manager.preset(params.pop("model", MODEL))
    catalog = Catalog(manager.config, Limits(), SCHEDULER_NAMES)
    checked = catalog.validate(preset, op, params)
    steps = StepReporter(lambda step, total, preview: None, lambda: False, preview=False)
    return Generation(OpRequest(op, preset, checked, images), manager, steps)


def _hook_inputs(module: torch.nn.Module, calls: list[Any]) -> Any:
    """Record what `module` is called with (positional sample and keyword arguments)."""
    return module.register_forward_hook(
        lambda mod, args, kwargs, out: calls.append((args, kwargs, out)), with_kwargs=True
    )


# -- the cascade: stages, sizes, steps ---------------------------------------------------------------
@pytest.mark.parametrize("stages", [1, 2, 3])
def test_each_stage_runs_its_steps_at_its_size(client: Any, stages: int) -> None:
    events: list[dict[str, Any]] = []
    params = {**FAST, "width": SIZE[0], "height": SIZE[1], "stages": stages}
    result = client.run("txt2img", params, model=MODEL, preview=True, on_progress=events.append)
    assert (result["images"][0]["width"], result["images"][0]["height"]) == SIZE, "exactly the asked size"
    expected = FAST["steps"] + FAST["super_res_steps"] * (stages - 1)
    assert [e["step"] for e in events] == list(range(1, expected + 1))
    assert events[-1]["total"] == expected, "the planned total is the sum of every stage's steps"
    # Previews show each denoising loop's own picture: its size tells which stage ran it.
    loops = [FAST["steps"]] + [FAST["super_res_steps"]] * (stages - 1)
    sizes = [size for size, n in zip(LOOP_SIZES, loops, strict=False) for _ in range(n)]
    assert [(e["preview"]["width"], e["preview"]["height"]) for e in events] == sizes


def test_stage_one_is_a_draft_of_the_finished_picture(manager: ModelManager) -> None:
    """Stage I works at the same size whatever `stages` is, so one stage is a draft of the finished
    picture: the seed's stage I run is the very same. Every stage works at the size promised."""
    unets = {
        role: manager.component(manager.preset(MODEL), role).unet for role in ("base", "stage_2", "stage_3")
    }
    seen: dict[str, list[torch.Tensor]] = {role: [] for role in unets}
    hooks = [
        unet.register_forward_hook(lambda mod, args, out, role=role: seen[role].append(args[0].clone()))
        for role, unet in unets.items()
    ]
    try:
        draft = family("if").txt2img(_generation(manager, "txt2img", {**FAST, "stages": 1}), *SIZE)
        drafted = list(seen["base"])
        assert not seen["stage_2"] and not seen["stage_3"]
        seen["base"].clear()
        full = family("if").txt2img(_generation(manager, "txt2img", {**FAST, "stages": 3}), *SIZE)
    finally:
        for hook in hooks:
            hook.remove()
    assert draft[0].size == full[0].size == SIZE
    assert len(drafted) == len(seen["base"]) == FAST["steps"]
    assert all(torch.equal(a, b) for a, b in zip(drafted, seen["base"], strict=True)), "the same stage I"
    for role, (w, h), calls in zip(unets, LOOP_SIZES, seen.values(), strict=True):
        assert {tuple(x.shape[2:]) for x in calls} == {(h, w)}, role
    assert len(seen["stage_2"]) == len(seen["stage_3"]) == FAST["super_res_steps"]


def test_stage_two_reuses_stage_one_embeddings(manager: ModelManager) -> None:
    """T5 reads the prompt once per job, however many stages and pictures run, and stage II conditions on
    exactly what it produced; stage II has no text encoder of its own loaded."""
    preset = manager.preset(MODEL)
    base, stage_2 = manager.component(preset, "base"), manager.component(preset, "stage_2")
    assert stage_2.text_encoder is None and stage_2.tokenizer is None
    t5_calls: list[Any] = []
    unet_calls: list[Any] = []
    hooks = [_hook_inputs(base.text_encoder, t5_calls), _hook_inputs(stage_2.unet, unet_calls)]
    try:
        for stages in (1, 2, 3):
            t5_calls.clear()
            family("if").txt2img(_generation(manager, "txt2img", {**FAST, "stages": stages}), 64, 64)
            assert len(t5_calls) == 1, f"T5 ran {len(t5_calls)} times for {stages} stage(s)"
        t5_calls.clear()
        run_op("txt2img", _generation(manager, "txt2img", {**FAST, "stages": 1, "variations": 3}))
        assert len(t5_calls) == 1, "three pictures of one job share one reading of the prompt"
    finally:
        for hook in hooks:
            hook.remove()
    text = t5_calls[0][2].last_hidden_state  # [prompt, negative prompt]
    assert len(unet_calls) == 2 * FAST["super_res_steps"], "stage II ran in the 2- and 3-stage jobs"
    for _args, kwargs, _out in unet_calls:
        # classifier-free guidance: the negative prompt's embedding first, then the prompt's
        assert torch.equal(kwargs["encoder_hidden_states"], torch.cat([text[1:], text[:1]]))


def test_views_share_the_stages_weights(manager: ModelManager) -> None:
    preset = manager.preset(MODEL)
    fam = family("if")
    warmed = {kind for op in fam.ops(preset) for kind, _extras in fam.warm(preset, op)}
    assert warmed == set(VIEWS), "loading any op builds views that exist, and every view is used"
    views = {kind: manager.view(preset, kind) for kind in ("txt2img", "img2img", "inpaint")}
    sr = {kind: manager.view(preset, kind) for kind in ("sr", "sr_img2img", "sr_inpaint")}
    x4 = manager.view(preset, "stage_3")
    base, stage_2 = manager.component(preset, "base"), manager.component(preset, "stage_2")
    for view in views.values():
        assert view.unet is base.unet and view.text_encoder is base.text_encoder
        assert view.tokenizer is base.tokenizer
    for view in sr.values():
        assert view.unet is stage_2.unet and view.text_encoder is None
    assert manager.loads == 3 and set(manager.component_objects(MODEL)) == {"base", "stage_2", "stage_3"}
    expected = module_bytes(base.unet, base.text_encoder, stage_2.unet, *x4.components.values())
    assert manager.used_bytes() == expected, "one T5, one UNet per stage, and the x4 upscaler: nothing twice"


# -- samplers -----------------------------------------------------------------------------------------
def test_only_samplers_that_read_learned_variance_are_offered(client: Any) -> None:
    preset = next(p for p in client.hello("test_family_if")["models"] if p["name"] == MODEL)
    assert preset["stages"] == 3
    for op in ("txt2img", "sdedit", "inpaint"):
        spec = preset["op_specs"][op]["params"]
        assert spec["scheduler"]["choices"] == ["", "ddpm", "dpmpp_2m", "dpmpp_2m_karras"]
        assert (spec["stages"]["default"], spec["stages"]["min"], spec["stages"]["max"]) == (3, 1, 3)
        assert spec["super_res_steps"]["default"] == 20
    with pytest.raises(DaemonError) as err:
        client.submit("txt2img", {**FAST, "scheduler": "euler"}, model=MODEL)
    assert err.value.code == "unknown_scheduler"
    params = {**FAST, "width": 64, "height": 64}
    own = client.run("txt2img", params, model=MODEL)
    dpm = client.run("txt2img", {**params, "scheduler": "dpmpp_2m"}, model=MODEL)
    again = client.run("txt2img", {**params, "scheduler": "dpmpp_2m"}, model=MODEL)
    assert not np.array_equal(_rgb(own), _rgb(dpm)), "the sampler is used"
    assert np.array_equal(_rgb(dpm), _rgb(again)), "and reproducible"


# -- edits ---------------------------------------------------------------------------------------------
def test_sdedit_strength_decides_how_much_is_repainted(client: Any) -> None:
    """IF edits in pixels: at low strength stage I and II start close to the picture itself."""
    base = picture(SIZE)
    original = np.asarray(base.convert("RGB"), dtype=np.int16)
    params = {**FAST, "stages": 2, "steps": 5, "super_res_steps": 5}
    events: list[dict[str, Any]] = []
    light = client.run(
        "sdedit", {**params, "strength": 0.2}, {"image": obj(base)}, model=MODEL, on_progress=events.append
    )
    assert [(e["step"], e["total"]) for e in events] == [(1, 2), (2, 2)], "int(5 x 0.2) steps per stage"
    heavy = client.run("sdedit", {**params, "strength": 1.0}, {"image": obj(base)}, model=MODEL)
    assert _rgb(light).shape == original.shape
    assert np.abs(_rgb(light) - original).mean() < np.abs(_rgb(heavy) - original).mean() / 2


@pytest.mark.parametrize("stages", [2, 3])
def test_inpaint_through_the_cascade_keeps_the_rest(client: Any, stages: int) -> None:
    base = picture(SIZE)
    mask = ellipse_mask(SIZE, (30, 12, 70, 50))
    images = {"image": obj(base), "mask": obj(mask)}
    result = client.run("inpaint", {**FAST, "stages": stages}, images, model=MODEL)
    out = np.asarray(composite(base, result))
    outside, inside = np.asarray(mask) == 0, np.asarray(mask) == 255
    assert np.array_equal(out[outside], np.asarray(base)[outside]), "a pixel outside the mask changed"
    assert not np.array_equal(out[inside], np.asarray(base)[inside]), "the masked area is repainted"


def test_a_stage_two_edit_needs_a_step(client: Any) -> None:
    params = {**FAST, "super_res_steps": 1, "strength": 0.5}
    with pytest.raises(DaemonError) as err:
        client.submit("sdedit", params, {"image": obj(picture(SIZE))}, model=MODEL)
    assert err.value.code == "invalid_value" and err.value.field == "params.super_res_steps"
    # one stage only: stage II's steps do not matter
    one = client.run("sdedit", {**params, "stages": 1}, {"image": obj(picture(SIZE))}, model=MODEL)
    assert one["images"][0]["width"] == SIZE[0]


# -- prompts and upscaling ----------------------------------------------------------------------------
@pytest.mark.parametrize("stages", [1, 3])
def test_prompts_change_the_picture(client: Any, stages: int) -> None:
    params = {**FAST, "width": 64, "height": 64, "stages": stages}
    fox = client.run("txt2img", params, model=MODEL)
    robot = client.run("txt2img", {**params, "prompt": "a blue robot at night"}, model=MODEL)
    avoid = client.run("txt2img", {**params, "negative_prompt": "snow"}, model=MODEL)
    assert not np.array_equal(_rgb(fox), _rgb(robot))
    assert not np.array_equal(_rgb(fox), _rgb(avoid)), "the negative prompt steers it too"


def test_upscale_x4_with_stage_three(client: Any) -> None:
    small = picture((32, 24))
    result = client.run("upscale", {**FAST, "variations": 2}, {"image": obj(small)}, model=MODEL)
    assert [(i["width"], i["height"]) for i in result["images"]] == [(128, 96)] * 2
    a, b = _rgb(result, 0), _rgb(result, 1)
    assert not np.array_equal(a, b), "each variation has its own seed"
    with pytest.raises(DaemonError) as err:
        client.submit("upscale", {**FAST, "factor": 2}, {"image": obj(small)}, model=MODEL)
    assert err.value.code == "invalid_value" and err.value.field == "params.factor"


def test_upscale_without_stage_three_runs_stage_two(manager: ModelManager) -> None:
    tiny = manager.preset(MODEL)
    two = replace(tiny, name="tiny-if-2", sources={k: v for k, v in tiny.sources.items() if k != "stage_3"})
    manager.config = Config(MODEL, {MODEL: tiny, two.name: two})
    fam = family("if")
    spec = Catalog(manager.config, Limits(), SCHEDULER_NAMES).specs[two.name]
    assert spec["txt2img"].params["stages"].max == 2
    noise = spec["upscale"].params["noise_level"]
    assert (noise.default, noise.max) == (250, 999), "IF-II's noise levels, not the x4 upscaler's"
    small = picture((32, 24)).convert("RGB")
    t5: list[Any] = []
    hook = _hook_inputs(manager.component(two, "base").text_encoder, t5)
    try:
        gen = _generation(manager, "upscale", {**FAST, "model": two.name, "noise_level": 100}, image=small)
        out = fam.upscale(gen, small, 4)
    finally:
        hook.remove()
    assert out[0].size == (128, 96) and len(t5) == 1, "stage II enlarged it, with T5's reading"
    assert "stage_3" not in manager.component_objects(two.name)
    assert np.asarray(out[0]).std() > 1


# -- the tiny folders ---------------------------------------------------------------------------------
def test_tiny_folders_load_as_real_if_repos(tiny: Path) -> None:
    assert sorted(p.name for p in tiny.iterdir() if p.is_dir()) == sorted(FOLDERS)
    assert detect_family(str(tiny / "stage-1"), fallback=None) == "if"
    assert detect_family(str(tiny / "stage-2"), fallback=None) == "if"
    tokenizer = T5Tokenizer.from_pretrained(tiny / "stage-1" / "tokenizer")
    pieces = tokenizer.tokenize("a red fox, zebra")
    assert pieces[:3] == ["▁a", "▁red", "▁fox"] and tokenizer.unk_token not in pieces, pieces
    stage_1 = IFPipeline.from_pretrained(tiny / "stage-1", watermarker=None, safety_checker=None)
    stage_2 = IFSuperResolutionPipeline.from_pretrained(tiny / "stage-2", text_encoder=None)
    assert stage_1.unet.config.sample_size == STAGE_1_SIZE and stage_1.unet.config.out_channels == 6
    assert stage_1.unet.config.addition_embed_type == "text"
    assert stage_2.unet.config.in_channels == 6 and stage_2.unet.config.class_embed_type == "timestep"
    assert stage_2.unet.config.sample_size == STAGE_2_SIZE
    assert stage_1.scheduler.config.variance_type == "learned_range"
    same = [(tiny / "stage-1" / part, tiny / "stage-2" / part) for part in ("text_encoder", "tokenizer")]
    for a, b in same:
        assert sorted(f.read_bytes() for f in a.iterdir()) == sorted(f.read_bytes() for f in b.iterdir())
