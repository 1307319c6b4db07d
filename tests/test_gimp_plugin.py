"""The GIMP 3 plug-in: its pure modules against a real daemon, its installation, and every procedure in
real GIMP 3 (gimp-console from a cached Debian 13 chroot, see tests/gimp/gimp_chroot.py).

The GIMP tests install the plug-in as a user would (`underpaint install-plugin gimp --dest`), call each
procedure through the PDB from gimp-console's batch Python on daemon/assets/chelsea.png with a feathered
elliptical selection (tests/gimp/batch_calls.py), save the image as .xcf, load it back in GIMP and dump
every layer, then check here, with numpy: the layer tree, names, offsets, parasites, that the composite
is unchanged outside the selection and that the original layers are byte-identical.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import need
from PIL import Image, ImageDraw

from underpaint.daemon.commands.launch import running_daemon

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PLUGIN = REPO / "plugins" / "gimp" / "underpaint"
PICTURE = REPO / "daemon" / "assets" / "chelsea.png"
GIMP_TIMEOUT = float(os.environ.get("UNDERPAINT_GIMP_TIMEOUT", "300"))  # s per gimp-console run: a hang fails

sys.path.insert(0, str(HERE / "gimp"))
import gimp_chroot  # noqa: E402
from link import relay  # noqa: E402


def _load_plugin_package() -> ModuleType:
    """Import `underpaint_gimp` from the plug-in folder without putting that folder on sys.path
    (its `underpaint.py` would shadow the `underpaint` package)."""
    name = "underpaint_gimp"
    if name in sys.modules:
        return sys.modules[name]
    init = PLUGIN / name / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# The plug-in imports the vendored copy as `underpaint_protocol`; here it is the package itself (its
# `regions` too, so the plug-in's Rect is the one imported here). Set before the plug-in's modules load.
import underpaint.protocol as _protocol  # noqa: E402
import underpaint.protocol.regions as _regions  # noqa: E402
from underpaint.protocol.regions import Rect  # noqa: E402

sys.modules.setdefault("underpaint_protocol", _protocol)
sys.modules.setdefault("underpaint_protocol.regions", _regions)

_load_plugin_package()
from underpaint_gimp import (  # noqa: E402
    job,
    keys,
    modes,
    pending,
    placement,
    presets,
    prompt_errors,
    region,
    request,
    reword,
    steps,
)

ELLIPSE = (120, 20, 210, 180)  # x, y, w, h: over the cat's head
GREEN_SQUARE = (180, 60, 240, 120)  # left, top, right, bottom: the opaque part of the loud layer
CANVASES = {"wide": (2200, 600), "tall": (600, 2200)}  # beyond the daemon's 2048 px on a side
FEATHER = 16
PADDING = 32


# -- pure modules ----------------------------------------------------------------------------------


def test_region_math() -> None:
    """GIMP's crop choices on top of the shared `protocol/regions.py` (tested in test_regions.py)."""
    assert region.Rect is Rect  # the vendored shared module, not a copy of its own
    image = Rect(0, 0, 451, 300)
    sel = Rect.from_corners(104, 4, 346, 216)
    assert region.crop_region(image, sel, None, 32) == Rect.from_corners(72, 0, 378, 248)
    assert region.crop_region(image, sel, Rect(0, 0, 451, 300), 0) == sel
    assert region.crop_region(image, sel, Rect(200, 0, 10, 10), 0) == sel  # the layer does not clip it
    assert region.crop_region(image, None, Rect(-10, 50, 100, 100), 32) == Rect(0, 50, 90, 100)
    assert region.crop_region(image, Rect(5, 5, 0, 0), Rect(-10, 50, 100, 100), 32) == Rect(0, 50, 90, 100)
    assert region.crop_region(image, None, None, 32) == image
    assert region.crop_region(image, Rect(400, 250, 100, 100), None, 8) == Rect.from_corners(
        392, 242, 451, 300
    )
    assert region.crop_region(image, None, Rect(500, 0, 10, 10), 0).empty  # layer off the canvas
    assert region.upscale_region(image, Rect(200, 60, 40, 30), image) == Rect(200, 60, 40, 30)
    assert placement.placement(Rect(72, 0, 10, 10), 5, 7) == (77, 7)


def test_generate_size_keeps_the_shape() -> None:
    """Generate paints at the preset's native size in the target's shape (multiples of 8 within the
    daemon's 64 … 2048), then covers the target with one scale factor and crops: never stretched."""
    assert region.generate_size(Rect(0, 0, 242, 212), 0, 0, 512) == (512, 448)
    assert region.generate_size(Rect(0, 0, 4200, 1000), 0, 0, 1024) == (1024, 240)
    assert region.generate_size(Rect(0, 0, 1000, 4200), 0, 0, 64) == (64, 64)  # the 64 px minimum
    assert region.generate_size(Rect(0, 0, 20, 5000), 0, 0, 512) == (64, 512)
    assert region.generate_size(Rect(0, 0, 5000, 3000), 0, 0, None) == (2048, 1232)  # no preset size
    assert region.generate_size(Rect(0, 0, 242, 212), 96, 0, 512) == (96, 88)  # one side asked: aspect
    assert region.generate_size(Rect(0, 0, 242, 212), 96, 120, 512) == (96, 120)
    assert region.cover(64, 64, Rect(5, 5, 2600, 700)) == (2600, 2600, 0, 950)
    assert region.cover(512, 136, Rect(0, 0, 2600, 700)) == (2635, 700, 17, 0)
    assert region.cover(248, 216, Rect(0, 0, 242, 212)) == (243, 212, 0, 0)
    for tw, th in [(2600, 700), (700, 2600), (242, 212), (3000, 3000), (50, 4000), (9000, 64)]:
        target = Rect(0, 0, tw, th)
        for resolution in (64, 512, 768, 1024):
            w, h = region.generate_size(target, 0, 0, resolution)
            assert 64 <= min(w, h) and max(w, h) <= max(64, resolution) and w % 8 == h % 8 == 0
            sw, sh, left, top = region.cover(w, h, target)
            assert sw >= tw and sh >= th and 0 <= left <= sw - tw and 0 <= top <= sh - th
            assert abs(sw * h - sh * w) <= max(w, h), "one scale factor for both sides (to a pixel)"


def test_modes_map_to_protocol_ops() -> None:
    ops = {m.key: m.op for m in modes.MODES}
    assert ops == {
        "inpaint": "inpaint",
        "refine": "sdedit",
        "controlnet": "controlnet",
        "instruct": "instruct",
        "generate": "txt2img",
        "variation": "variation",
        "depth": "depth",
        "mix": "mix",
        "compare": "compare",
        "upscale": "upscale",
    }
    assert len({m.procedure for m in modes.MODES}) == len(modes.MODES)
    for mode in modes.MODES:
        names = [a.name for a in mode.args]
        assert len(names) == len(set(names)), mode.key
        assert {"steps", "guidance", "seed", "variations", "endpoint"} <= set(names)
        assert ("models" if mode.key == "compare" else "model") in names, mode.key
        for arg in mode.args:
            if arg.kind in ("int", "float"):
                assert arg.min <= arg.default <= arg.max, (mode.key, arg.name)
            if arg.kind == "choice":
                assert arg.default in [value for value, _ in arg.choices], (mode.key, arg.name)
    for mode in modes.MODES:  # GimpProcedureDialog warns about clashing mnemonics, its buttons' too
        assert all("_" in arg.nick for arg in mode.args), mode.key  # it also warns about missing ones
        keys = [arg.nick.split("_", 1)[1][0].lower() for arg in mode.args]
        assert len(keys) == len(set(keys)), (mode.key, sorted(keys))
        assert not set(keys) & set(modes.DIALOG_MNEMONICS), (mode.key, sorted(keys))
    assert modes.mode_by_key("inpaint").needs_selection
    assert "instruction" in [a.name for a in modes.mode_by_key("instruct").args]
    assert {"control-layer", "preprocessor", "weight"} <= {
        a.name for a in modes.mode_by_key("controlnet").args
    }
    compare = modes.mode_by_key("compare")
    assert [value for value, _ in compare.arg("base-mode").choices] == list(modes.COMPARED)
    for key in modes.COMPARED:  # Compare has every argument its base modes send
        # (not `rank`: Compare lays out one picture per preset, in the order the presets were ticked;
        # not `loras`: each preset lists its own)
        skipped = {"width", "height", "depth-layer", "rank", "loras"}
        wanted = {a.name for a in modes.mode_by_key(key).args if a.param} - skipped
        assert wanted <= {a.name for a in compare.args}, key


def test_arguments_are_the_daemons_parameters(daemon) -> None:
    """Each argument's `param` (what the dialog greys out when a preset lacks it) is a parameter or
    image slot of its op in the daemon's own table, so the dialog and the daemon agree."""
    with job.Session(daemon.endpoint, protocol=_protocol) as session:
        ops, presets = session.welcome["ops"], session.welcome["models"]
    for mode in modes.MODES:
        inner = modes.COMPARED if mode.key == "compare" else (mode.key,)
        for arg in mode.args:
            if arg.param is None:
                continue
            what = "images" if arg.kind == "layer" else "params"
            slots = [set(ops[modes.mode_by_key(k).op][what]) for k in inner]
            if arg.param in ("rank", "loras"):  # params of some presets only (a CLIP; LoRA support)
                slots = [set(p["op_specs"].get(mode.op, {}).get("params") or ()) for p in presets]
            assert any(arg.param in slot for slot in slots), (mode.key, arg.name, arg.param)


def _defaults(mode: modes.Mode, **overrides: Any) -> dict[str, Any]:
    values = {arg.name: arg.default for arg in mode.args}
    values.update(overrides)
    return values


def _crop_pixels(mode: modes.Mode, with_mask: bool = True) -> request.Pixels:
    """What the GIMP side reads for the test selection: an RGBA crop and its 8-bit mask (Mix: the
    picture and a sketch as two whole layers)."""
    picture = Image.open(PICTURE).convert("RGBA")
    mask = Image.new("L", picture.size, 0)
    x, y, w, h = ELLIPSE
    ImageDraw.Draw(mask).ellipse((x, y, x + w, y + h), fill=255)
    bounds = Rect(x, y, w, h)
    image = Rect(0, 0, *picture.size)
    if mode.source == modes.SELECTED_LAYERS:
        sketch = _sketch().convert("RGBA")
        return request.Pixels(bounds, layers=[(*p.size, p.tobytes()) for p in (picture, sketch)])
    if not mode.uses_image:
        return request.Pixels(bounds)
    crop = region.crop_region(image, bounds, image, PADDING)
    if mode.new_image:
        crop = Rect(200, 60, 40, 30)
    box = (crop.x, crop.y, crop.right, crop.bottom)
    return request.Pixels(
        crop,
        picture.crop(box).tobytes(),
        mask.crop(box).tobytes() if with_mask and not mode.new_image else None,
        depth=_depth_map().crop(box).tobytes() if mode.has("depth-layer") else None,
    )


def _sketch() -> Image.Image:
    """White outline of a smaller ellipse on black: the control (and the second Mix) layer."""
    sketch = Image.new("RGB", Image.open(PICTURE).size, "black")
    x, y, w, h = ELLIPSE
    ImageDraw.Draw(sketch).ellipse((x + 20, y + 20, x + w - 20, y + h - 20), outline="white", width=4)
    return sketch


def _loud_layer() -> Image.Image:
    """A layer the size of the picture, transparent but for a green square over the cat's head, its
    transparent pixels hiding loud magenta: what the model must never see."""
    layer = Image.new("RGBA", Image.open(PICTURE).size, (255, 0, 255, 0))
    layer.paste((0, 200, 0, 255), GREEN_SQUARE)
    return layer


def _canvas(size: tuple[int, int]) -> Image.Image:
    """A canvas beyond the daemon's 2048 px on one side: two diagonal ramps."""
    ramp = Image.linear_gradient("L")
    channels = [ramp.resize(size), ramp.rotate(90).resize(size), Image.new("L", size, 128)]
    return Image.merge("RGB", channels)


def _depth_map() -> Image.Image:
    """A left-to-right ramp, near (white) on the right: the depth layer."""
    width, height = Image.open(PICTURE).size
    return Image.linear_gradient("L").rotate(90).resize((width, height)).transpose(Image.FLIP_LEFT_RIGHT)


def test_request_errors_a_user_can_fix() -> None:
    inpaint = modes.mode_by_key("inpaint")
    with pytest.raises(request.UserError, match="needs a selection"):
        request.build_request(inpaint, _defaults(inpaint), _crop_pixels(inpaint, with_mask=False))
    instruct = modes.mode_by_key("instruct")
    with pytest.raises(request.UserError, match="needs an instruction"):
        request.build_request(instruct, _defaults(instruct, instruction="  "), _crop_pixels(instruct))
    welcome = {
        "ops": {"inpaint": {}, "txt2img": {}},
        "default_model": "tiny",
        "models": [{"name": "tiny", "ops": ["inpaint"]}, {"name": "dd", "title": "DDPM", "ops": ["txt2img"]}],
    }
    req = request.build_request(inpaint, _defaults(inpaint, model="nope"), _crop_pixels(inpaint))
    with pytest.raises(request.UserError, match="No model preset 'nope'"):
        request.check_against_welcome(req, welcome)
    req = request.build_request(inpaint, _defaults(inpaint, model="dd"), _crop_pixels(inpaint))
    with pytest.raises(
        request.UserError, match=r"'dd' \(DDPM\) cannot run 'inpaint'; presets that can: tiny"
    ):
        request.check_against_welcome(req, welcome)
    refine = modes.mode_by_key("refine")
    with pytest.raises(request.UserError, match="does not offer 'sdedit'"):
        request.check_against_welcome(
            request.build_request(refine, _defaults(refine), _crop_pixels(refine)), welcome
        )
    mix = modes.mode_by_key("mix")
    one_layer = request.Pixels(Rect(0, 0, 8, 8), layers=[(8, 8, bytes(256))])
    with pytest.raises(request.UserError, match="two or more things to blend"):
        request.build_request(mix, _defaults(mix), one_layer)
    with pytest.raises(request.UserError, match="3 blend weights for 2 things"):
        request.build_request(mix, _defaults(mix, prompt="a cat", weights="1, 2, 3"), one_layer)
    with pytest.raises(request.UserError, match="must be numbers"):
        request.build_request(mix, _defaults(mix, prompt="a cat", weights="1, lots"), one_layer)
    mixed = request.build_request(mix, _defaults(mix, prompt="a cat", weights="0.5"), one_layer)
    assert mixed.params["items"] == [{"image": "layer1", "weight": 0.5}, {"prompt": "a cat", "weight": 1.0}]
    compare = modes.mode_by_key("compare")
    with pytest.raises(request.UserError, match="tick two or more"):
        request.build_request(compare, _defaults(compare, models=[]), _crop_pixels(compare))
    message = job.missing_dependency_message(ModuleNotFoundError("No module named 'zmq'", name="zmq"))
    assert (
        "'zmq'" in message
        and "apt install python3-zmq python3-msgpack" in message
        and "pip install" in message
    )


# The preset each mode runs on in the round trip (the families that can), and its arguments.
OVERRIDES: dict[str, dict[str, Any]] = {
    "inpaint": {"prompt": "a fox", "variations": 2},
    "refine": {"prompt": "a watercolour cat"},
    "controlnet": {"prompt": "a cat", "controlnet": "canny", "preprocessor": "canny"},
    "instruct": {"instruction": "make it winter"},
    "generate": {"prompt": "a cat on a sofa"},
    "variation": {"model": "tiny-sd-variation"},
    "depth": {"model": "tiny-sd2", "prompt": "a cat"},
    "mix": {"model": "tiny-kandinsky22", "prompt": "a tiger", "weights": "1, 0.5, 2"},
    "compare": {"models": ["tiny", "tiny-sdxl"], "base-mode": "refine", "prompt": "a cat"},
    "upscale": {"prompt": "a cat"},
}


@pytest.mark.parametrize("key", [m.key for m in modes.MODES])
def test_every_mode_round_trips_through_the_daemon(daemon, key: str) -> None:
    """Requests built by the plug-in are accepted by the real daemon and become the right layers."""
    mode = modes.mode_by_key(key)
    pixels = _crop_pixels(mode)
    values = _defaults(mode, steps=4, seed=11, endpoint=daemon.endpoint, **OVERRIDES[key])
    base = modes.effective(mode, values)
    models = values.get("models") or [values.get("model") or "tiny"]
    reports: list[tuple[float | None, str]] = []
    with job.Session(daemon.endpoint, protocol=_protocol) as session:
        resolution = presets.Catalog.from_welcome(session.welcome).resolution(models)
        req = session.fit(request.build_request(mode, values, pixels, resolution))
        result = session.run(req, lambda fraction, text: reports.append((fraction, text)))
    auto = base.result == modes.FILL
    plans = placement.plan_layers(mode, result, pixels.region, fit=auto, not_sent=req.not_sent)
    assert len(plans) == values["variations"] * len(models)
    fractions = [f for f, _ in reports if f is not None]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0, reports
    for i, plan in enumerate(plans):
        model, seed = models[i // values["variations"]], 11 + i % values["variations"]
        stored = json.loads(plan.parasite)
        if key == "compare":
            assert re.fullmatch(rf"{model} \d+\.\d+ s \({base.title} seed {seed}\)", plan.name), plan.name
            assert stored["compared"] == models and stored["seconds"]["run"] > 0
        else:
            assert plan.name == f"{mode.title} seed {seed} ({model})"
        assert stored["op"] == base.op and stored["seed"] == seed and stored["model"] == model
        assert stored["params"]["steps"] == 4
        image = result["images"][i]
        if mode.new_image:
            assert (plan.x, plan.y, plan.width, plan.height) == (0, 0, 4 * 40, 4 * 30)
        elif auto:  # the tiny presets paint at 64 px: 64 x 64 is the daemon's smallest
            assert plan.fit == pixels.region and (plan.width, plan.height) == (64, 64)
        else:
            assert (plan.x, plan.y) == (pixels.region.x + image["x"], pixels.region.y + image["y"])


def test_the_picked_preset_decides_what_is_sent(daemon) -> None:
    """Parameters a preset's op spec does not list are not sent (the daemon would refuse them): a
    DDPM preset gets no prompt; a mode the preset cannot run names the presets that can."""
    with job.Session(daemon.endpoint, protocol=_protocol) as session:
        catalog = presets.Catalog.from_welcome(session.welcome)
        generate = modes.mode_by_key("generate")
        values = _defaults(generate, steps=2, seed=3, model="tiny-ddpm", prompt="a cat", width=64, height=64)
        pixels = _crop_pixels(generate)
        req = session.fit(request.build_request(generate, values, pixels))
        assert "prompt" not in req.params and "prompt" in req.not_sent
        result = session.run(req)
        inpaint = modes.mode_by_key("inpaint")
        wrong = request.build_request(inpaint, _defaults(inpaint, model="tiny-ddpm"), _crop_pixels(inpaint))
        with pytest.raises(
            request.UserError, match=r"'tiny-ddpm' \(.+\) cannot run 'inpaint'; presets that can: "
        ):
            session.fit(wrong)
    assert "prompt" not in result["params"] and result["model"] == "tiny-ddpm"
    (plan,) = placement.plan_layers(generate, result, pixels.region, fit=True, not_sent=req.not_sent)
    assert plan.name == "Generate seed 3 (tiny-ddpm)" and "prompt" in json.loads(plan.parasite)["not_sent"]
    shown = presets.help_text(catalog, "tiny-ddpm", generate, "txt2img", "Generate")
    assert shown.runnable and "Not used by this preset: Prompt, Negative prompt" in shown.notes
    assert "DDPM" in shown.head and len(shown.about) > 100, "the family's own paragraph"
    shown = presets.help_text(catalog, "tiny-ddpm", inpaint, "inpaint", "Inpaint")
    assert not shown.runnable and re.search(r"presets that can: .*\btiny\b", shown.notes), shown
    shown = presets.help_text(catalog, "", inpaint, "inpaint", "Inpaint")
    assert shown.runnable and shown.text.startswith("tiny (the daemon's default): Stable Diffusion")
    tiny = catalog.get("tiny")
    assert tiny is not None
    extra = catalog.family_settings(tiny, "inpaint")  # e.g. `rank` once the preset has a CLIP
    if extra:
        assert f"Family settings it takes: {', '.join(extra)} (hover" in shown.notes, shown
    else:
        assert "Family settings" not in shown.text, "a preset without any says nothing of them"
    shown = presets.help_text(catalog, "tiny-sdxl", inpaint, "inpaint", "Inpaint")
    assert "Family settings it takes: refine" in shown.notes
    sdxl = catalog.get("tiny-sdxl")
    assert sdxl is not None
    assert catalog.family_settings(sdxl, "inpaint")["refine"].startswith("refine=0.2, 0 … 1: share of the")


def test_family_settings_are_typed_by_the_preset(daemon) -> None:
    """'Family settings' reach the parameters only some families take, typed by the preset's spec;
    a setting the preset does not take is refused here, naming the ones it does."""
    refine = modes.mode_by_key("refine")
    pixels = _crop_pixels(refine)
    values = _defaults(refine, steps=2, seed=5, prompt="a cat")
    with job.Session(daemon.endpoint, protocol=_protocol) as session:
        sdxl = request.build_request(
            refine, {**values, "model": "tiny-sdxl", "family-settings": "refine=0.5"}, pixels
        )
        sdxl = session.fit(sdxl)
        assert sdxl.params["refine"] == 0.5 and isinstance(sdxl.params["refine"], float)
        assert session.run(sdxl)["params"]["refine"] == 0.5
        sd15 = request.build_request(
            refine, {**values, "model": "tiny", "family-settings": "refine=0.5"}, pixels
        )
        with pytest.raises(
            request.UserError, match=r"tiny does not take the setting 'refine' for sdedit; .*scheduler"
        ):
            session.fit(sd15)
        bad = {**values, "model": "tiny-sdxl", "family-settings": "refine=lots"}
        with pytest.raises(request.UserError, match="refine must be a number"):
            session.fit(request.build_request(refine, bad, pixels))
    with pytest.raises(request.UserError, match="name=value pairs"):
        request.build_request(refine, {**values, "family-settings": "refine"}, pixels)


def test_daemon_down_fails_fast_with_a_clear_message() -> None:
    started = time.monotonic()
    with pytest.raises(request.UserError, match="not answering at tcp://127.0.0.1:9 .*underpaint serve"):
        job.Session("tcp://127.0.0.1:9", protocol=_protocol, timeout=1.0)
    assert time.monotonic() - started < 5


Handler = Callable[[dict[str, Any]], list[dict[str, Any]]]


@contextmanager
def fake_daemon(handler: Handler) -> Iterator[str]:
    """A scripted stand-in daemon: `handler` maps each request to the messages sent back."""
    import msgpack
    import zmq

    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if not sock.poll(50):
                continue
            peer, frame = sock.recv_multipart()
            for reply in handler(msgpack.unpackb(frame, raw=False)):
                sock.send_multipart([peer, msgpack.packb(reply, use_bin_type=True)])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(5)
        sock.close(0)


def _speaks_99(msg: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "type": "error",
            "re": msg.get("id"),
            "code": "protocol_mismatch",
            "message": "this daemon speaks protocol 99",
            "supported": [99],
        }
    ]


def _scripted(after_submit: list[dict[str, Any]], status: list[dict[str, Any]] | None) -> Handler:
    """hello -> welcome, submit -> accepted + `after_submit`, status -> `status` (None: silence)."""

    def handle(msg: dict[str, Any]) -> list[dict[str, Any]]:
        rid = msg.get("id")
        if msg["type"] == "hello":
            welcome = {
                "ops": {"sdedit": {}},
                "default_model": "x",
                "models": [{"name": "x", "ops": ["sdedit"]}],
            }
            return [{"type": "welcome", "re": rid, "protocol": 1, **welcome}]
        if msg["type"] == "submit":
            return [{"type": "accepted", "re": rid, "job": "j1", "position": 0}, *after_submit]
        return [{**m, "re": rid} for m in status or []]

    return handle


@pytest.fixture
def other_protocol_daemon() -> Iterator[str]:
    with fake_daemon(_speaks_99) as endpoint:
        yield endpoint


def test_protocol_mismatch_names_both_versions(other_protocol_daemon: str) -> None:
    with pytest.raises(request.UserError, match=r"speaks protocol version\(s\) 99, this plug-in speaks 1"):
        job.Session(other_protocol_daemon, protocol=_protocol)


def test_invalid_endpoint_is_explained() -> None:
    with pytest.raises(request.UserError, match="Invalid Underpaint endpoint 'localhost:57321'"):
        job.Session("localhost:57321", protocol=_protocol)


@pytest.mark.parametrize(
    ("after_submit", "status", "message"),
    [
        ([], None, "stopped answering while running the job"),
        ([], [{"type": "error", "code": "unknown_job", "message": "no such job"}], "lost the job"),
        (
            [{"type": "error", "job": "j1", "code": "out_of_memory", "message": "CUDA out of memory"}],
            None,
            "reported out_of_memory: CUDA out of memory. Try a smaller selection",
        ),
        ([{"type": "progress", "job": "j1", "step": 1, "total": 2}, {"type": "cancelled", "job": "j1"}], None,
         "was cancelled"),
    ],
)  # fmt: skip
def test_a_job_that_goes_wrong_ends_with_a_message(
    after_submit: list[dict[str, Any]], status: list[dict[str, Any]] | None, message: str
) -> None:
    """A daemon that dies, forgets the job or fails it never leaves the plug-in (and GIMP) waiting."""
    refine = modes.mode_by_key("refine")
    req = request.build_request(refine, _defaults(refine), _crop_pixels(refine))
    with fake_daemon(_scripted(after_submit, status)) as endpoint:
        session = job.Session(endpoint, protocol=_protocol, ping_every=0.3, ping_timeout=0.5, grace=0.5)
        started = time.monotonic()
        with session, pytest.raises(request.UserError, match=re.escape(message)):
            session.run(req)
        assert time.monotonic() - started < 5


def test_install_plugin_layout(tmp_path: Path) -> None:
    """`underpaint install-plugin gimp --dest` lays the plug-in out the way GIMP 3 loads it."""
    dest = tmp_path / "plug-ins"
    proc = subprocess.run(
        [sys.executable, "-m", "underpaint.daemon.cli", "install-plugin", "gimp", "--dest", str(dest)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    folder = dest / "underpaint"
    script = folder / "underpaint.py"
    assert script.read_text().startswith("#!/usr/bin/env python3")
    assert os.access(script, os.X_OK)
    for name in (
        *("__init__", "modes", "presets", "region", "request", "placement", "job"),
        *("gimp_io", "procedures", "dialog"),
    ):
        assert (folder / "underpaint_gimp" / f"{name}.py").is_file(), name
    for name in ("__init__.py", "client.py", "messages.py", "regions.py"):
        assert (folder / "underpaint_protocol" / name).read_bytes() == (REPO / "protocol" / name).read_bytes()
    assert not list(folder.rglob("__pycache__"))
    # the plug-in's own imports must stay within its folder: no torch, no diffusers, no `underpaint.*`
    for path in folder.rglob("*.py"):
        text = path.read_text()
        for banned in ("import torch", "diffusers", "from underpaint.", "import underpaint."):
            assert banned not in text, (path, banned)


# -- real GIMP 3 -----------------------------------------------------------------------------------


@dataclass
class GimpEnv:
    root: Path  # the chroot
    work: Path  # host path of this session's folder inside the chroot
    home: Path

    def inside(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.root))

    def run(self, argv: list[str], extra_env: dict[str, str], out: Path) -> tuple[gimp_chroot.GimpRun, str]:
        """Run gimp-console in the chroot with a clean environment; fail (with its output) on a hang."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.inside(self.home), "LANG": "C.UTF-8"}
        run = gimp_chroot.run_in_chroot(self.root, argv, {**env, **extra_env}, GIMP_TIMEOUT)
        (out / "gimp-output.txt").write_text(run.output)
        where = (
            f"gimp-console exit {run.returncode} after {run.seconds:.1f} s; its output:\n{run.output[-8000:]}"
        )
        assert not run.timed_out, f"gimp-console did not finish in {GIMP_TIMEOUT:g} s; {where}"
        return run, where

    def batch(
        self,
        name: str,
        calls: list[dict[str, Any]],
        extra_env: dict[str, str] | None = None,
        procedures: list[str] | None = None,
        dialogs: dict[str, str] | None = None,
        ui: bool = False,
    ) -> dict:
        """Run tests/gimp/batch_calls.py in gimp-console with `calls`; return its result.json.

        `dialogs`: run on a virtual display, answering each dialog titled like a key with its value;
        `ui`: GIMP with its user interface there (image windows, painting), not gimp-console.
        """
        out = self.work / name
        out.mkdir()
        spec = {
            "picture": self.inside(self.work / "chelsea.png"),
            "out": self.inside(out),
            "calls": calls,
            "procedures": procedures or [],
        }
        (out / "spec.json").write_text(json.dumps(spec, indent=1))
        env = {"UNDERPAINT_BATCH_SPEC": self.inside(out / "spec.json"), **(extra_env or {})}
        argv = gimp_chroot.gimp_batch_argv(self.inside(self.work / "batch_calls.py"), ui=ui)
        if dialogs is not None:
            answers = [f"{title}={key}" for title, key in dialogs.items()]
            argv = [
                "python3",
                self.inside(self.work / "interactive.py"),
                self.inside(out),
                *answers,
                "--",
                *argv,
            ]
        run, where = self.run(argv, env, out)
        result_file = out / "result.json"
        assert run.returncode == 0 and result_file.is_file(), f"no result.json; {where}"
        result = json.loads(result_file.read_text())
        assert result.get("done"), f"{result.get('exception')}\n{where}"
        for call, entry in result["calls"].items():
            assert "exception" not in entry, f"{call}: {entry['exception']}\n{where}"
        result["out"] = out
        result["log"] = where
        return result


@pytest.fixture(scope="module")
def gimp() -> Iterator[GimpEnv]:
    """The cached GIMP 3 chroot with the plug-in installed, as a user would, into a fresh HOME."""
    need(gimp_chroot.missing_preconditions() is None, str(gimp_chroot.missing_preconditions()))
    with gimp_chroot.locked(timeout=420):  # another run on this machine holds it; below pytest's 600 s
        started = time.monotonic()
        root = gimp_chroot.ensure_chroot()
        print(f"GIMP 3 chroot ready at {root} in {time.monotonic() - started:.0f} s", file=sys.stderr)
        work = gimp_chroot.fresh_workdir(root, "underpaint-gimp-test")
        home = work / "home"
        try:
            home.mkdir()
            plug_ins = home / ".config" / "GIMP" / "3.0" / "plug-ins"
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "underpaint.daemon.cli",
                    "install-plugin",
                    "gimp",
                    "--dest",
                    str(plug_ins),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 0, proc.stdout + proc.stderr
            for script in ("batch_calls.py", "interactive.py"):
                (work / script).write_bytes((HERE / "gimp" / script).read_bytes())
            Image.open(PICTURE).save(work / "chelsea.png")
            _sketch().save(work / "sketch.png")
            _depth_map().save(work / "depth.png")
            _loud_layer().save(work / "loud.png")
            for name, size in CANVASES.items():
                _canvas(size).save(work / f"{name}.png")
            with gimp_chroot.mounted(root):
                yield GimpEnv(root, work, home)
        finally:
            if os.environ.get("UNDERPAINT_KEEP_GIMP_TEST"):
                print(f"kept the GIMP test folder {work}", file=sys.stderr)
            else:
                gimp_chroot.safe_remove(work)


SELECTION = ["ellipse", *ELLIPSE, FEATHER]
UPSCALE_RECT = (200, 60, 40, 30)
STEPS = 4


def _mode_calls(endpoint: str, gimp: GimpEnv) -> list[dict[str, Any]]:
    common = {"endpoint": endpoint, "steps": STEPS, "seed": 7}
    call = {
        "inpaint": {"prompt": "a fox head", "variations": 2},
        "refine": {"prompt": "a watercolour cat", "source": "visible"},
        "controlnet": {"prompt": "a cat", "controlnet": "scribble", "preprocessor": "none", "weight": 0.8},
        "instruct": {"instruction": "make it winter"},
        "generate": {"prompt": "a cat on a sofa"},
        "upscale": {"prompt": "a cat"},
    }
    calls = []
    for mode in modes.MODES:
        if mode.key not in call:
            continue  # the other families' modes: gimp_families
        entry: dict[str, Any] = {
            "name": mode.key,
            "procedure": mode.procedure,
            "args": {**common, **call[mode.key]},
            "selection": ["rect", *UPSCALE_RECT, 0] if mode.new_image else SELECTION,
        }
        if mode.key == "controlnet":
            sketch = gimp.inside(gimp.work / "sketch.png")
            entry["layers"] = [{"picture": sketch, "name": "control", "hidden": True}]
            entry["args"]["control-layer"] = {"layer": "control"}
        if mode.new_image:
            entry["returns_image"] = True
        calls.append(entry)
    gray = {"name": "inpaint-gray", "procedure": modes.mode_by_key("inpaint").procedure, "grayscale": True}
    calls.append({**gray, "args": {**common, "prompt": "a fox head"}, "selection": SELECTION})
    return calls


@pytest.fixture(scope="module")
def gimp_modes(gimp: GimpEnv, daemon) -> dict[str, Any]:
    """Every procedure called once in one gimp-console session, plus the error paths."""
    return gimp.batch(
        "modes",
        _mode_calls(daemon.endpoint, gimp),
        procedures=[m.procedure for m in modes.MODES] + [FETCH, REWORD],
    )


def test_gimp_registers_every_procedure(gimp_modes: dict[str, Any]) -> None:
    """Filters > Underpaint > ..., with the typed arguments batch callers pass by name."""
    kinds = {
        "str": "gchararray",
        "int": "gint",
        "float": "gdouble",
        "bool": "gboolean",
        "choice": "gchararray",
        "layer": "GimpLayer",
        "strings": "GStrv",
    }
    for mode in modes.MODES:
        info = gimp_modes["procedures"][mode.procedure]
        assert info is not None, f"{mode.procedure} is not registered\n{gimp_modes['log']}"
        assert [path.rstrip("/") for path in info["menu_paths"]] == ["<Image>/Filters/Underpaint"], info
        assert info["menu_label"] == mode.label
        assert info["image_types"] == "RGB*, GRAY*, INDEXED*"  # indexed: results in an RGB copy
        assert info["returns"] == ["new-image"], info
        arguments = info["arguments"]
        assert list(arguments)[:3] == ["run-mode", "image", "drawables"], arguments
        for arg in mode.args:
            assert arguments.get(arg.name) == kinds[arg.kind], (mode.key, arg.name, arguments)
    fetch, rewording = (gimp_modes["procedures"][name] for name in (FETCH, REWORD))
    assert fetch is not None and rewording is not None, gimp_modes["log"]
    assert fetch["menu_label"] == "_Fetch Pending Results" and fetch["returns"] == ["placed", "pending"]
    assert list(fetch["arguments"]) == ["run-mode", "image", "drawables"], fetch
    assert rewording["menu_label"] == reword.REWORD.label and rewording["returns"] == [], rewording
    assert rewording["image_types"] == "RGB*, GRAY*", rewording
    assert {a.name: kinds[a.kind] for a in reword.REWORD.args}.items() <= rewording["arguments"].items()
    for info in (fetch, rewording):
        assert [path.rstrip("/") for path in info["menu_paths"]] == ["<Image>/Filters/Underpaint"], info


def _rgba(out: Path, name: str, width: int, height: int) -> np.ndarray:
    return np.frombuffer((out / name).read_bytes(), np.uint8).reshape(height, width, 4)


def _gray(out: Path, name: str, width: int, height: int) -> np.ndarray:
    return np.frombuffer((out / name).read_bytes(), np.uint8).reshape(height, width)


def _original() -> np.ndarray:
    return np.asarray(Image.open(PICTURE).convert("RGBA"))


def _expected_region(selection: np.ndarray, padding: int) -> Rect:
    ys, xs = np.nonzero(selection)
    bounds = Rect.from_corners(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return bounds.grown(padding).intersected(Rect(0, 0, selection.shape[1], selection.shape[0]))


def _check_added_layers(
    out: Path, entry: dict[str, Any], call: str, names: list[str], extra: list[str], fill: bool = False
) -> list[dict[str, Any]]:
    """The checks every call that adds layers must pass; returns the result layers' rows.

    The results are `names` (top to bottom) in the Underpaint group, just above the active layer;
    `extra` are the other top-level layers above Background (hidden: they cover nothing) in their
    expected order, "Underpaint" marking the group's place (default: below them all); a patch covers
    the selection grown by the padding with alpha 0 outside the selection; a fill covers the
    selection's box, masked by it; the original layer is byte-identical and the composite unchanged
    outside the selection, changed inside.
    """
    assert entry["success"], entry["error"]
    image = entry["image"]
    original = _original()
    h, w = original.shape[:2]
    assert (image["width"], image["height"]) == (w, h)
    selection = _gray(out, f"{call}-selection.y", w, h)
    assert selection.max() == 255 and 0 < selection[(selection > 0) & (selection < 255)].size, "not feathered"
    layers = image["layers"]
    top = [row for row in layers if row["parent"] is None]
    expected = [*extra, "Background"] if "Underpaint" in extra else [*extra, "Underpaint", "Background"]
    assert [row["name"] for row in top] == expected
    group = next(row for row in top if row["name"] == "Underpaint")
    assert group["group"] and "underpaint-group" in group["parasites"]
    results = [row for row in layers if row["parent"] == "Underpaint"]
    assert [row["name"] for row in results] == names
    crop = _expected_region(selection, 0 if fill else PADDING)
    for row in results:
        assert (row["x"], row["y"], row["width"], row["height"]) == (crop.x, crop.y, crop.width, crop.height)
        stored = json.loads(row["parasites"]["underpaint-params"])
        assert stored["params"]["steps"] == STEPS and stored["params"]["seed"] == 7
        assert stored["region"][:2] == [row["x"], row["y"]] or fill
        pixels = _rgba(out, row["pixels"], row["width"], row["height"])
        under = selection[row["y"] : row["y"] + row["height"], row["x"] : row["x"] + row["width"]]
        if fill:
            assert row["mask"], "a picture filling the selection is masked with it"
            assert np.array_equal(_gray(out, row["mask_pixels"], row["width"], row["height"]), under)
        else:
            assert not row["mask"]
            assert not pixels[..., 3][under == 0].any(), "result alpha must be 0 outside the selection"
            assert pixels[..., 3][under == 255].min() > 0
    background = next(row for row in top if row["name"] == "Background")
    assert (background["x"], background["y"], background["width"], background["height"]) == (0, 0, w, h)
    assert np.array_equal(_rgba(out, background["pixels"], w, h), original)
    composite = _rgba(out, image["composite"], w, h)
    outside = selection == 0
    assert np.array_equal(composite[outside], original[outside])
    inside = selection == 255
    assert (composite[inside][:, :3] != original[inside][:, :3]).any(), "nothing was painted"
    return results


SELECTED = {"image": "Background", "mask": "the selection"}
SOURCES = {  # the `images` of each mode's parasite (Refine is called with the visible image)
    "inpaint": SELECTED,
    "refine": {"image": "the visible image", "mask": "the selection"},
    "controlnet": {**SELECTED, "control": "control"},
    "instruct": SELECTED,
    "generate": {},
}


@pytest.mark.parametrize("key", ["inpaint", "refine", "controlnet", "instruct", "generate"])
def test_gimp_mode_adds_layers_and_keeps_the_rest(gimp_modes: dict[str, Any], key: str) -> None:
    out, entry = gimp_modes["out"], gimp_modes["calls"][key]
    mode = modes.mode_by_key(key)
    names = [f"{mode.title} seed {7 + i} (tiny)" for i in range(2 if key == "inpaint" else 1)]
    extra = ["control"] if key == "controlnet" else []
    try:
        results = _check_added_layers(out, entry, key, names, extra, fill=key == "generate")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{gimp_modes['log']}") from exc
    for i, row in enumerate(results):
        stored = json.loads(row["parasites"]["underpaint-params"])
        assert stored["op"] == mode.op and stored["seed"] == 7 + i and stored["model"] == "tiny"
        assert stored["not_sent"] == []
        assert stored["images"] == SOURCES[key], "where each input image came from"
    if key == "controlnet":
        control = next(row for row in entry["image"]["layers"] if row["name"] == "control")
        h, w = _original().shape[:2]
        sketch = np.asarray(_sketch().convert("RGBA"))
        assert np.array_equal(_rgba(out, control["pixels"], w, h), sketch)


def test_gimp_ranked_variations_best_on_top(gimp: GimpEnv, daemon) -> None:
    """Rank by CLIP on `tiny`, 3 variations: the layers come best first, only the best one visible,
    each storing (and naming) its own score in descending order as the daemon sent them; the user's
    pixels stay as they were."""
    inpaint = modes.mode_by_key("inpaint")
    args = {"endpoint": daemon.endpoint, "steps": STEPS, "seed": 7, "prompt": "a fox head"}
    call = {"name": "ranked", "procedure": inpaint.procedure, "selection": SELECTION}
    dialog = {**call, "name": "ranked-dialog", "interactive": True, "args": {**args, "variations": 3}}
    calls = [{**call, "args": {**args, "variations": 3, "rank": True}}, dialog]
    # the dialog: the "Rank by CLIP" box shows (tiny ranks, 3 variations); alt+k ticks it, alt+o is OK
    home = gimp.work / "home-ranked"  # the dialog's remembered values stay out of the other tests
    shutil.copytree(gimp.home, home, symlinks=True)
    alone = replace(gimp, home=home)
    result = alone.batch("ranked", calls, dialogs={"Underpaint Inpaint": "alt+k alt+o"})
    out, entry = result["out"], result["calls"]["ranked"]
    ticked = result["calls"]["ranked-dialog"]
    assert ticked["success"], f"{ticked['error']}\n{result['log']}"
    names = [row["name"] for row in ticked["image"]["layers"] if row["parent"] == "Underpaint"]
    assert len(names) == 3 and all(re.search(r" \(tiny\) score -?\d\.\d\d$", n) for n in names), names
    shot = json.loads((out / "dialogs.json").read_text())["dialogs"][0]
    assert shot["geometry"][3] <= 900, shot  # the dialog with the box still fits a laptop screen
    assert entry["success"], f"{entry['error']}\n{result['log']}"
    rows = [row for row in entry["image"]["layers"] if row["parent"] == "Underpaint"]
    stored = [json.loads(row["parasites"]["underpaint-params"]) for row in rows]
    scores = [s["score"] for s in stored]
    assert len(rows) == 3 and all(isinstance(x, float) and -1 <= x <= 1 for x in scores), stored
    assert scores == sorted(scores, reverse=True), "best first, as the daemon ranked them"
    assert sorted(s["seed"] for s in stored) == [7, 8, 9], "each picture keeps the seed that made it"
    assert all(s["params"]["rank"] is True and s["params"]["variations"] == 3 for s in stored)
    for row, s in zip(rows, stored, strict=True):
        assert row["name"] == f"Inpaint seed {s['seed']} (tiny) score {s['score']:.2f}", row["name"]
    visible = [row for row in rows if row["visible"]]
    shown = [(row["name"], row["visible"]) for row in rows]
    assert visible == [rows[0]] and stored[0]["score"] == max(scores), shown
    _check_added_layers(out, entry, "ranked", [row["name"] for row in rows], [])  # the user's pixels
    h, w = _original().shape[:2]
    best = _rgba(out, rows[0]["pixels"], rows[0]["width"], rows[0]["height"])
    x, y = rows[0]["x"], rows[0]["y"]
    top = _rgba(out, entry["image"]["composite"], w, h)[y : y + best.shape[0], x : x + best.shape[1]]
    solid = best[..., 3] == 255
    assert np.array_equal(top[solid], best[solid]), "what shows is the best picture, not a hidden one"


def test_gimp_grayscale_image(gimp_modes: dict[str, Any]) -> None:
    """A grayscale image gets a grayscale result layer, the rest of the picture untouched."""
    out, entry = gimp_modes["out"], gimp_modes["calls"]["inpaint-gray"]
    assert entry["success"], f"{entry['error']}\n{gimp_modes['log']}"
    h, w = _original().shape[:2]
    layers = {row["name"]: row for row in entry["image"]["layers"]}
    assert list(layers) == ["Underpaint", "Inpaint seed 7 (tiny)", "Background"]
    selection = _gray(out, "inpaint-gray-selection.y", w, h)
    crop = _expected_region(selection, PADDING)
    row = layers["Inpaint seed 7 (tiny)"]
    assert (row["x"], row["y"], row["width"], row["height"]) == (crop.x, crop.y, crop.width, crop.height)
    result = _rgba(out, row["pixels"], row["width"], row["height"])
    assert np.array_equal(result[..., 0], result[..., 1]), "a gray layer reads back with R = G"
    background = _rgba(out, layers["Background"]["pixels"], w, h)
    composite = _rgba(out, entry["image"]["composite"], w, h)
    outside = selection == 0
    assert np.array_equal(composite[outside], background[outside])


def test_gimp_upscale_makes_a_new_image(gimp_modes: dict[str, Any]) -> None:
    out, entry = gimp_modes["out"], gimp_modes["calls"]["upscale"]
    assert entry["success"], f"{entry['error']}\n{gimp_modes['log']}"
    h, w = _original().shape[:2]
    layers = entry["image"]["layers"]
    assert [row["name"] for row in layers] == ["Background"], "the source image must stay untouched"
    assert np.array_equal(_rgba(out, layers[0]["pixels"], w, h), _original())
    new = entry["new_image"]
    _, _, rw, rh = UPSCALE_RECT
    assert (new["width"], new["height"]) == (4 * rw, 4 * rh)
    (row,) = new["layers"]
    assert row["name"] == "Upscale seed 7 (tiny)" and (row["x"], row["y"]) == (0, 0)
    stored = json.loads(row["parasites"]["underpaint-params"])
    assert stored["op"] == "upscale" and stored["params"]["factor"] == 4


# -- other model families in real GIMP ---------------------------------------------------------------


@pytest.fixture(scope="module")
def gimp_families(gimp: GimpEnv, daemon) -> dict[str, Any]:
    """The non-SD1.5 families end to end in one gimp-console session: SDXL inpaint, Kandinsky Mix
    from two layers, Compare, DDPM (no prompt sent), Variation, Depth with a depth layer, and a mode
    the picked preset cannot run."""
    common = {"endpoint": daemon.endpoint, "steps": STEPS, "seed": 7}
    sketch = {"picture": gimp.inside(gimp.work / "sketch.png"), "name": "sketch", "hidden": True}
    depth = {"picture": gimp.inside(gimp.work / "depth.png"), "name": "depth", "hidden": True}
    mix = modes.mode_by_key("mix").procedure
    calls = [
        {"name": "sdxl", "procedure": modes.mode_by_key("inpaint").procedure, "selection": SELECTION,
         "args": {**common, "model": "tiny-sdxl", "prompt": "a fox head", "family-settings": "refine=0.5"}},
        {"name": "mix", "procedure": mix, "selection": SELECTION, "layers": [sketch], "drawables": "reversed",
         "args": {**common, "model": "tiny-kandinsky22", "prompt": "a tiger", "weights": "1, 0.5, 2"}},
        {"name": "compare", "procedure": modes.mode_by_key("compare").procedure, "selection": SELECTION,
         "args": {**common, "models": COMPARED, "base-mode": "generate", "prompt": "a cat"}},
        {"name": "ddpm", "procedure": modes.mode_by_key("generate").procedure, "selection": SELECTION,
         "args": {**common, "model": "tiny-ddpm", "prompt": "a cat"}},
        {"name": "variation", "procedure": modes.mode_by_key("variation").procedure, "selection": SELECTION,
         "args": {**common, "model": "tiny-sd-variation"}},
        {"name": "depth", "procedure": modes.mode_by_key("depth").procedure, "selection": SELECTION,
         "layers": [depth],
         "args": {**common, "model": "tiny-sd2", "prompt": "a cat", "depth-layer": {"layer": "depth"}}},
        {"name": "cannot", "procedure": modes.mode_by_key("inpaint").procedure, "selection": SELECTION,
         "args": {**common, "model": "tiny-sd-variation", "prompt": "a fox"}},
    ]  # fmt: skip
    return gimp.batch("families", calls)


COMPARED = ["tiny", "tiny-sdxl", "tiny-ddpm"]


def _family_call(gimp_families: dict[str, Any], call: str) -> tuple[Path, dict[str, Any]]:
    entry = gimp_families["calls"][call]
    assert entry["success"], f"{entry['error']}\n{gimp_families['log']}"
    return gimp_families["out"], entry


@pytest.mark.parametrize(
    ("call", "model", "title"),
    [
        ("sdxl", "tiny-sdxl", "Inpaint"),
        ("variation", "tiny-sd-variation", "Variation"),
        ("depth", "tiny-sd2", "Depth"),
    ],
)
def test_gimp_other_families_patch_the_selection(
    gimp_families: dict[str, Any], call: str, model: str, title: str
) -> None:
    """SDXL, SD image variation and SD 2 depth-to-image paste back into the selection like SD 1.5."""
    out, entry = _family_call(gimp_families, call)
    extra = ["depth"] if call == "depth" else []
    (row,) = _check_added_layers(out, entry, call, [f"{title} seed 7 ({model})"], extra)
    stored = json.loads(row["parasites"]["underpaint-params"])
    assert stored["model"] == model and stored["op"] == modes.mode_by_key(title.lower()).op
    sources = {"image": "Background", "mask": "the selection"}
    assert stored["images"] == ({**sources, "depth": "depth"} if call == "depth" else sources)
    if call == "sdxl":
        assert stored["params"]["refine"] == 0.5, "a family setting reaches SDXL's refiner"
    if call == "variation":
        assert "prompt" not in stored["params"], "Variation takes no prompt"


def test_gimp_kandinsky_mix_from_layers(gimp_families: dict[str, Any]) -> None:
    """Mix blends the selected layers (top to bottom) and the prompt with their weights into the
    selection; the layers themselves stay as they were."""
    out, entry = _family_call(gimp_families, "mix")
    above = ["Underpaint", "sketch"]  # the group goes above the topmost selected layer
    (row,) = _check_added_layers(out, entry, "mix", ["Mix seed 7 (tiny-kandinsky22)"], above, fill=True)
    stored = json.loads(row["parasites"]["underpaint-params"])
    assert stored["model"] == "tiny-kandinsky22" and stored["op"] == "mix"
    assert stored["images"] == {"layer1": "sketch", "layer2": "Background"}, "top to bottom"
    items = stored["params"]["items"]
    assert [(i["image"], i["prompt"], i["weight"]) for i in items] == [
        ("layer1", None, 1.0),
        ("layer2", None, 0.5),
        (None, "a tiger", 2.0),
    ]
    sketch = next(r for r in entry["image"]["layers"] if r["name"] == "sketch")
    h, w = _original().shape[:2]
    assert np.array_equal(_rgba(out, sketch["pixels"], w, h), np.asarray(_sketch().convert("RGBA")))


def test_gimp_compare_adds_one_layer_per_preset(gimp_families: dict[str, Any]) -> None:
    """Compare runs Generate with the same seed on every preset: one layer each, named with the preset
    and its seconds, storing what that preset ran and what it ignored."""
    out, entry = _family_call(gimp_families, "compare")
    rows = [r for r in entry["image"]["layers"] if r["parent"] == "Underpaint"]
    names = [r["name"] for r in rows]
    assert len(names) == len(COMPARED), names
    for model, name in zip(COMPARED, names, strict=True):
        assert re.fullmatch(rf"{model} \d+\.\d+ s \(Generate seed 7\)", name), name
    _check_added_layers(out, entry, "compare", names, [], fill=True)
    stored = {
        model: json.loads(r["parasites"]["underpaint-params"])
        for model, r in zip(COMPARED, rows, strict=True)
    }
    for model, data in stored.items():
        assert data["model"] == model and data["op"] == "txt2img" and data["compared"] == COMPARED
        assert data["seconds"]["run"] > 0 and data["params"]["seed"] == 7
    assert "prompt" in stored["tiny-ddpm"]["ignored"] and "prompt" not in stored["tiny-ddpm"]["params"]
    assert stored["tiny-sdxl"]["params"]["prompt"] == "a cat"


def test_gimp_ddpm_gets_no_prompt(gimp_families: dict[str, Any]) -> None:
    """An unconditional DDPM preset is sent only what its op spec lists: the prompt stays home (the
    daemon would refuse it) and the layer says it was not sent."""
    out, entry = _family_call(gimp_families, "ddpm")
    (row,) = _check_added_layers(out, entry, "ddpm", ["Generate seed 7 (tiny-ddpm)"], [], fill=True)
    stored = json.loads(row["parasites"]["underpaint-params"])
    assert stored["model"] == "tiny-ddpm" and "prompt" not in stored["params"]
    assert "prompt" in stored["not_sent"]


def test_gimp_preset_that_cannot_run_the_mode(gimp_families: dict[str, Any]) -> None:
    entry = gimp_families["calls"]["cannot"]
    assert not entry["success"] and entry["status"] == "execution-error", entry
    assert "'tiny-sd-variation'" in entry["error"] and "cannot run 'inpaint'" in entry["error"]
    assert re.search(r"presets that can: .*\btiny-sdxl\b", entry["error"]), entry["error"]
    assert [row["name"] for row in entry["image"]["layers"]] == ["Background"]


def test_gimp_error_paths(gimp: GimpEnv, other_protocol_daemon: str) -> None:
    """Daemon down, other protocol version, no selection, a dialog without a display: a clear error,
    no layer added, no hang."""
    base = {"prompt": "a fox", "steps": STEPS, "seed": 7}
    calls = [
        {"name": "down", "procedure": "plug-in-underpaint-inpaint", "selection": SELECTION,
         "args": {**base, "endpoint": "tcp://127.0.0.1:9"}},
        {"name": "mismatch", "procedure": "plug-in-underpaint-refine", "selection": SELECTION,
         "args": {**base, "endpoint": other_protocol_daemon}},
        {"name": "noselection", "procedure": "plug-in-underpaint-inpaint", "selection": None,
         "args": {**base, "endpoint": "tcp://127.0.0.1:9"}},
        {"name": "nodisplay", "procedure": "plug-in-underpaint-refine", "selection": SELECTION,
         "interactive": True, "args": {**base, "endpoint": "tcp://127.0.0.1:9"}},
    ]  # fmt: skip
    result = gimp.batch("errors", calls)
    expected = {
        "down": "not answering at tcp://127.0.0.1:9",
        "mismatch": "speaks protocol version(s) 99, this plug-in speaks 1",
        "noselection": "Inpaint needs a selection",
        "nodisplay": "cannot open its dialog: there is no display",
    }
    h, w = _original().shape[:2]
    for name, text in expected.items():
        entry = result["calls"][name]
        assert not entry["success"] and entry["status"] == "execution-error", entry
        assert text in entry["error"], entry["error"]
        assert entry["seconds"] < 15, entry
        layers = entry["image"]["layers"]
        assert [row["name"] for row in layers] == ["Background"], layers
        assert np.array_equal(_rgba(result["out"], layers[0]["pixels"], w, h), _original())


def test_gimp_missing_pyzmq_is_explained(gimp: GimpEnv) -> None:
    """Without pyzmq in GIMP's Python the procedures still register and say how to install it."""
    fake = gimp.work / "no-zmq"
    fake.mkdir()
    (fake / "zmq.py").write_text('raise ModuleNotFoundError("No module named \'zmq\'", name="zmq")\n')
    calls = [
        {"name": "nozmq", "procedure": "plug-in-underpaint-inpaint", "selection": SELECTION,
         "args": {"prompt": "a fox", "endpoint": "tcp://127.0.0.1:9"}},
    ]  # fmt: skip
    result = gimp.batch("nozmq", calls, {"PYTHONPATH": gimp.inside(fake)})
    entry = result["calls"]["nozmq"]
    assert not entry["success"], entry
    assert "'zmq' is missing from GIMP's Python" in entry["error"], entry["error"]
    assert "apt install python3-zmq python3-msgpack" in entry["error"]
    assert [row["name"] for row in entry["image"]["layers"]] == ["Background"]


SCRIPT_FU = """
(let* ((img (car (gimp-file-load RUN-NONINTERACTIVE "{picture}")))
       (layer (vector-ref (car (gimp-image-get-layers img)) 0)))
  (gimp-image-select-ellipse img CHANNEL-OP-REPLACE {x} {y} {w} {h})
  (plug-in-underpaint-inpaint #:run-mode RUN-NONINTERACTIVE #:image img #:drawables (vector layer)
                              #:prompt "a fox" #:steps {steps} #:seed 5 #:endpoint "{endpoint}")
  (let* ((top (car (gimp-image-get-layers img)))
         (group (vector-ref top 0))
         (child (vector-ref (car (gimp-item-get-children group)) 0)))
    (gimp-message (string-append "UNDERPAINT-SF " (car (gimp-item-get-name group)) "/"
                                 (car (gimp-item-get-name child))
                                 " top=" (number->string (vector-length top)))))
  (gimp-image-delete img))
"""


def test_gimp_script_fu_batch_call(gimp: GimpEnv, daemon) -> None:
    """Script-Fu batch users call the procedure by name with keyword arguments, no dialog."""
    out = gimp.work / "script-fu"
    out.mkdir()
    x, y, w, h = ELLIPSE
    code = SCRIPT_FU.format(
        picture=gimp.inside(gimp.work / "chelsea.png"),
        x=x,
        y=y,
        w=w,
        h=h,
        steps=STEPS,
        endpoint=daemon.endpoint,
    )
    (out / "call.scm").write_text(code)
    argv = ["gimp-console-3.0", "-i", "--batch-interpreter=plug-in-script-fu-eval"]
    argv += ["-b", f'(load "{gimp.inside(out / "call.scm")}")', "--quit"]
    run, where = gimp.run(argv, {}, out)
    assert "UNDERPAINT-SF Underpaint/Inpaint seed 5 (tiny) top=2" in run.output, where


def test_gimp_dialogs(gimp: GimpEnv, daemon) -> None:
    """Interactive mode: the procedure dialog opens with the daemon's presets; OK runs the job, Cancel
    adds nothing; OK stays disabled while the picked preset cannot run the mode (Return does nothing,
    Escape then cancels); Compare's ticked presets each add a layer; with the daemon down the dialog
    still opens (and says so) and the run reports it. Every dialog fits the screen (photographed)."""
    base = {"endpoint": daemon.endpoint, "steps": STEPS, "seed": 7}
    calls = [
        {"name": "dialog-ok", "procedure": "plug-in-underpaint-inpaint", "selection": SELECTION,
         "interactive": True, "args": {**base, "prompt": "a fox"}},
        {"name": "dialog-cancel", "procedure": "plug-in-underpaint-refine", "selection": SELECTION,
         "interactive": True, "args": {**base, "prompt": "a fox"}},
        {"name": "dialog-upscale", "procedure": "plug-in-underpaint-upscale", "returns_image": True,
         "selection": ["rect", *UPSCALE_RECT, 0], "interactive": True, "args": {**base, "prompt": "a cat"}},
        {"name": "dialog-cannot", "procedure": "plug-in-underpaint-variation", "selection": SELECTION,
         "interactive": True, "args": {**base, "model": ""}},
        {"name": "dialog-compare", "procedure": "plug-in-underpaint-compare", "selection": SELECTION,
         "interactive": True, "args": {**base, "models": ["tiny", "tiny-sdxl"], "base-mode": "inpaint"}},
        {"name": "dialog-down", "procedure": "plug-in-underpaint-generate", "selection": SELECTION,
         "interactive": True, "args": {**base, "endpoint": "tcp://127.0.0.1:9"}},
    ]  # fmt: skip
    answers = {
        "Underpaint Inpaint": "alt+m Return",  # Return in the preset picker's entry runs it too
        "Underpaint Refine": "alt+c",
        "Underpaint Upscale": "Return",
        "Underpaint Variation": "Return Escape",  # the daemon's default, tiny, cannot run Variation
        "Underpaint Compare": "Return",
        "Underpaint Generate": "Return",
    }
    result = gimp.batch("dialogs", calls, dialogs=answers)
    out = result["out"]
    answered = (out / "dialogs.txt").read_text().splitlines()
    assert answered == [f"{title}\t{key}" for title, key in answers.items()], result["log"]
    ok, cancel, upscale, cannot, compare, down = (result["calls"][c["name"]] for c in calls)
    assert ok["success"], f"{ok['error']}\n{result['log']}"
    assert [row["name"] for row in ok["image"]["layers"]] == [
        "Underpaint",
        "Inpaint seed 7 (tiny)",
        "Background",
    ]
    assert cancel["status"] == "cancel", cancel
    assert [row["name"] for row in cancel["image"]["layers"]] == ["Background"]
    assert upscale["success"], f"{upscale['error']}\n{result['log']}"
    assert (upscale["new_image"]["width"], upscale["new_image"]["height"]) == (160, 120)
    assert cannot["status"] == "cancel", cannot
    assert [row["name"] for row in cannot["image"]["layers"]] == ["Background"]
    assert compare["success"], f"{compare['error']}\n{result['log']}"
    names = [row["name"] for row in compare["image"]["layers"] if row["parent"] == "Underpaint"]
    assert [name.split()[0] for name in names] == ["tiny", "tiny-sdxl"], names
    assert all(name.endswith("(Inpaint seed 7)") for name in names), names
    assert not down["success"] and "not answering at tcp://127.0.0.1:9" in down["error"], down
    shots = json.loads((out / "dialogs.json").read_text())
    screen_w, screen_h = shots["screen"]
    assert [shot["title"] for shot in shots["dialogs"]] == list(answers)
    for shot in shots["dialogs"]:
        x, y, w, h = shot["geometry"]
        assert w <= screen_w and h <= min(screen_h, 900), shot  # fits a laptop screen too
        assert Image.open(out / shot["png"]).size == (w, h)


# -- issue 10 and 13: stacking, big canvases, transparency, channels, indexed, seeds, progress, prompts


def test_seeds_stay_typeable() -> None:
    """Every layer's seed (seed + i) is one GIMP's Seed field takes back (at most 2^31 - 1): random
    seeds are drawn below that, and a seed too near the top is refused, naming the largest it takes."""
    inpaint = modes.mode_by_key("inpaint")
    pixels = _crop_pixels(inpaint)
    drawn = {request.build_request(inpaint, _defaults(inpaint, variations=8), pixels).params["seed"]
             for _ in range(400)}  # fmt: skip
    assert len(drawn) > 390 and max(drawn) + 7 <= modes.MAX_INT and min(drawn) >= 0
    assert max(drawn) > 2**30, "drawn over the whole range GIMP takes"
    top = request.build_request(inpaint, _defaults(inpaint, seed=modes.MAX_INT - 1, variations=2), pixels)
    assert top.params["seed"] == modes.MAX_INT - 1
    with pytest.raises(request.UserError, match=r"seeds up to 2147483648, .* at most 2147483646"):
        request.build_request(inpaint, _defaults(inpaint, seed=modes.MAX_INT, variations=2), pixels)


def test_progress_counts_the_steps_asked_for(daemon) -> None:
    """The progress text counts the steps the user asked for after strength (10 steps at 0.5, two
    variations: 10), not the daemon's model calls (its scheduler makes one more per picture)."""
    refine = modes.mode_by_key("refine")
    values = _defaults(refine, steps=10, strength=0.5, variations=2, seed=3, prompt="a cat")
    reports: list[tuple[float | None, str]] = []
    with job.Session(daemon.endpoint, protocol=_protocol) as session:
        req = session.fit(request.build_request(refine, values, _crop_pixels(refine)))
        assert steps.asked_steps(req, session.welcome) == 10
        session.run(req, lambda fraction, text: reports.append((fraction, text)))
    texts = [text for fraction, text in reports if text.startswith("Underpaint: step")]
    assert texts and all(text.endswith(" of 10") for text in texts), texts
    shown = [int(text.split()[2]) for text in texts]
    assert shown == sorted(shown) and shown[-1] == 10 and shown[0] >= 1, shown
    assert len(shown) > 10, "the daemon reported more calls than steps, and they were not shown as steps"
    counter = steps.StepCount(10)
    texts = [counter.update(step, 11 if step <= 6 else 12)[1] for step in range(1, 13)]  # 2 x (5 + 1) calls
    assert texts[-1] == "Underpaint: step 10 of 10" and all(text.endswith(" of 10") for text in texts)


def test_prompt_syntax_error_names_the_position(daemon) -> None:
    """A prompt the daemon cannot read (`invalid_value` on params.prompt with `position`) becomes a
    message naming the field and the character, showing the text around it."""
    generate = modes.mode_by_key("generate")
    values = _defaults(generate, steps=2, seed=1, prompt="a (red fox in the snow", endpoint=daemon.endpoint)
    with job.Session(daemon.endpoint, protocol=_protocol) as session:
        req = session.fit(request.build_request(generate, values, _crop_pixels(generate), 64))
        with pytest.raises(prompt_errors.PromptError) as caught:
            session.run(req)
        weighted = {**values, "prompt": "a fox", "negative-prompt": "blurry, (text:4)"}
        with pytest.raises(prompt_errors.PromptError) as negative:
            session.run(session.fit(request.build_request(generate, weighted, _crop_pixels(generate), 64)))
    error = caught.value
    assert error.argument == "prompt" and error.position == 2 and error.what == "the prompt"
    assert str(error).startswith("The prompt has a syntax error at character 2 (the first character is 0)")
    assert "a ▶(red fox in the snow" in str(error) and "never closed" in str(error)
    assert negative.value.argument == "negative-prompt" and "out of range" in str(negative.value)
    assert "blurry, (text:▶4)" in str(negative.value)


def test_gimp_painting_calls(gimp: GimpEnv, daemon) -> None:  # noqa: C901 - one GIMP session, many checks
    """Issue 10's GIMP items and issue 13's prompts in one gimp-console session (each checked below on
    the saved .xcf): repeated runs stack newest on top in one group; Generate on canvases beyond
    2048 px keeps their shape; transparent pixels are composited, never sent with the colour they
    hide; channels and the selection mask are refused, a layer mask stands for its layer; an indexed
    image gets its results in an RGB copy; seeds stay typeable; weighted prompts reach the daemon."""
    common = {"endpoint": daemon.endpoint, "steps": STEPS, "seed": 7}
    fox = {**common, "prompt": "a fox head"}
    inpaint, refine = modes.mode_by_key("inpaint").procedure, modes.mode_by_key("refine").procedure
    generate = modes.mode_by_key("generate").procedure
    loud = {"picture": gimp.inside(gimp.work / "loud.png"), "name": "loud"}
    weighted = "a (red:1.3) fox, (background:0.7), \\(literally\\)"
    calls = [
        {"name": "stack", "procedure": inpaint, "selection": SELECTION, "args": fox,
         "then": [{"args": {"seed": 20, "variations": 2}}, {"args": {"seed": 30}, "drawables": "selected"},
                  {"args": {"seed": 40}, "drawables": "named:Inpaint seed 7 (tiny)"}]},
        {"name": "wide", "procedure": generate, "picture": gimp.inside(gimp.work / "wide.png"),
         "selection": None, "args": {**common, "prompt": "a long shore"}},
        {"name": "tall", "procedure": generate, "picture": gimp.inside(gimp.work / "tall.png"),
         "selection": ["rect", *TALL_SELECTION, 0], "args": {**common, "prompt": "a tower"}},
        {"name": "transparent", "procedure": refine, "selection": SELECTION, "layers": [loud],
         "drawables": "top", "args": {**fox, "strength": 0.7}},
        {"name": "alone", "procedure": refine, "selection": SELECTION, "layers": [loud], "hide_picture": True,
         "drawables": "top", "args": {**fox, "strength": 0.7}},
        {"name": "channel", "procedure": refine, "selection": SELECTION, "drawables": "channel", "args": fox},
        {"name": "selection-mask", "procedure": refine, "selection": SELECTION, "drawables": "selection",
         "args": fox},
        {"name": "layer-mask", "procedure": refine, "selection": SELECTION, "drawables": "mask", "args": fox},
        {"name": "indexed", "procedure": inpaint, "selection": SELECTION, "indexed": True,
         "returns_image": True, "args": fox},
        {"name": "seed-top", "procedure": inpaint, "selection": SELECTION,
         "args": {**fox, "seed": modes.MAX_INT - 1, "variations": 2}},
        {"name": "seed-over", "procedure": inpaint, "selection": SELECTION,
         "args": {**fox, "seed": modes.MAX_INT, "variations": 2}},
        {"name": "seed-random", "procedure": inpaint, "selection": SELECTION,
         "args": {**fox, "seed": -1, "variations": 3}},
        {"name": "weighted", "procedure": inpaint, "selection": SELECTION,
         "args": {**fox, "prompt": weighted}},
        {"name": "syntax", "procedure": inpaint, "selection": SELECTION,
         "args": {**fox, "prompt": "a fox, (red:1.3 hair"}},
    ]  # fmt: skip
    result = gimp.batch("painting", calls)
    out, got = result["out"], result["calls"]
    for name in (
        "stack",
        "wide",
        "tall",
        "transparent",
        "alone",
        "layer-mask",
        "indexed",
        "seed-top",
        "weighted",
    ):
        assert got[name]["success"], f"{name}: {got[name]['error']}\n{result['log']}"
    _check_stacking(out, got["stack"])
    for name in CANVASES:
        _check_canvas(out, got[name], name, daemon)
    _check_transparent(out, got["transparent"], "transparent", daemon, below=True)
    _check_transparent(out, got["alone"], "alone", daemon, below=False)
    _check_not_layers(out, got)
    _check_indexed(out, got["indexed"])
    _check_seeds(got)
    (row,) = [r for r in got["weighted"]["image"]["layers"] if r["parent"] == "Underpaint"]
    stored = json.loads(row["parasites"]["underpaint-params"])
    assert stored["params"]["prompt"] == weighted, "the weighted prompt reached the daemon as typed"
    syntax = got["syntax"]
    assert not syntax["success"] and syntax["status"] == "execution-error", syntax
    assert "The prompt has a syntax error at character 7" in syntax["error"], syntax["error"]
    assert "a fox, ▶(red:1.3 hair" in syntax["error"] and "never closed" in syntax["error"]
    assert [r["name"] for r in syntax["image"]["layers"]] == ["Background"]


TALL_SELECTION = (100, 150, 400, 1900)  # x, y, w, h on the tall canvas


def _results(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for row in entry["image"]["layers"] if row["parent"] == "Underpaint"]


def _check_stacking(out: Path, entry: dict[str, Any]) -> None:
    """Four runs on one image (the picture's layer twice, then the newest result, then the oldest): one
    group, the newest run on top whichever layer was active, the picture untouched."""
    assert [run["success"] for run in entry["then"]] == [True, True, True], entry["then"]
    assert entry["then"][1]["drawables"] == ["Inpaint seed 20 (tiny)"], "GIMP selects the newest result"
    top = [row["name"] for row in entry["image"]["layers"] if row["parent"] is None]
    assert top == ["Underpaint", "Background"], "a second group was made"
    names = [row["name"] for row in _results(entry)]
    assert names == [f"Inpaint seed {seed} (tiny)" for seed in (40, 30, 20, 21, 7)], names
    h, w = _original().shape[:2]
    background = next(row for row in entry["image"]["layers"] if row["name"] == "Background")
    assert np.array_equal(_rgba(out, background["pixels"], w, h), _original())


def _render(daemon, op: str, params: dict[str, Any], images: dict[str, Any]) -> dict[str, Any]:
    """Run a stored layer's parameters again on the daemon (bit-identical for the same inputs)."""
    from underpaint.protocol import Client

    with Client(daemon.endpoint, timeout=120) as client:
        client.hello()
        return client.run(op, params, images)["images"][0]


def _check_canvas(out: Path, entry: dict[str, Any], name: str, daemon) -> None:
    """Generate on a canvas beyond 2048 px: the model paints at its own size, and the layer is that
    picture scaled by one factor to cover the target and cropped (what a stretch would not match)."""
    width, height = CANVASES[name]
    image = entry["image"]
    assert (image["width"], image["height"]) == (width, height)
    (row,) = _results(entry)
    target = Rect(0, 0, width, height) if name == "wide" else Rect(*TALL_SELECTION)
    assert (row["x"], row["y"], row["width"], row["height"]) == (
        target.x,
        target.y,
        target.width,
        target.height,
    )
    assert row["mask"] == (name == "tall"), "masked by the selection only when there is one"
    stored = json.loads(row["parasites"]["underpaint-params"])
    params = stored["params"]
    assert (params["width"], params["height"]) == (64, 64), "the tiny preset's native size (and minimum)"
    painted = _render(daemon, "txt2img", params, {})
    small = Image.frombytes("RGBA", (painted["width"], painted["height"]), bytes(painted["data"]))
    sw, sh, left, top = region.cover(small.width, small.height, target)
    assert max(sw / small.width, sh / small.height) / min(sw / small.width, sh / small.height) < 1.01
    layer = _rgba(out, row["pixels"], row["width"], row["height"]).astype(float)[..., :3]
    kept = np.asarray(small.resize((sw, sh), Image.BICUBIC), float)[
        top : top + target.height, left : left + target.width, :3
    ]
    stretched = np.asarray(small.resize((target.width, target.height), Image.BICUBIC), float)[..., :3]
    kept_error, stretch_error = np.abs(layer - kept).mean(), np.abs(layer - stretched).mean()
    assert kept_error < 4 and stretch_error > 3 * kept_error, (kept_error, stretch_error)
    background = next(r for r in image["layers"] if r["name"] == "Background")
    assert np.array_equal(
        _rgba(out, background["pixels"], width, height)[..., :3], np.asarray(_canvas((width, height)))
    )


def _check_transparent(out: Path, entry: dict[str, Any], call: str, daemon, below: bool) -> None:
    """Refine on a layer whose transparent pixels hide magenta: the model got the layer over the picture
    (`below`) or over white, never the magenta; proved by rendering the stored parameters again with
    that composite (same pixels, bit for bit) and with the raw layer (other pixels)."""
    (row,) = _results(entry)
    stored = json.loads(row["parasites"]["underpaint-params"])
    assert stored["images"] == {"image": "loud", "mask": "the selection"}
    h, w = _original().shape[:2]
    loud = next(r for r in entry["image"]["layers"] if r["name"] == "loud")
    raw = _rgba(out, loud["pixels"], w, h)
    assert (raw[..., 3] == 0).any() and (raw[raw[..., 3] == 0][:, :3] == (255, 0, 255)).all(), "magenta hides"
    under = _original() if below else np.full_like(_original(), 255)
    seen = np.where(raw[..., 3:] == 255, raw, under)
    seen[..., 3] = 255
    x, y, rw, rh = stored["region"]
    selection = _gray(out, f"{call}-selection.y", w, h)
    mask = {
        "format": "raw",
        "width": rw,
        "height": rh,
        "channels": 1,
        "data": selection[y : y + rh, x : x + rw].tobytes(),
    }

    def patch(picture: np.ndarray) -> np.ndarray:
        crop = np.ascontiguousarray(picture[y : y + rh, x : x + rw])
        image = {"format": "raw", "width": rw, "height": rh, "channels": 4, "data": crop.tobytes()}
        done = _render(daemon, "sdedit", stored["params"], {"image": image, "mask": mask})
        return np.frombuffer(bytes(done["data"]), np.uint8).reshape(done["height"], done["width"], 4)

    layer = _rgba(out, row["pixels"], row["width"], row["height"])
    shown = layer[..., 3] > 0
    assert np.array_equal(patch(seen)[shown], layer[shown]), "the model saw what the painter sees"
    assert not np.array_equal(patch(raw)[shown], layer[shown]), "the hidden magenta would have shown"


def _check_not_layers(out: Path, got: dict[str, Any]) -> None:
    """A channel or the selection mask as the source: a message saying to pick a layer, nothing added;
    a layer mask: its layer is the source."""
    for name, what in (("channel", "the channel 'spot'"), ("selection-mask", "the selection mask")):
        entry = got[name]
        assert not entry["success"] and what in entry["error"], entry
        assert "Click a layer in the Layers dialog" in entry["error"]
        assert [r["name"] for r in entry["image"]["layers"]] == ["Background"]
    entry = got["layer-mask"]
    assert [r["name"] for r in entry["image"]["layers"] if r["parent"] is None] == [
        "Underpaint",
        "Background",
    ]
    (row,) = _results(entry)
    assert json.loads(row["parasites"]["underpaint-params"])["images"]["image"] == "Background"


def _check_indexed(out: Path, entry: dict[str, Any]) -> None:
    """An indexed image is left as it was; its results are in an RGB copy, returned as new-image."""
    image, copy = entry["image"], entry["new_image"]
    assert image["base_type"] == "indexed" and [r["name"] for r in image["layers"]] == ["Background"]
    h, w = _original().shape[:2]
    before = _rgba(out, entry["before"], w, h)
    assert np.array_equal(_rgba(out, image["layers"][0]["pixels"], w, h), before)
    assert copy is not None and copy["base_type"] == "rgb"
    assert [r["name"] for r in copy["layers"]] == ["Underpaint", "Inpaint seed 7 (tiny)", "Background"]
    assert np.array_equal(_rgba(out, copy["layers"][-1]["pixels"], w, h), before)


def _check_seeds(got: dict[str, Any]) -> None:
    names = [r["name"] for r in _results(got["seed-top"])]
    assert names == [f"Inpaint seed {modes.MAX_INT - 1} (tiny)", f"Inpaint seed {modes.MAX_INT} (tiny)"]
    over = got["seed-over"]
    assert not over["success"] and "at most 2147483646, or -1 for a random one" in over["error"], over
    seeds = [int(r["name"].split()[2]) for r in _results(got["seed-random"])]
    assert len(seeds) == 3 and seeds == list(range(seeds[0], seeds[0] + 3)) and seeds[-1] <= modes.MAX_INT


def test_gimp_dialogs_remember_and_point_at_prompt_errors(gimp: GimpEnv, daemon) -> None:
    """In a HOME of its own: a dialog opens with the values of the last successful run (GIMP's
    last-values mechanism; the second call's own arguments lose), and a prompt the daemon cannot read
    opens the dialog again, titled for it, with the message under the prompt (photographed)."""
    home = gimp.work / "home-remember"
    shutil.copytree(
        gimp.home / ".config" / "GIMP" / "3.0" / "plug-ins", home / ".config" / "GIMP" / "3.0" / "plug-ins"
    )
    session = replace(gimp, home=home)
    base = {"endpoint": daemon.endpoint, "steps": STEPS}
    instruct, refine = modes.mode_by_key("instruct").procedure, modes.mode_by_key("refine").procedure
    calls = [
        {"name": "remember", "procedure": instruct, "selection": SELECTION, "interactive": True,
         "args": {**base, "instruction": "make it (snowy:1.2) winter", "seed": 11, "variations": 2}},
        {"name": "recall", "procedure": instruct, "selection": SELECTION, "interactive": True,
         "args": {**base, "instruction": "", "seed": 5, "steps": 2, "variations": 1}},
        {"name": "fix-prompt", "procedure": refine, "selection": SELECTION, "interactive": True,
         "args": {**base, "seed": 7, "prompt": "a cat, (red fox"}},
    ]  # fmt: skip
    answers = {
        "Underpaint Instruct": "Return",
        "Underpaint Refine": "Return",
        "Underpaint Refine (fix the prompt)": "Escape",
    }
    result = session.batch("remember", calls, dialogs=answers)
    out, got = result["out"], result["calls"]
    answered = (out / "dialogs.txt").read_text().splitlines()
    assert answered == [
        "Underpaint Instruct\tReturn",
        "Underpaint Instruct\tReturn",
        "Underpaint Refine\tReturn",
        "Underpaint Refine (fix the prompt)\tEscape",
    ], result["log"]
    for name in ("remember", "recall"):
        assert got[name]["success"], f"{name}: {got[name]['error']}\n{result['log']}"
        rows = _results(got[name])
        assert [r["name"] for r in rows] == ["Instruct seed 11 (tiny)", "Instruct seed 12 (tiny)"], name
        stored = json.loads(rows[0]["parasites"]["underpaint-params"])
        assert (
            stored["params"]["instruction"] == "make it (snowy:1.2) winter"
            and stored["params"]["steps"] == STEPS
        )
    settings = home / ".config" / "GIMP" / "3.0" / "plug-in-settings"
    kept = [
        p for p in settings.glob("*.last") if "make it (snowy:1.2) winter" in p.read_text(errors="replace")
    ]
    assert kept, f"no last-values file in {settings}: {sorted(p.name for p in settings.glob('*'))}"
    fix = got["fix-prompt"]
    assert fix["status"] == "cancel" and [r["name"] for r in fix["image"]["layers"]] == ["Background"], fix
    shots = json.loads((out / "dialogs.json").read_text())["dialogs"]
    assert [shot["title"] for shot in shots][-2:] == [
        "Underpaint Refine",
        "Underpaint Refine (fix the prompt)",
    ]
    first, again = (Image.open(out / shot["png"]) for shot in shots[-2:])
    assert again.size[1] > first.size[1], "the message under the prompt makes the dialog taller"


# -- issue 9: a daemon lost mid-job, a dropped link, a GIMP restart, keys -----------------------------

LONG_STEPS = 12  # a job still running when the test breaks its link at its first step
LONG_TOTAL = 10  # the daemon's `total` of such a job is at least this (short test jobs: ~5)
LOST_WITHIN = 10.0  # s from the link going silent to the call's message: heartbeats (3 s) + 3 s + load
CLI = [sys.executable, "-m", "underpaint.daemon.cli"]
FETCH = "plug-in-underpaint-fetch"


@contextmanager
def on_running(
    endpoint: str, actions: list[Callable[[], object]], **keyed: Any
) -> Iterator[list[dict[str, Any]]]:
    """Run `actions` in turn, each once the daemon runs a long job (LONG_STEPS) it had not run
    before past its first step (watched through `status` from a connection of its own); yields the
    status entries, each with the wall-clock time `at` its action ran."""
    from underpaint.protocol import Client

    fired: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        with Client(endpoint, timeout=10, **keyed) as client:
            client.hello("the test's watcher")
            while len(fired) < len(actions) and not stop.is_set():
                running = [
                    entry
                    for entry in client.status(timeout=10).get("jobs") or []
                    if entry.get("state") == "running"
                    and int(entry.get("step") or 0) >= 1
                    and int(entry.get("total") or 0) >= LONG_TOTAL
                    and entry["job"] not in {f["job"] for f in fired}
                ]
                if running:
                    fired.append({**running[0], "at": time.time()})
                    actions[len(fired) - 1]()
                    continue
                time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield fired
    finally:
        stop.set()
        thread.join(15)


def _long_refine(daemon) -> tuple[request.JobRequest, np.ndarray]:
    """A Refine long enough to break its link mid-job, and its pixels on a link nobody breaks (the
    daemon's results are deterministic)."""
    from underpaint.protocol import Client

    refine = modes.mode_by_key("refine")
    values = _defaults(refine, steps=LONG_STEPS, strength=1.0, seed=21, prompt="a fox")
    req = request.build_request(refine, values, _crop_pixels(refine))
    with Client(daemon.endpoint, timeout=120) as client:
        client.hello()
        return req, pixels_of(client.run(req.op, req.params, req.images, timeout=120))


def pixels_of(result: dict[str, Any]) -> np.ndarray:
    image = result["images"][0]
    return np.frombuffer(bytes(image["data"]), np.uint8).reshape(image["height"], image["width"], 4)


def test_the_link_dropped_or_silent_mid_job(daemon) -> None:
    """Reset (RST) while the job runs: the protocol client reconnects, resumes its session and the
    wait returns the very result an unbroken link gives. Silent (a pulled cable: no RST, only
    heartbeats can tell): the wait ends with DaemonLost within seconds, naming Fetch Pending
    Results; the daemon went on, and a new connection with the session's token gets the result."""
    req, expected = _long_refine(daemon)
    with relay(daemon.endpoint) as link, on_running(daemon.endpoint, [link.cut, link.blackhole]) as fired:
        with job.Session(link.endpoint, protocol=_protocol) as session:
            result = session.run(req)
        assert fired and fired[0]["state"] == "running", "the link was cut while the job ran"
        assert link.opened(fired[0]["at"], time.time()) >= 1, "the client connected again after the cut"
        assert np.array_equal(pixels_of(result), expected)
        accepted: list[str] = []
        session = job.Session(link.endpoint, protocol=_protocol)
        token = session.token
        with session, pytest.raises(job.DaemonLost) as lost:
            session.run(req, on_accepted=lambda job_id, asked: accepted.append(job_id))
        took = time.time() - link.when("blackhole")
    assert took < LOST_WITHIN, f"the daemon was noticed lost after {took:.1f} s"
    message = str(lost.value)
    assert message.startswith(f"Lost the Underpaint daemon at {link.endpoint}"), message
    assert "Fetch Pending Results" in message and "after 2 minutes" in message, message
    with job.Session(daemon.endpoint, protocol=_protocol, session=token) as again:
        assert again.resumed and accepted[0] in again.jobs()
        assert np.array_equal(pixels_of(again.wait(job.Waiting(accepted[0]))), expected)


def test_a_link_silent_for_a_moment_is_shown_lost_then_back(daemon) -> None:
    """The link goes silent mid-job and comes back a little later (within the seconds a call waits
    for it): the progress bar says the daemon was lost, then connected again, and the call gets
    the very result an unbroken link gives."""
    req, expected = _long_refine(daemon)
    texts: list[str] = []
    lost = "Underpaint: lost the daemon at {}, reconnecting"
    with relay(daemon.endpoint) as link:
        back = threading.Timer(0.5, link.restore)  # once the call says it lost the daemon

        def report(fraction: float | None, text: str) -> None:
            texts.append(text)
            if text == lost.format(link.endpoint) and back.ident is None:  # not started yet
                back.start()

        with on_running(daemon.endpoint, [link.blackhole]) as fired:
            with job.Session(link.endpoint, protocol=_protocol) as session:
                result = session.run(req, report)
        back.join()
        assert fired and fired[0]["state"] == "running", "the link went silent while the job ran"
        assert link.opened(link.when("restore"), time.time()) >= 1, "the client connected again"
    lost = lost.format(link.endpoint)
    again = "Underpaint: connected again, the job goes on"
    assert lost in texts and again in texts, texts
    assert texts.index(lost) < texts.index(again) < texts.index("Underpaint: placing the result")
    assert np.array_equal(pixels_of(result), expected)


def test_key_settings_are_checked_before_anything_is_sent(tmp_path: Path) -> None:
    """Key paths are checked with messages naming the setting; the real keygen files pass."""
    made = subprocess.run([*CLI, "keygen", str(tmp_path), "--client", "gimp"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    server, pair = str(tmp_path / "server.key"), str(tmp_path / "gimp.key_secret")
    assert keys.KeyFiles(server, pair).checked() == keys.KeyFiles(server, pair)
    assert not keys.KeyFiles.from_values({"server-key": "  ", "client-key": ""}).used
    cases = [
        (keys.KeyFiles(server, ""), "Client key is empty"),
        (keys.KeyFiles("", pair), "Server key (the daemon's server.key) is empty"),
        (keys.KeyFiles(server + "x", pair), f"Server key: the file {server}x does not exist"),
        (keys.KeyFiles(server, str(tmp_path / "gimp.key")), "not NAME.key"),
    ]
    for files, message in cases:
        with pytest.raises(request.UserError, match=re.escape(message)):
            files.checked()


def test_pending_jobs_are_stored_as_the_image_needs_them() -> None:
    """What a call stores on its image reads back the same (the selection too); what cannot be read
    is skipped, not fatal; sessions held by a running call are left alone."""
    mask = bytes(300) + b"\xff" * 400 + bytes(range(68))  # 32 x 24, mostly runs like a selection
    first = pending.PendingJob(
        "j1", "tcp://a:1", "s1", "generate", "generate", "tiny", (4, 5, 32, 24), fit=True,
        not_sent=("prompt",), sources={"image": "Background"}, anchor=7, mask=mask, sent=10.0,
    )  # fmt: skip
    second = pending.PendingJob("j2", "tcp://a:1", "s2", "inpaint", "inpaint", "", (0, 0, 8, 8), sent=5.0)
    blob = pending.encode([first, second])
    assert pending.decode(blob) == [first, second]
    assert len(json.loads(blob)["jobs"][0]["mask"]) < len(mask) / 3, "the selection is compressed"
    broken = json.loads(blob)
    broken["jobs"].insert(0, {"job": "j0"})  # a record this version cannot read
    assert pending.decode(json.dumps(broken).encode()) == [first, second]
    assert pending.decode(b"not json") == [] and pending.decode(None) == []
    groups = pending.by_connection([first, second], skip=set())
    assert list(groups) == [second.connection, first.connection], "oldest first"
    assert list(pending.by_connection([first, second], skip={"s2"})) == [first.connection]
    region = Rect(10, 10, 4, 2)
    over = pending.mask_over(bytes([1, 2, 3, 4, 5, 6, 7, 8]), region, Rect(12, 9, 4, 3))
    assert over == bytes([0, 0, 0, 0, 3, 4, 0, 0, 7, 8, 0, 0])


def _pending_ids(info: dict[str, Any]) -> list[str]:
    """The job ids stored on a saved image (its `underpaint-pending` parasite)."""
    stored = info["parasites"].get(pending.PENDING)
    return [j["job"] for j in json.loads(stored)["jobs"]] if stored else []


def _layer(out: Path, row: dict[str, Any]) -> np.ndarray:
    return _rgba(out, row["pixels"], row["width"], row["height"])


def _untouched(out: Path, entry: dict[str, Any]) -> None:
    """The picture's own layer is byte for byte what it was."""
    h, w = _original().shape[:2]
    background = next(r for r in entry["image"]["layers"] if r["name"] == "Background")
    assert np.array_equal(_rgba(out, background["pixels"], w, h), _original())


def test_gimp_keeps_a_job_across_a_lost_link_and_a_restart(gimp: GimpEnv, daemon) -> None:
    """Through a relay the test breaks: a link reset mid-call resumes and delivers; a link gone
    silent ends the call within seconds with a message, the job stored on the image; after a GIMP
    restart, Fetch Pending Results on the saved .xcf places the result, and so does the next Inpaint
    on it (below its own result), each exactly as an unbroken call would have."""
    fox = {"steps": LONG_STEPS, "seed": 7, "prompt": "a fox head"}
    inpaint = modes.mode_by_key("inpaint").procedure
    with relay(daemon.endpoint) as link:
        calls = [
            {"name": "resume", "procedure": inpaint, "selection": SELECTION,
             "args": {**fox, "endpoint": link.endpoint}},
            {"name": "lost", "procedure": inpaint, "selection": SELECTION,
             "args": {**fox, "endpoint": link.endpoint}},
            {"name": "reference", "procedure": inpaint, "selection": SELECTION,
             "args": {**fox, "endpoint": daemon.endpoint}},
        ]  # fmt: skip
        with on_running(daemon.endpoint, [link.cut, link.blackhole]) as fired:
            first = gimp.batch("lost-link", calls)
        link.restore()
        saved = gimp.inside(first["out"] / "lost.xcf")
        calls = [
            {"name": "fetch", "procedure": FETCH, "picture": saved, "selection": None},
            {"name": "pickup", "procedure": inpaint, "picture": saved, "selection": SELECTION,
             "args": {"steps": STEPS, "seed": 9, "prompt": "a cat", "endpoint": daemon.endpoint}},
        ]  # fmt: skip
        second = gimp.batch("restarted", calls)
    out, got = first["out"], first["calls"]
    resume, lost, reference = got["resume"], got["lost"], got["reference"]
    for entry in (resume, reference):
        assert entry["success"], f"{entry['error']}\n{first['log']}"
    assert [f["state"] for f in fired] == ["running", "running"], fired
    assert link.opened(link.when("cut"), resume["ended_at"]) >= 1, "the plug-in connected again"
    (expected,) = _results(reference)
    (resumed,) = _results(resume)
    assert resumed["name"] == expected["name"] == "Inpaint seed 7 (tiny)"
    assert np.array_equal(_layer(out, resumed), _layer(out, expected))
    assert not lost["success"] and lost["status"] == "execution-error", lost
    assert lost["error"].startswith(f"Lost the Underpaint daemon at {link.endpoint}"), lost["error"]
    assert "Fetch Pending Results" in lost["error"]
    took = lost["ended_at"] - link.when("blackhole")
    assert 0 < took < LOST_WITHIN, f"the call ended {took:.1f} s after the link went silent"
    assert [r["name"] for r in lost["image"]["layers"]] == ["Background"]
    (job_id,) = _pending_ids(lost["image"])
    assert job_id == fired[1]["job"], "the stored job is the one that was running"
    for entry in (resume, reference, lost):
        _untouched(out, entry)
    assert _pending_ids(resume["image"]) == _pending_ids(reference["image"]) == [], "placed: forgotten"

    out2, fetch, pickup = second["out"], second["calls"]["fetch"], second["calls"]["pickup"]
    assert fetch["success"], f"{fetch['error']}\n{second['log']}"
    assert fetch["returned"] == [1, 0], "one job placed, none left"
    (placed,) = _results(fetch)
    assert {k: placed[k] for k in ("name", "x", "y", "width", "height")} == {
        k: expected[k] for k in ("name", "x", "y", "width", "height")
    }
    assert np.array_equal(_layer(out2, placed), _layer(out, expected)), "as if the call had waited"
    assert json.loads(placed["parasites"]["underpaint-params"])["job"] == job_id
    assert pickup["success"], f"{pickup['error']}\n{second['log']}"
    names = [r["name"] for r in _results(pickup)]
    assert names == ["Inpaint seed 9 (tiny)", "Inpaint seed 7 (tiny)"], "the earlier job goes below"
    assert np.array_equal(_layer(out2, _results(pickup)[1]), _layer(out, expected))
    for entry in (fetch, pickup):
        assert _pending_ids(entry["image"]) == [], "a placed job is forgotten"
        _untouched(out2, entry)


def _keygen(folder: Path, client: str) -> None:
    made = subprocess.run([*CLI, "keygen", str(folder), "--client", client], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr


def test_gimp_keys_and_a_daemon_killed_mid_job(gimp: GimpEnv, underpaint_home: Path) -> None:
    """A daemon with CurveZMQ keys (on loopback: keys work there too) refuses the plug-in without
    keys and with a key it does not know, each with a message saying what to set; with the right
    keys, set in the dialog (its keys expander open, photographed), it works, and a dialog never set
    up starts with that connection. The daemon SIGKILLed mid-job: the call ends within seconds,
    keeping the job; after the daemon restarts, Fetch Pending Results says the job is lost and
    forgets it. The picture is never touched."""
    folder = gimp.work / "curve-keys"
    _keygen(folder, "gimp")
    _keygen(gimp.work / "elsewhere", "stranger")  # a valid pair this daemon was never told about
    server, pair = gimp.inside(folder / "server.key"), gimp.inside(folder / "gimp.key_secret")
    keyed = {"server-key": server, "client-key": pair}
    home = gimp.work / "home-keys"  # no last values: the dialogs start from the arguments given
    shutil.copytree(
        gimp.home / ".config" / "GIMP" / "3.0" / "plug-ins", home / ".config" / "GIMP" / "3.0" / "plug-ins"
    )
    session = replace(gimp, home=home)
    inpaint, refine = modes.mode_by_key("inpaint").procedure, modes.mode_by_key("refine").procedure
    fox = {"steps": STEPS, "seed": 7, "prompt": "a fox head"}
    with running_daemon(keys=folder) as first:
        calls = [
            {"name": "no-keys", "procedure": inpaint, "selection": SELECTION,
             "args": {**fox, "endpoint": first.endpoint}},
            {"name": "stranger", "procedure": inpaint, "selection": SELECTION,
             "args": {**fox, "endpoint": first.endpoint, "server-key": server,
                      "client-key": gimp.inside(gimp.work / "elsewhere" / "stranger.key_secret")}},
            {"name": "keyed", "procedure": inpaint, "selection": SELECTION, "interactive": True,
             "args": {**fox, **keyed, "endpoint": first.endpoint}},
            {"name": "recalled", "procedure": refine, "selection": SELECTION, "interactive": True,
             "args": {**fox, "seed": 8}},
            {"name": "killed", "procedure": inpaint, "selection": SELECTION,
             "args": {**fox, **keyed, "steps": LONG_STEPS, "endpoint": first.endpoint}},
        ]  # fmt: skip
        answers = {"Underpaint Inpaint": "Return", "Underpaint Refine": "Return"}
        watcher = {"server_key": folder / "server.key", "client_key": folder / "gimp.key_secret"}
        with on_running(first.endpoint, [first.process.kill], **watcher) as fired:
            result = session.batch("keyed-daemon", calls, dialogs=answers)
        first.process.wait(30)
    with running_daemon(keys=folder, endpoint=first.endpoint) as again:
        saved = gimp.inside(result["out"] / "killed.xcf")
        later = session.batch("after-restart", [{"name": "fetch", "procedure": FETCH, "picture": saved}])
        assert again.alive()
    out, got = result["out"], result["calls"]
    no_keys, stranger, killed = got["no-keys"], got["stranger"], got["killed"]
    assert not no_keys["success"], no_keys
    assert no_keys["error"].startswith(f"The Underpaint daemon at {first.endpoint} uses CurveZMQ keys")
    assert "set Server key to that daemon's server.key" in no_keys["error"] and no_keys["seconds"] < 8
    assert not stranger["success"], stranger
    assert stranger["error"].startswith(f"The Underpaint daemon at {first.endpoint} refused the connection")
    assert "authorized/" in stranger["error"] and stranger["seconds"] < 8, stranger
    for name in ("keyed", "recalled"):
        assert got[name]["success"], f"{name}: {got[name]['error']}\n{result['log']}"
    assert [r["name"] for r in _results(got["keyed"])] == ["Inpaint seed 7 (tiny)"]
    assert [r["name"] for r in _results(got["recalled"])] == ["Refine seed 8 (tiny)"], "the keyed daemon"
    shots = json.loads((out / "dialogs.json").read_text())["dialogs"]
    assert [shot["title"] for shot in shots] == ["Underpaint Inpaint", "Underpaint Refine"]
    for shot in shots:
        x, y, w, h = shot["geometry"]
        assert h <= 900 and Image.open(out / shot["png"]).size == (w, h), shot
    assert fired and fired[0]["state"] == "running"
    assert not killed["success"] and killed["error"].startswith("Lost the Underpaint daemon"), killed
    took = killed["ended_at"] - fired[0]["at"]
    assert 0 < took < LOST_WITHIN, f"the call ended {took:.1f} s after the daemon was killed"
    assert _pending_ids(killed["image"]) == [fired[0]["job"]]
    for entry in (no_keys, stranger, got["keyed"], got["recalled"], killed):
        _untouched(out, entry)
    fetch = later["calls"]["fetch"]
    assert not fetch["success"] and "lost: the daemon at" in fetch["error"], fetch
    assert "restarted since" in fetch["error"] and "Inpaint (default preset)" in fetch["error"]
    assert [r["name"] for r in fetch["image"]["layers"]] == ["Background"]
    assert _pending_ids(fetch["image"]) == [], "a lost job is forgotten"
    _untouched(later["out"], fetch)


# -- issue 11: Reword a Generate result --------------------------------------------------------------

REWORD = reword.REWORD.procedure
FOX = {"prompt": "a red fox", "steps": STEPS, "seed": 3, "width": 64, "height": 64}
FOX_SELECTION = ["ellipse", 100, 40, 64, 64, 0]  # 64 x 64: Generate paints it at its own size


def test_reword_requests_and_their_messages() -> None:
    """What a Reword sends comes from the layer's stored run; what cannot be reworded says why."""
    stored = {"op": "txt2img", "model": "tiny", "seed": 3, "job": "j1",
              "params": {"prompt": "a red fox", "steps": 4, "seed": 9, "variations": 2, "rank": False,
                         "output_format": "raw", "guidance_scale": 7.5}}  # fmt: skip
    blob = json.dumps(stored).encode()
    assert reword.source_of(blob, "Generate seed 3 (tiny)") == stored
    weights = reword.parse_weights(" fox = 1.5, red hat:0.5 ,")
    assert weights == {"fox": 1.5, "red hat": 0.5}
    req = reword.build(stored, " a blue fox ", "replace", weights)
    assert (req.op, req.model) == ("reword", "tiny")
    assert req.params == {"prompt": "a red fox", "steps": 4, "seed": 3, "guidance_scale": 7.5,
                          "op": "txt2img", "new_prompt": "a blue fox", "edit": "replace",
                          "weights": weights}  # fmt: skip
    assert reword.build(stored, "", "reweight", {"fox": 2.0}).params["new_prompt"] is None
    refusals = [
        (lambda: reword.source_of(None, "Background"), "'Background' is not an Underpaint result"),
        (lambda: reword.source_of(b"{", "X"), "unreadable underpaint-params"),
        (lambda: reword.source_of(json.dumps({**stored, "op": "inpaint"}).encode(), "I"), "made by inpaint"),
        (lambda: reword.parse_weights("fox"), "cannot read 'fox'; write word=weight"),
        (lambda: reword.parse_weights("fox=11"), "fox=11 is outside 0 … 10"),
        (lambda: reword.build(stored, "", "auto", {}), "needs an edited prompt or word weights"),
    ]
    for call, message in refusals:
        with pytest.raises(request.UserError, match=re.escape(message)):
            call()


def _client_reword(endpoint: str) -> np.ndarray:
    """The edited picture straight from the daemon, for the same source run (deterministic)."""
    from underpaint.protocol import Client

    params = {"op": "txt2img", **FOX, "new_prompt": "a blue fox", "edit": "auto"}
    with Client(endpoint, timeout=120) as client:
        client.hello()
        return pixels_of(client.run("reword", params, {}, timeout=120))


def test_gimp_reword_adds_the_edit_above_its_source(gimp: GimpEnv, daemon) -> None:
    """Reword on a Generate result layer: a new layer right above it, at its place and masked like it,
    holding the daemon's edited picture; the source and the picture untouched. A layer Underpaint
    did not make is refused. Then interactively, from the saved .xcf: the dialog starts with the
    layer's prompt shown (photographed) and the edit arrives the same."""
    generate = modes.mode_by_key("generate").procedure
    source = "Generate seed 3 (tiny)"
    edit = {"new-prompt": "a blue fox", "endpoint": daemon.endpoint}
    calls = [
        {"name": "reword", "procedure": generate, "selection": FOX_SELECTION,
         "args": {**FOX, "endpoint": daemon.endpoint},
         "then": [{"procedure": REWORD, "drawables": f"named:{source}", "args": edit},
                  {"procedure": REWORD, "drawables": "picture", "args": edit}]},
        {"name": "generated", "procedure": generate, "selection": FOX_SELECTION,
         "args": {**FOX, "endpoint": daemon.endpoint}},
    ]  # fmt: skip
    first = gimp.batch("reword", calls)
    out, entry, generated = first["out"], first["calls"]["reword"], first["calls"]["generated"]
    again = gimp.batch(
        "reword-dialog",
        [{"name": "dialog", "procedure": REWORD, "picture": gimp.inside(out / "generated.xcf"),
          "drawables": f"named:{source}", "selection": None, "interactive": True, "args": edit}],
        dialogs={"Underpaint Reword": "Return"},
    )  # fmt: skip
    assert entry["success"] and generated["success"], entry["error"] or generated["error"]
    worded, refused = entry["then"]
    assert worded["success"], f"{worded['error']}\n{first['log']}"
    assert not refused["success"] and "'Background' is not an Underpaint result" in refused["error"]
    expected = _client_reword(daemon.endpoint)
    (reference,) = _results(generated)
    for done, where in ((entry, out), (again["calls"]["dialog"], again["out"])):
        assert done["success"], f"{done['error']}\n{again['log']}"
        top, below = _results(done)
        assert (top["name"], below["name"]) == ("Reword seed 3 (tiny)", source), "right above its source"
        geometry = ("x", "y", "width", "height")
        assert [top[k] for k in geometry] == [below[k] for k in geometry] == [reference[k] for k in geometry]
        assert np.array_equal(_layer(where, top), expected), "the daemon's edited picture, placed as is"
        assert not np.array_equal(expected, _layer(where, below)), "the edit changed the picture"
        assert np.array_equal(_layer(where, below), _layer(out, reference)), "the source is untouched"
        assert top["mask"] and below["mask"]
        masks = [_gray(where, row["mask_pixels"], row["width"], row["height"]) for row in (top, below)]
        assert np.array_equal(*masks) and 0 < masks[0].mean() < 255, "masked like its source (an ellipse)"
        stored = json.loads(top["parasites"]["underpaint-params"])
        assert stored["op"] == "reword" and stored["params"]["new_prompt"] == "a blue fox"
        assert stored["params"]["edit"] == "replace" and stored["params"]["prompt"] == "a red fox"
        assert stored["source"]["job"] == json.loads(below["parasites"]["underpaint-params"])["job"]
        _untouched(where, done)
    (shot,) = json.loads((again["out"] / "dialogs.json").read_text())["dialogs"]
    x, y, w, h = shot["geometry"]
    assert shot["title"] == "Underpaint Reword" and h <= 900 and w <= 1000, shot


# -- issue 10: LoRAs, the Live sampler, Live mode ---------------------------------------------------

from lora_files import build_lora  # noqa: E402
from underpaint_gimp import live_state, loras  # noqa: E402

LIVE_PROC = "plug-in-underpaint-live"
LORA_PRESET = "tiny-lora"
PAINT = (200, 80, 40, 40, (250, 20, 20))  # x, y, w, h, colour: a red square inside the selection


def test_lora_text_and_the_live_sampler_merge() -> None:
    """`loras` text <-> the wire; the Live sampler merges only what the op takes, adds its LoRAs to the
    painter's, and falls back to few steps and low guidance when the daemon sends no `live` map."""
    assert loras.parse_loras(" ink:0.8, lcm:1 ;x:-2") == {"ink": 0.8, "lcm": 1.0, "x": -2.0}
    assert loras.format_loras({"ink": 0.8, "off": 0.0, "lcm": 1.0}) == "ink:0.8, lcm:1"
    assert loras.wire_loras({"ink": 0.5, "off": 0.0}) == [{"name": "ink", "weight": 0.5}]
    for bad, why in (("ink", "name:weight"), ("ink:lots", "must be a number"), ("ink:2.5", "from -2 to 2"),
                     ("a:1,a:2", "given twice")):  # fmt: skip
        with pytest.raises(loras.LoraError, match=why):
            loras.parse_loras(bad)
    refine = modes.mode_by_key("refine")
    spec = {"params": {p: {} for p in ("prompt", "steps", "guidance_scale", "seed", "loras", "strength")}}
    entry = {"name": "p", "ops": ["sdedit"], "op_specs": {"sdedit": spec}, "loras": [{"name": "ink"}]}
    live = {"steps": 2, "guidance_scale": 1.0, "scheduler": "lcm", "loras": [{"name": "lcm", "weight": 1.0}]}
    welcome = {"ops": {"sdedit": {}}, "default_model": "p", "models": [{**entry, "live": live}]}
    values = _defaults(refine, prompt="a cat", loras="ink:0.5", sampler="live", seed=3)
    fitted = request.fit_to_preset(request.build_request(refine, values, _crop_pixels(refine)), welcome)
    assert fitted.params["steps"] == 2 and fitted.params["guidance_scale"] == 1.0
    assert "scheduler" not in fitted.params, "only the keys the op's spec lists"
    assert fitted.params["loras"] == [{"name": "ink", "weight": 0.5}, {"name": "lcm", "weight": 1.0}]
    assert request.fit_to_preset(fitted, welcome).params == fitted.params, "merged once"
    quality = request.fit_to_preset(
        request.build_request(
            refine, {**values, "sampler": "quality", "loras": "ink:0"}, _crop_pixels(refine)
        ),
        welcome,
    )
    assert quality.params["steps"] == 30 and "loras" not in quality.params, "weight 0 = no LoRA sent"
    welcome["models"] = [entry]  # a daemon that sends no `live`: the fallback
    fallback = request.fit_to_preset(request.build_request(refine, values, _crop_pixels(refine)), welcome)
    assert (fallback.params["steps"], fallback.params["guidance_scale"]) == (4, 2.0)
    with pytest.raises(request.UserError, match=r"has no LoRA 'ghost' \(its LoRAs: ink\)"):
        ghost = request.build_request(refine, {**values, "loras": "ghost:1"}, _crop_pixels(refine))
        request.fit_to_preset(ghost, welcome)


def test_live_debounce_and_newest() -> None:
    """A change is sent once it rests for the delay, never twice; only newer results are shown."""
    wait = live_state.Debounce(0.5)
    assert not wait.due("a", 0.0) and not wait.due("a", 0.4) and wait.due("a", 0.5)
    assert not wait.due("a", 9.0), "the same input is not sent again"
    assert not wait.due("b", 10.0) and not wait.due("c", 10.3) and not wait.due("c", 10.7)
    assert wait.due("c", 10.8)
    wait.retry()
    assert wait.due("c", 10.9), "a failed send goes out again"
    newest = live_state.Newest()
    for sent in ("j1", "j2", "j3"):
        newest.add(sent)
    assert newest.running == "j3" and newest.take("j2") and not newest.take("j1"), "older than shown"
    assert newest.take("j3") and newest.running is None and not newest.take("zz")


@pytest.fixture(scope="module")
def lora_daemon(underpaint_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A daemon whose config adds `tiny-lora`: the tiny SD 1.5 models with one seeded LoRA, `style`."""
    folder = tmp_path_factory.mktemp("gimp-loras")
    path = build_lora(underpaint_home / "models", "sd15", folder / "style.safetensors")
    config = folder / "presets.toml"
    config.write_text(
        f'[presets.{LORA_PRESET}]\nbuiltin = "tiny"\n[presets.{LORA_PRESET}.loras]\nstyle = "{path}"\n'
    )
    with running_daemon("--config", str(config), preset="tiny") as proc:
        yield proc


def test_loading_is_shown_before_the_first_step(lora_daemon) -> None:
    """A job whose LoRA loads first says so on the progress bar (the daemon's `loading` events) before
    its steps; the LoRA loads on the first job that names it."""
    refine = modes.mode_by_key("refine")
    values = _defaults(refine, steps=STEPS, seed=3, prompt="a cat", model=LORA_PRESET, loras="style:1")
    reports: list[tuple[float | None, str]] = []
    with job.Session(lora_daemon.endpoint, protocol=_protocol) as session:
        req = session.fit(request.build_request(refine, values, _crop_pixels(refine)))
        session.run(req, lambda fraction, text: reports.append((fraction, text)))
    texts = [text for _, text in reports]
    loading = [i for i, text in enumerate(texts) if text.startswith("Underpaint: loading ")]
    steps = [i for i, text in enumerate(texts) if text.startswith("Underpaint: step ")]
    assert loading and steps and loading[0] < steps[0], texts
    assert re.fullmatch(r"Underpaint: loading .+… \d+ s", texts[loading[0]]), texts


def _live_map(endpoint: str, model: str) -> dict[str, Any]:
    """What the Live sampler should send for sdedit on `model` (its `live` map or the fallback)."""
    from underpaint.protocol import Client

    with Client(endpoint, timeout=60) as client:
        entry = next(p for p in client.hello()["models"] if p["name"] == model)
    taken = set(entry["op_specs"]["sdedit"]["params"])
    live = entry.get("live") if isinstance(entry.get("live"), dict) else presets.LIVE_FALLBACK
    return {k: v for k, v in live.items() if k in taken}


@pytest.fixture(scope="module")
def gimp_live(gimp: GimpEnv, lora_daemon) -> dict[str, Any]:
    """One GIMP session on a virtual display, in a HOME of its own (no last values of other tests):
    LoRA weights and the Live sampler through Refine, Live's steps as a script calls them, and Live's
    dialog driven by a user who keeps two pictures."""
    home = gimp.work / "home-live"
    plug_ins = Path(".config", "GIMP", "3.0", "plug-ins")
    shutil.copytree(gimp.home / plug_ins, home / plug_ins)
    base = {"endpoint": lora_daemon.endpoint, "steps": STEPS, "seed": 7, "prompt": "a cat"}
    refine, inpaint = (modes.mode_by_key(key).procedure for key in ("refine", "inpaint"))
    live = {"endpoint": lora_daemon.endpoint, "prompt": "a cat", "seed": 5, "strength": 0.5, "delay": 0.3}
    calls = [
        {"name": f"lora-{key}", "procedure": refine, "selection": SELECTION,
         "args": {**base, "model": LORA_PRESET, "loras": text}}
        for key, text in (("none", ""), ("zero", "style:0"), ("one", "style:1"), ("ghost", "ghost:1"))
    ] + [
        {"name": "live-sampler", "procedure": refine, "selection": SELECTION,
         "args": {**base, "model": LORA_PRESET, "sampler": "live"}},
        {"name": "lora-dialog", "procedure": inpaint, "selection": SELECTION, "interactive": True,
         "args": {**base, "model": LORA_PRESET, "loras": "style:0.5, ghost:1"}},
        {"name": "plain-dialog", "procedure": refine, "selection": SELECTION, "interactive": True,
         "args": {**base, "model": LORA_PRESET, "loras": "style:0.5"}},
        {"name": "live-steps", "procedure": LIVE_PROC, "selection": SELECTION,
         "args": {**live, "action": "update"},
         "then": [{"args": {"action": "update"}}, {"paint": [*PAINT[:4], list(PAINT[4])]},
                  {"args": {"action": "update"}},
                  {"args": {"action": "update"}, "drawables": "named:Underpaint live"},
                  {"args": {"action": "keep"}}, {"args": {"action": "stop"}}]},
        {"name": "live-dialog", "procedure": LIVE_PROC, "selection": SELECTION, "interactive": True,
         "args": live},
    ]  # fmt: skip
    answers = {
        "Underpaint Inpaint": "Return",
        # the painter picks a preset without LoRAs: its rows go, and no LoRA is sent
        "Underpaint Refine": "alt+m ctrl+a type:tiny wait:1 snap:plain.png Return",
        "Underpaint Live": "wait:6 alt+k wait:1 alt+p End type:zebra wait:6 alt+k wait:1 snap:live.png alt+o",
    }
    return replace(gimp, home=home).batch("live", calls, dialogs=answers)


def _patch_render(
    endpoint: str, stored: dict[str, Any], picture: np.ndarray, selection: np.ndarray
) -> np.ndarray:
    """A stored result's params run again on `picture` cropped to its region, with the selection."""
    from underpaint.protocol import Client

    x, y, w, h = stored["region"]
    crop = np.ascontiguousarray(picture[y : y + h, x : x + w])
    images = {
        "image": {"format": "raw", "width": w, "height": h, "channels": 4, "data": crop.tobytes()},
        "mask": {"format": "raw", "width": w, "height": h, "channels": 1,
                 "data": np.ascontiguousarray(selection[y : y + h, x : x + w]).tobytes()},
    }  # fmt: skip
    with Client(endpoint, timeout=120) as client:
        client.hello()
        done = client.run(stored["op"], stored["params"], images, model=stored["model"])["images"][0]
    return np.frombuffer(bytes(done["data"]), np.uint8).reshape(done["height"], done["width"], 4)


def test_gimp_lora_weights_move_pixels(gimp_live: dict[str, Any]) -> None:
    """Refine on a preset with a LoRA: weight 1 changes the pixels, weight 0 equals no LoRA bit for bit;
    a LoRA the preset does not list is refused naming those it has."""
    out, got = gimp_live["out"], gimp_live["calls"]
    layers = {}
    for key in ("none", "zero", "one"):
        entry = got[f"lora-{key}"]
        assert entry["success"], f"{key}: {entry['error']}\n{gimp_live['log']}"
        (row,) = _results(entry)
        layers[key] = _rgba(out, row["pixels"], row["width"], row["height"])
        params = json.loads(row["parasites"]["underpaint-params"])["params"]
        assert params.get("loras", []) == ([{"name": "style", "weight": 1.0}] if key == "one" else []), key
    assert np.array_equal(layers["zero"], layers["none"]), "weight 0 is the preset's untouched base"
    moved = np.abs(layers["one"].astype(float) - layers["none"].astype(float))[..., :3].mean()
    assert moved > 1.0, moved
    ghost = got["lora-ghost"]
    assert not ghost["success"] and "has no LoRA 'ghost' (its LoRAs: style)" in ghost["error"], ghost


def test_gimp_live_sampler_and_the_lora_rows(gimp_live: dict[str, Any], lora_daemon) -> None:
    """The Live sampler's params reach the daemon (echoed in the result); the dialog shows one row per
    LoRA of the picked preset and sends only those (the stale 'ghost' would be refused)."""
    out, got = gimp_live["out"], gimp_live["calls"]
    entry = got["live-sampler"]
    assert entry["success"], f"{entry['error']}\n{gimp_live['log']}"
    (row,) = _results(entry)
    params = json.loads(row["parasites"]["underpaint-params"])["params"]
    for key, value in _live_map(lora_daemon.endpoint, LORA_PRESET).items():
        assert params[key] == value, (key, params)
    assert params["steps"] != STEPS, "the painter's steps were replaced"
    dialog = got["lora-dialog"]
    assert dialog["success"], f"{dialog['error']}\n{gimp_live['log']}"
    (row,) = _results(dialog)
    params = json.loads(row["parasites"]["underpaint-params"])["params"]
    assert params["loras"] == [{"name": "style", "weight": 0.5}], params
    settings = out.parent / "home-live" / ".config" / "GIMP" / "3.0" / "plug-in-settings"
    kept = [p.name for p in settings.glob("*inpaint*.last") if "style:0.5" in p.read_text(errors="replace")]
    assert kept, "the LoRA weights are remembered with the other settings"
    plain = got["plain-dialog"]  # a preset without LoRAs: no rows, and none sent
    assert plain["success"], f"{plain['error']}\n{gimp_live['log']}"
    (row,) = _results(plain)
    stored = json.loads(row["parasites"]["underpaint-params"])
    assert stored["model"] == "tiny" and stored["params"].get("loras", []) == [], stored
    shots = json.loads((out / "dialogs.json").read_text())["dialogs"]
    rows = next(Image.open(out / s["png"]) for s in shots if s["title"] == "Underpaint Inpaint").size
    none = Image.open(out / "plain.png").size  # Refine has the same fields, here without LoRA rows
    assert rows[1] <= 900 and rows[1] >= none[1] + 20, (rows, none)  # the LoRA row makes it taller


def test_gimp_live_steps_replace_one_live_layer(gimp_live: dict[str, Any], lora_daemon) -> None:
    """Live as a script calls it: update renders the source into one 'Underpaint live' layer, a change
    of the source gives a new picture in the same layer (made from the source only), keep copies it
    as a normal result layer, stop removes it; nothing else changes. Live on its own live layer is
    refused (it would paint from its own pictures)."""
    out, entry = gimp_live["out"], gimp_live["calls"]["live-steps"]
    assert entry["success"], f"{entry['error']}\n{gimp_live['log']}"
    first, painted, second, itself, kept, stopped = entry["then"]
    for step in (first, second, kept, stopped):
        assert step["success"], f"{step['error']}\n{gimp_live['log']}"
    assert not itself["success"] and "not from its own live layer" in itself["error"], itself
    for step in (first, painted, second, kept):
        assert step["layers"].count("Underpaint live") == 1, step["layers"]
    assert "Underpaint/Live seed 5 (tiny)" in kept["layers"], kept["layers"]
    assert "Underpaint live" not in stopped["layers"]
    h, w = _original().shape[:2]
    before, after = (
        _rgba(out, s["live"]["pixels"], s["live"]["width"], s["live"]["height"]) for s in (first, second)
    )
    assert not np.array_equal(before, after), "the painted change made a new picture"
    stored = json.loads(second["live"]["parasites"]["underpaint-params"])
    assert stored["op"] == "sdedit" and stored["seed"] == 5 and stored["mode"] == "live"
    selection = _gray(out, "live-steps-selection.y", w, h)
    background = next(r for r in entry["image"]["layers"] if r["name"] == "Background")
    canvas = _rgba(out, background["pixels"], w, h)
    x, y, pw, ph, colour = PAINT
    expected = _original().copy()
    expected[y : y + ph, x : x + pw, :3] = colour
    assert np.array_equal(canvas, expected), "only the painter's square changed the picture"
    assert np.array_equal(_patch_render(lora_daemon.endpoint, stored, canvas, selection), after)
    top = [r["name"] for r in entry["image"]["layers"] if r["parent"] is None]
    assert top == ["Underpaint", "Background"], top
    (row,) = _results(entry)
    assert row["name"] == "Live seed 5 (tiny)"
    assert np.array_equal(_rgba(out, row["pixels"], row["width"], row["height"]), after), (
        "Keep = the live layer"
    )


def test_gimp_live_dialog_keeps_and_closes_cleanly(gimp_live: dict[str, Any], lora_daemon) -> None:
    """Live's dialog while open: the first picture arrives by itself and Keep copies it; a prompt typed
    meanwhile is a change, sent in the lane, and its picture is kept second (newest on top); OK closes
    the dialog and removes the live layer, leaving the picture as it was."""
    out, entry = gimp_live["out"], gimp_live["calls"]["live-dialog"]
    assert entry["success"], f"{entry['error']}\n{gimp_live['log']}"
    top = [r["name"] for r in entry["image"]["layers"] if r["parent"] is None]
    assert top == ["Underpaint", "Background"], top
    rows = _results(entry)
    assert [r["name"] for r in rows] == ["Live seed 5 (tiny) #1", "Live seed 5 (tiny)"], rows  # GIMP adds #1
    stored = [json.loads(r["parasites"]["underpaint-params"]) for r in rows]
    assert [s["params"]["prompt"] for s in stored] == ["a catzebra", "a cat"]
    h, w = _original().shape[:2]
    background = next(r for r in entry["image"]["layers"] if r["name"] == "Background")
    assert np.array_equal(_rgba(out, background["pixels"], w, h), _original())
    selection = _gray(out, "live-dialog-selection.y", w, h)
    for row, run in zip(rows, stored, strict=True):
        layer = _rgba(out, row["pixels"], row["width"], row["height"])
        assert np.array_equal(_patch_render(lora_daemon.endpoint, run, _original(), selection), layer)
    shot = Image.open(out / "live.png")
    assert shot.size[1] <= 900, shot.size


STROKE = (190, 90, 260, 130)  # x1, y1, x2, y2: a brush stroke inside the selection, painted in GIMP's window


def test_gimp_live_follows_painting_on_the_canvas(gimp: GimpEnv, lora_daemon) -> None:
    """GIMP with its user interface: while Live's dialog is open, the painter paints a stroke on the
    canvas (xdotool drags the brush in the image window); Live notices, sends the painted source, and
    Keep keeps a picture made from the painted canvas (bit-identical to the daemon's for it, unlike the
    one for the canvas before the stroke). OK removes the live layer; the stroke stays."""
    home = gimp.work / "home-gui"
    plug_ins = Path(".config", "GIMP", "3.0", "plug-ins")
    shutil.copytree(gimp.home / plug_ins, home / plug_ins)
    args = {"endpoint": lora_daemon.endpoint, "prompt": "a cat", "seed": 5, "strength": 0.5, "delay": 0.3}
    call = {"name": "gui", "procedure": LIVE_PROC, "selection": SELECTION, "interactive": True, "args": args}
    calls = [{**call, "display": True}]
    stroke = ",".join(map(str, STROKE))
    answers = {"Underpaint Live": f"wait:4 paint:{stroke} wait:5 alt+k wait:1 snap:gui-live.png alt+o"}
    result = replace(gimp, home=home).batch("gui", calls, dialogs=answers, ui=True)
    out, entry = result["out"], result["calls"]["gui"]
    assert entry["success"], f"{entry['error']}\n{result['log']}"
    top = [r["name"] for r in entry["image"]["layers"] if r["parent"] is None]
    assert top == ["Underpaint", "Background"], top
    h, w = _original().shape[:2]
    background = next(r for r in entry["image"]["layers"] if r["name"] == "Background")
    canvas = _rgba(out, background["pixels"], w, h)
    changed = np.argwhere((canvas != _original()).any(axis=2))
    assert len(changed) > 200, "the stroke is on the canvas"
    (y0, x0), (y1, x1) = changed.min(axis=0), changed.max(axis=0)
    assert STROKE[0] - 40 <= x0 and x1 <= STROKE[2] + 40 and STROKE[1] - 40 <= y0 and y1 <= STROKE[3] + 40
    (row,) = _results(entry)
    stored = json.loads(row["parasites"]["underpaint-params"])
    kept = _rgba(out, row["pixels"], row["width"], row["height"])
    selection = _gray(out, "gui-selection.y", w, h)
    assert np.array_equal(_patch_render(lora_daemon.endpoint, stored, canvas, selection), kept)
    assert not np.array_equal(_patch_render(lora_daemon.endpoint, stored, _original(), selection), kept)


def test_gimp_live_watches_what_shows_through(gimp: GimpEnv) -> None:
    """Live's canvas watch in real GIMP 3 (tests/gimp/live_below.py): where the source layer is
    transparent, a change on a layer below it (a group's child too, or a visibility switch) changes the
    fingerprint within as many ticks as there are layers below, one layer read per tick; where the
    source is opaque nothing below is read, and a change there is no change."""
    out = gimp.work / "live-below"
    out.mkdir()
    script = gimp.work / "live_below.py"
    script.write_bytes((HERE / "gimp" / "live_below.py").read_bytes())
    plugin_dir = gimp.home / ".config" / "GIMP" / "3.0" / "plug-ins" / "underpaint"
    spec = {"plugin_dir": gimp.inside(plugin_dir), "out": gimp.inside(out)}
    (out / "spec.json").write_text(json.dumps(spec))
    argv = gimp_chroot.gimp_batch_argv(gimp.inside(script))
    run, where = gimp.run(argv, {"UNDERPAINT_LIVE_SPEC": gimp.inside(out / "spec.json")}, out)
    result_file = out / "result.json"
    assert result_file.is_file(), f"no result.json; {where}"
    res = json.loads(result_file.read_text())
    assert res["done"], f"{res.get('exception')}\n{where}"
    assert res["stable"] and res["reads_first"] == 3, res
    for key in ("background_seen_at", "group_child_seen_at"):
        assert res[key] is not None and res[key] <= 3, (key, res)
    assert res["visibility_seen_at"] == 1 and res["source_seen_at"] == 1, res
    assert max(res["reads_after_first"]) <= 1, res
    assert res["hidden_change_seen_at"] is None and res["reads_while_opaque"] == 0, res
