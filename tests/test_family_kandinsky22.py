"""Kandinsky 2.2 (the tiny-kandinsky22 preset): what only this family does. Its prior must tell prompts
apart, `mix` blends prompts and pictures by weight through the prior, `variation` repaints a picture from
its own embedding, the inpainting decoder repaints what the mask marks 255, the depth hint steers the
ControlNet decoder, each picture's seed drives its prior and decoder, and all decoders share one MoVQ.
The generic checks every family passes (sizes, seeds, paste-back) are in tests/test_families.py."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import composite, ellipse_mask, obj, picture, pixels
from PIL import Image, ImageDraw

from underpaint.daemon.builders.tiny import build_family, ensure_tiny
from underpaint.daemon.builders.tiny import kandinsky22 as tiny
from underpaint.daemon.config import load_config
from underpaint.daemon.serving.models import ModelManager, module_bytes
from underpaint.protocol import DaemonError

MODEL = "tiny-kandinsky22"
FAST = {"steps": 2, "prior_steps": 2, "seed": 5}
SIZE = {"width": 64, "height": 64}
FOX, ROBOT = "a red fox in the snow", "a blue robot at night"


def _run(
    client: Any, op: str, params: dict[str, Any], images: dict[str, Any] | None = None, **kw: Any
) -> dict:
    return client.run(op, params, images or {}, model=MODEL, **kw)


def _first(result: dict[str, Any]) -> np.ndarray:
    return pixels(result["images"][0]).astype(int)


def _differ(a: np.ndarray, b: np.ndarray) -> bool:
    """Clearly different pictures, not a last-bit wobble."""
    return bool(np.abs(a - b).mean() > 1.0)


def _mix(client: Any, items: list[dict[str, Any]], images: dict[str, Any] | None = None) -> np.ndarray:
    return _first(_run(client, "mix", {**FAST, **SIZE, "items": items}, images))


def _shapes() -> Image.Image:
    """A picture nothing like the cat: coloured blocks."""
    img = Image.new("RGB", (64, 64), "navy")
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 32, 63, 63), fill="orange")
    draw.ellipse((16, 8, 48, 40), fill="white")
    return img


def test_the_prior_tells_prompts_apart(client: Any) -> None:
    """A random prior with clip_std = 0 maps every prompt to one embedding: this fails with it."""
    fox = _first(_run(client, "txt2img", {**FAST, **SIZE, "prompt": FOX}))
    robot = _first(_run(client, "txt2img", {**FAST, **SIZE, "prompt": ROBOT}))
    assert _differ(fox, robot), "the prompt reaches the decoder through the prior"
    avoid = _first(_run(client, "txt2img", {**FAST, **SIZE, "prompt": FOX, "negative_prompt": "snow"}))
    assert _differ(fox, avoid), "the negative prompt goes through the prior too"


def test_mix_weights_steer_the_blend(client: Any) -> None:
    def weighted(fox: float, robot: float) -> np.ndarray:
        return _mix(client, [{"prompt": FOX, "weight": fox}, {"prompt": ROBOT, "weight": robot}])

    fox_only, robot_only, even = weighted(1, 0), weighted(0, 1), weighted(1, 1)
    assert _differ(fox_only, robot_only) and _differ(even, fox_only) and _differ(even, robot_only)
    assert np.array_equal(weighted(2, 2), even), "weights are shares: only their ratio counts"
    # A weight-0 item changes nothing: prompt at 1 + picture at 0 is exactly that prompt's txt2img.
    txt2img = _first(_run(client, "txt2img", {**FAST, **SIZE, "prompt": FOX}))
    assert np.array_equal(fox_only, txt2img)
    unused = _mix(client, [{"prompt": FOX}, {"image": "cat", "weight": 0}], {"cat": obj(picture((64, 64)))})
    assert np.array_equal(unused, txt2img)


def test_mix_blends_pictures_and_alone_a_picture_is_its_variation(client: Any) -> None:
    images = {"cat": obj(picture((64, 64))), "shapes": obj(_shapes())}
    cat = _mix(client, [{"image": "cat", "weight": 1}, {"image": "shapes", "weight": 0}], images)
    shapes = _mix(client, [{"image": "cat", "weight": 0}, {"image": "shapes", "weight": 1}], images)
    both = _mix(client, [{"image": "cat"}, {"image": "shapes"}], images)
    assert _differ(cat, shapes) and _differ(both, cat) and _differ(both, shapes)
    variation = _first(_run(client, "variation", {"steps": 2, "seed": 5}, {"image": images["cat"]}))
    assert np.array_equal(cat, variation), "both decode the picture's own CLIP image embedding"
    with_text = _mix(client, [{"image": "cat"}, {"prompt": ROBOT}], images)
    assert _differ(with_text, cat), "a prompt blends with a picture"


def test_variation_of_a_selection_changes_only_the_selection(client: Any) -> None:
    base = picture((96, 64))
    mask = ellipse_mask((96, 64), (30, 12, 70, 50))
    result = _run(
        client, "variation", {"steps": 2, "seed": 3, "feather": 0}, {"image": obj(base), "mask": obj(mask)}
    )
    out, original = np.asarray(composite(base, result)).astype(int), np.asarray(base).astype(int)
    selected = np.asarray(mask)
    assert np.array_equal(out[selected == 0], original[selected == 0]), "a pixel outside the mask changed"
    assert np.abs(out[selected == 255] - original[selected == 255]).mean() > 10, "the selection was repainted"


def test_inpaint_repaints_white_and_keeps_the_rest(client: Any) -> None:
    """The inpainting decoder keeps the latents outside its mask, so across seeds the picture changes
    inside the mask and hardly outside it: with an inverted mask convention it would be the reverse."""
    base = picture((128, 128))
    mask = Image.new("L", base.size, 0)
    ImageDraw.Draw(mask).rectangle((48, 48, 79, 79), fill=255)
    params = {**FAST, "prompt": FOX, "resolution": 128, "padding": 48, "feather": 0}
    images = {"image": obj(base), "mask": obj(mask)}
    results = [_run(client, "inpaint", {**params, "seed": seed}, images) for seed in (1, 2)]
    original, selected = np.asarray(base).astype(int), np.asarray(mask)
    for result in results:
        out = np.asarray(composite(base, result)).astype(int)
        assert np.array_equal(out[selected == 0], original[selected == 0]), "a pixel outside the mask changed"
    patch = results[0]["images"][0]
    assert (patch["x"], patch["y"], patch["width"]) == (0, 0, 128), "the crop holds unmasked context"
    change = np.abs(_first(results[0])[..., :3] - _first(results[1])[..., :3]).mean(axis=2)
    assert change[selected == 255].mean() > 4 * change[selected == 0].mean() + 5


def test_the_depth_hint_steers_the_controlnet_decoder(client: Any) -> None:
    near_top = Image.linear_gradient("L").resize((64, 64))
    params = {**FAST, **SIZE, "prompt": FOX, "units": [{"model": "depth", "image": "depth"}]}
    top = _first(_run(client, "controlnet", params, {"depth": obj(near_top)}))
    bottom = _first(_run(client, "controlnet", params, {"depth": obj(near_top.rotate(180))}))
    assert _differ(top, bottom), "the hint reaches the decoder"


@pytest.mark.parametrize(
    ("unit", "field"),
    [
        ({"scale": 0.5}, "params.units.0.scale"),
        ({"start": 0.2}, "params.units.0.start"),
        ({"end": 0.8}, "params.units.0.end"),
        (None, "params.units"),
    ],
)
def test_controlnet_knobs_kandinsky_lacks_are_refused(client: Any, unit: dict | None, field: str) -> None:
    depth = {"model": "depth", "image": "depth"}
    units = [depth, depth] if unit is None else [{**depth, **unit}]
    images = {"depth": obj(Image.linear_gradient("L").resize((64, 64)))}
    with pytest.raises(DaemonError) as err:
        client.submit("controlnet", {"prompt": FOX, "units": units}, images, model=MODEL)
    assert err.value.code == "invalid_value" and err.value.field == field
    assert "Kandinsky" in str(err.value)


def test_progress_counts_each_pictures_prior_and_decoder(client: Any) -> None:
    def steps(op: str, params: dict[str, Any], images: dict[str, Any] | None = None) -> list[tuple]:
        events: list[dict[str, Any]] = []
        result = _run(client, op, params, images, on_progress=events.append)
        assert len({bytes(pixels(i)) for i in result["images"]}) == len(result["images"])
        return [(e["step"], e["total"]) for e in events]

    # Variations run one after the other, each seed through its own prior, then its decoder: 3 x (4 + 2),
    # known from the first step on.
    params = {"steps": 2, "prior_steps": 4, "variations": 3, "seed": 1, "prompt": FOX, **SIZE}
    assert steps("txt2img", params) == [(i, 18) for i in range(1, 19)]
    # mix: the prior once per prompt and once for the negative embedding, then the decoder, per picture.
    items = [{"prompt": FOX}, {"prompt": ROBOT}, {"image": "cat"}]
    mixed = steps("mix", {**FAST, **SIZE, "variations": 2, "items": items}, {"cat": obj(picture((64, 64)))})
    assert mixed == [(i, 16) for i in range(1, 17)], "2 x (3 x 2 prior steps + 2 decoder steps)"
    # ControlNet img2img runs strength x steps decoder steps, and says so from the first step on.
    hint = {"depth": obj(Image.linear_gradient("L").resize((64, 64))), "image": obj(picture((64, 64)))}
    units = [{"model": "depth", "image": "depth"}]
    params = {"steps": 4, "prior_steps": 2, "strength": 0.5, "seed": 1, "prompt": FOX, "units": units}
    assert steps("controlnet", params, hint) == [(i, 4) for i in range(1, 5)]


def test_op_specs_and_samplers(client: Any) -> None:
    preset = next(p for p in client.hello("kandinsky22")["models"] if p["name"] == MODEL)
    assert preset["family"] == "kandinsky22" and preset["resolution"] == 64
    assert preset["ops"] == ["txt2img", "sdedit", "inpaint", "controlnet", "variation", "mix"]
    specs = {op: spec["params"] for op, spec in preset["op_specs"].items()}
    for op in ("txt2img", "sdedit", "inpaint", "controlnet", "mix"):
        assert (
            specs[op]["prior_steps"]["default"] == 25 and specs[op]["prior_guidance_scale"]["default"] == 4.0
        )
        assert specs[op]["guidance_scale"]["default"] == 4.0
    assert "prior_steps" not in specs["variation"], "a picture's embedding needs no prior steps"
    assert specs["inpaint"]["strength"]["min"] == 1.0
    samplers = specs["txt2img"]["scheduler"]["choices"]
    assert samplers == ["", "ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_karras"]
    assert client.load(MODEL, "controlnet")["type"] == "loaded"
    entry = next(p for p in client.models()["presets"] if p["name"] == MODEL)
    assert {"prior", "base", "controlnet:depth"} <= set(entry["loaded"]), "load warms the prior too"
    with pytest.raises(DaemonError) as err:
        client.submit("txt2img", {"prompt": FOX, "scheduler": "euler"}, model=MODEL)
    assert err.value.code == "unknown_scheduler"
    with pytest.raises(DaemonError) as err:
        client.submit("txt2img", {"prompt": FOX, "prior_steps": 3}, model="tiny")
    assert err.value.field == "params.prior_steps", "SD 1.5 has no prior"
    by_name = {
        name: _first(_run(client, "txt2img", {**FAST, **SIZE, "scheduler": name})) for name in samplers
    }
    assert np.array_equal(by_name[""], by_name["ddpm"]), "the decoder's own sampler is DDPM"
    for name in ("ddim", "dpmpp_2m", "dpmpp_2m_karras"):
        assert _differ(by_name[name], by_name[""]), f"{name} runs, and its own way"


@pytest.fixture
def manager(underpaint_home: Path) -> ModelManager:
    return ModelManager(
        load_config(), torch.device("cpu"), torch.float32, tiny_root=underpaint_home / "models"
    )


def test_decoders_share_one_movq_and_the_prior_loads_once(manager: ModelManager) -> None:
    preset = manager.preset(MODEL)
    prior = manager.view(preset, "prior")
    base = manager.view(preset, "txt2img")
    img2img = manager.view(preset, "img2img")
    assert manager.loads == 2, "the prior and the decoder; img2img loads nothing"
    inpaint = manager.view(preset, "inpaint")
    controlnet = manager.view(preset, "controlnet", ["depth"])
    cn_img2img = manager.view(preset, "controlnet_img2img", ["depth"])
    assert manager.view(preset, "prior") is prior and manager.loads == 4
    for view in (img2img, inpaint, controlnet, cn_img2img):
        assert view.movq is base.movq, "one MoVQ decodes for every decoder"
    assert img2img.unet is base.unet and cn_img2img.unet is controlnet.unet
    assert inpaint.unet.config.in_channels == 9 and controlnet.unet.config.in_channels == 8
    assert controlnet.unet.config.addition_embed_type == "image_hint"
    assert 2 ** (len(base.movq.config.block_out_channels) - 1) == 8, "the hint encoder needs an 8x MoVQ"
    components = manager.component_objects(MODEL)
    assert set(components) == {"prior", "base", "inpaint", "controlnet:depth"}
    for name in ("prior", "text_encoder", "image_encoder", "tokenizer", "image_processor"):
        assert getattr(prior, name) is getattr(components["prior"], name)
    expected = module_bytes(components["prior"], base.unet, base.movq, inpaint.unet, controlnet.unet)
    assert manager.used_bytes() == expected, "nothing is counted (or loaded) twice"


def _hashes(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_tiny_build_is_seeded_and_decoders_share_the_movq_bytes(
    underpaint_home: Path, tmp_path: Path
) -> None:
    built = ensure_tiny(underpaint_home / "models", "kandinsky22")
    assert sorted(p.name for p in built.iterdir() if p.is_dir()) == sorted(tiny.FOLDERS)
    hashes = _hashes(built)
    for folder in ("decoder-inpaint", "controlnet-depth"):
        for part in tiny.DECODER_SHARED:
            mine = {k.split("/", 1)[1]: v for k, v in hashes.items() if k.startswith(f"{folder}/{part}/")}
            base = {k.split("/", 1)[1]: v for k, v in hashes.items() if k.startswith(f"decoder/{part}/")}
            assert mine and mine == base, (folder, part)
    assert _hashes(build_family("kandinsky22", tmp_path / "again", seed=0)) == hashes, "seeded"
