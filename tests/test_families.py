"""Every (tiny preset, op) pair of every model family, end to end through a real daemon, with the checks
that hold for all of them: the picture has the right size and place, a seed reproduces it (and variation i
alone with seed + i reproduces image i), text-conditioned families answer to the prompt, selection-aware
ops leave every pixel outside the mask as it was, and ops a preset cannot run are refused naming the
presets that can. Family-specific behaviour is tested in tests/test_family_<family>.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import composite, ellipse_mask, obj, picture, pixels
from PIL import Image, ImageDraw

from underpaint.daemon.config import load_config
from underpaint.daemon.families import family
from underpaint.daemon.ops import OPS
from underpaint.protocol import DaemonError

CONFIG = load_config()
TINY = [p for p in CONFIG.presets.values() if p.builtin == "tiny"]
PAIRS = [(p.name, op) for p in TINY for op in family(p.family).ops(p)]
MISSING = [(p.name, op) for p in TINY for op in OPS if op not in family(p.family).ops(p)]

SIZE = (96, 64)
MASK_BOX = (30, 12, 70, 50)


def _inputs() -> dict[str, Image.Image]:
    base = picture(SIZE)
    sketch = Image.new("RGB", SIZE, "black")
    ImageDraw.Draw(sketch).ellipse((20, 10, 76, 54), outline="white", width=3)
    depth = Image.linear_gradient("L").resize(SIZE)
    return {"image": base, "mask": ellipse_mask(SIZE, MASK_BOX, soften=2), "control": sketch, "depth": depth}


def _request(preset: dict[str, Any], op: str, masked: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Small, fast params and the images `op` takes, built from the preset's own op spec."""
    spec = preset["op_specs"][op]
    params: dict[str, Any] = {"seed": 11, "variations": 2}
    for name in spec["params"]:
        if name.endswith("steps"):
            params[name] = 3
    if "prompt" in spec["params"]:
        params["prompt"] = "a red fox in the snow"
    if "instruction" in spec["params"]:
        params["instruction"] = "make it winter"
    if "width" in spec["params"]:
        params["width"], params["height"] = preset["resolution"], preset["resolution"]
    if "factor" in spec["params"]:
        params["factor"] = spec["params"]["factor"]["default"]
    inputs = _inputs()
    images: dict[str, Any] = {}
    if "image" in spec["images"] and op != "upscale":
        images["image"] = obj(inputs["image"])
    if op == "upscale":
        side = 128 if params.get("factor") == 2 else 32
        images["image"] = obj(picture((side, side)))
    if masked and "mask" in spec["images"]:
        images["mask"] = obj(inputs["mask"])
    if op == "inpaint":
        images["mask"] = obj(inputs["mask"])
    if op == "controlnet":
        params["units"] = [{"model": preset["controlnets"][0], "image": "control"}]
        images["control"] = obj(inputs["control"])
    if op == "depth" and masked:
        images["depth"] = obj(inputs["depth"])
    if op == "mix":
        params["items"] = [{"prompt": "a castle"}, {"image": "a", "weight": 0.5}]
        images["a"] = obj(inputs["image"])
    return params, images


def _preset(client: Any, name: str) -> dict[str, Any]:
    return next(p for p in client.hello("test_families")["models"] if p["name"] == name)


@pytest.mark.parametrize(("name", "op"), PAIRS, ids=[f"{n}-{o}" for n, o in PAIRS])
def test_every_op_of_every_family(client: Any, name: str, op: str) -> None:
    preset = _preset(client, name)
    masked = "mask" in preset["op_specs"][op]["images"]
    params, images = _request(preset, op, masked)
    first = client.run(op, params, images, model=name)
    assert first["model"] == name and len(first["images"]) == 2
    assert [i["seed"] for i in first["images"]] == [11, 12]
    a, b = (pixels(i) for i in first["images"])
    assert a.shape == b.shape and a.shape[2] == 4
    assert a[..., :3].std() > 0.5, "a picture, not a flat colour"
    assert not np.array_equal(a, b), "variations use different seeds"

    same = client.run(op, first["params"], images, model=name)
    for x, y in zip(first["images"], same["images"], strict=True):
        assert np.array_equal(pixels(x), pixels(y)), "the same request reproduces the pixels bit for bit"
    alone = client.run(op, {**params, "seed": 12, "variations": 1}, images, model=name)
    assert np.array_equal(pixels(alone["images"][0]), b), "variation 2 alone, with seed + 1, is the same"

    if "mask" in images:
        base = _inputs()["image"]
        outside = np.asarray(_inputs()["mask"]) == 0
        out = np.asarray(composite(base, first))
        assert np.array_equal(out[outside], np.asarray(base)[outside]), "a pixel outside the mask changed"
    elif "image" in images and op != "upscale":
        assert (a.shape[1], a.shape[0]) == SIZE and (a[..., 3] == 255).all()
    if op == "upscale":
        side = images["image"]["width"]
        assert a.shape[:2] == (side * params["factor"],) * 2

    if "prompt" in params:
        other = client.run(op, {**params, "prompt": "a blue robot at night"}, images, model=name)
        assert not np.array_equal(pixels(other["images"][0]), a), "the prompt steers the picture"


@pytest.mark.parametrize(("name", "op"), MISSING, ids=[f"{n}-{o}" for n, o in MISSING])
def test_ops_a_preset_cannot_run_are_refused_with_who_can(client: Any, name: str, op: str) -> None:
    with pytest.raises(DaemonError) as err:
        client.submit(op, {}, {"image": obj(picture(SIZE))}, model=name)
    assert err.value.code == "unsupported_op" and err.value.field == "op"
    message = str(err.value)
    assert name in message and "Presets that run" in message
    can = [p for p, o in PAIRS if o == op]
    assert all(p in message for p in can), message


def test_every_family_has_a_tiny_preset_and_explains_itself(client: Any) -> None:
    welcome = client.hello("test_families")
    by_family = {p["family"]: p for p in welcome["models"] if p["name"].startswith("tiny")}
    assert set(by_family) == {p.family for p in TINY}
    for preset in welcome["models"]:
        assert preset["title"] and len(preset["about"]) > 150, preset["name"]
        assert set(preset["op_specs"]) == set(preset["ops"])
