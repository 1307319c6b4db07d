"""The Krita plugin, proven in real Krita (GitHub issue #3), plus unit tests of its pure logic.

How Krita is driven: the suite installs Debian's Krita (+ PyQt5, pyzmq, msgpack, xvfb) when missing,
installs the plugin the way a user does (`underpaint install-plugin krita` with HOME pointing at a temp
home), adds a small test-only plugin (tests/krita/runner) that runs a scripted scenario from a QTimer
once the main window exists, and starts the full `xvfb-run krita`. The scenario clicks the real
docker's buttons; the docker talks to a real `underpaint serve --preset tiny`. Results come back as
files (result.json, the saved .kra and PNG); Krita's exit code means nothing, so a missing or failed
result.json fails the test with the scenario log and Krita's output.
"""

from __future__ import annotations

import configparser
import importlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import need
from PIL import Image, ImageDraw, ImageFilter

from underpaint.daemon.commands.install_plugin import enable_in_kritarc

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "tests" / "krita"
PICTURE = ROOT / "daemon" / "assets" / "chelsea.png"
APT_PACKAGES = ["krita", "python3-pyqt5", "python3-zmq", "python3-msgpack", "xvfb"]
DAEMON_VERSION = importlib.import_module("underpaint.daemon").__version__
KRITA_TIMEOUT = 240.0  # s for one Krita run, scenario included (5-50 s here; ~110 s on a loaded machine)

sys.path.insert(0, str(SCENARIOS))
kra = importlib.import_module("kra")
relay_mod = importlib.import_module("relay")


# ---------------------------------------------------------------------------------------------------
# The plugin package, staged the way install-plugin ships it (with the vendored protocol)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`underpaint_krita` imported from a staged copy (outside Krita: only the pure modules are used)."""
    from underpaint.daemon.commands.install_plugin import stage_krita

    staged = stage_krita(tmp_path_factory.mktemp("staged"))
    sys.path.insert(0, str(staged.parent))
    package = importlib.import_module("underpaint_krita")
    assert Path(package.__file__).parent == staged
    return package


def sub(plugin: Any, name: str) -> Any:
    return importlib.import_module(f"underpaint_krita.{name}")


# ---------------------------------------------------------------------------------------------------
# Unit tests of the pure logic (outside Krita)
# ---------------------------------------------------------------------------------------------------
def test_bgra_rgba_conversion(plugin: Any) -> None:
    pixels = sub(plugin, "pixels")
    bgra = bytes([1, 2, 3, 4, 10, 20, 30, 40])
    assert pixels.bgra_to_rgba(bgra) == bytes([3, 2, 1, 4, 30, 20, 10, 40])
    assert pixels.rgba_to_bgra(pixels.bgra_to_rgba(bgra)) == bgra
    assert pixels.set_alpha(bgra, bytes([7, 8])) == bytes([1, 2, 3, 7, 10, 20, 30, 8])
    assert pixels.has_transparency(bgra) and not pixels.has_transparency(bytes([0, 0, 0, 255]))
    with pytest.raises(ValueError):
        pixels.swap_red_blue(b"abc")


def test_mask_bounds_and_crop(plugin: Any) -> None:
    pixels, regions = sub(plugin, "pixels"), sub(plugin, "protocol.regions")
    mask = Image.new("L", (40, 30), 0)
    ImageDraw.Draw(mask).ellipse((5, 7, 24, 19), fill=255)
    soft = mask.filter(ImageFilter.GaussianBlur(2))
    data = soft.tobytes()
    ys, xs = np.nonzero(np.asarray(soft))
    expected = regions.Rect(
        int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
    )
    assert pixels.mask_bounds(data, 40, 30) == expected
    assert pixels.mask_bounds(bytes(40 * 30), 40, 30) is None
    rgb = np.arange(40 * 30 * 3, dtype=np.uint32).astype(np.uint8).reshape(30, 40, 3)
    rect = regions.Rect(3, 4, 10, 5)
    assert pixels.crop(rgb.tobytes(), 40, 30, 3, rect) == rgb[4:9, 3:13].tobytes()


def test_region_math(plugin: Any) -> None:
    """The vendored shared `protocol/regions.py` as the plugin imports it, and Krita's txt2img size."""
    shared, regions = sub(plugin, "protocol.regions"), sub(plugin, "regions")
    assert Path(shared.__file__).read_bytes() == (ROOT / "protocol" / "regions.py").read_bytes()
    Rect = shared.Rect
    canvas = Rect(0, 0, 451, 300)
    assert shared.job_region(Rect(100, 50, 150, 100), canvas, 32) == Rect(68, 18, 214, 164)
    assert shared.job_region(Rect(0, 280, 20, 20), canvas, 32) == Rect(0, 248, 52, 52)  # clamped
    assert shared.job_region(None, canvas, 32) == canvas
    assert sub(plugin, "pixels").Rect is Rect  # the plugin uses the shared Rect, not a copy
    assert regions.working_size(150, 100, 64) == (64, 64)  # minimum 64
    assert regions.working_size(600, 300, 512) == (512, 256)
    assert regions.working_size(301, 200, 512) == (512, 344)


def test_mode_params(plugin: Any) -> None:
    modes, records = sub(plugin, "modes"), sub(plugin, "records")
    units = [
        modes.UnitForm(True, "{a}", "Sketch", "none", "scribble", 1.0, True),
        modes.UnitForm(False, "{b}", "Photo", "canny", "canny", 0.5),
        modes.UnitForm(True, "{c}", "Photo", "canny", "canny", 0.5),
    ]
    form = modes.FormValues(mode="controlnet", prompt="a cat", seed=3, steps=9, strength=0.7, units=units)
    params = modes.build_params(form)
    assert params["units"] == [
        {"model": "scribble", "image": "control0", "preprocessor": "none", "scale": 1.0},
        {"model": "canny", "image": "control1", "preprocessor": "canny", "scale": 0.5},
    ]
    assert params["seed"] == 3 and params["strength"] == 0.7 and params["padding"] == 32
    assert "resolution" not in params and "instruction" not in params
    instruct = modes.build_params(modes.FormValues(mode="instruct", instruction="make it winter", prompt="x"))
    assert instruct["instruction"] == "make it winter" and "prompt" not in instruct and "seed" not in instruct
    assert instruct["image_guidance_scale"] == 1.5
    gen = modes.build_params(modes.FormValues(mode="generate", prompt="p", resolution=0), size=(64, 48))
    assert (gen["width"], gen["height"]) == (64, 48) and "padding" not in gen and "strength" not in gen
    up = modes.build_params(modes.FormValues(mode="upscale", factor=2))
    assert up["factor"] == 2 and "guidance_scale" not in up
    assert modes.validate(modes.FormValues(mode="instruct")) is not None
    assert modes.validate(modes.FormValues(mode="controlnet")) is not None
    assert modes.validate(form) is None
    assert records.layer_name(form, 3) == "ControlNet #3: a cat"
    assert records.layer_name(form, 3, "tiny") == "ControlNet #3 (tiny): a cat"
    assert records.layer_name(modes.FormValues(mode="variation"), 4, "v", 1.234) == "Variation #4 (v, 1.23 s)"
    long_form = modes.FormValues(mode="inpaint", prompt="a " * 60)
    assert len(records.layer_name(long_form, 1)) < 60
    merged = json.loads(
        records.merge_records(records.merge_records(None, {"{1}": {"seed": 1}}), {"{2}": {"seed": 2}})
    )
    assert merged["layers"] == {"{1}": {"seed": 1}, "{2}": {"seed": 2}}

    # A preset's op spec decides what is sent: a parameter it does not list is never sent.
    spec = {"params": {"prompt": {}, "steps": {}, "seed": {}, "width": {}, "height": {}}, "images": {}}
    small = modes.build_params(
        modes.FormValues(mode="generate", prompt="p", seed=2), size=(64, 64), spec=spec
    )
    assert small == {"prompt": "p", "steps": 30, "seed": 2, "width": 64, "height": 64}
    assert modes.visible_fields(modes.MODES_BY_KEY["generate"], spec) == {
        "prompt",
        "steps",
        "seed",
        "resolution",
    }
    extras = modes.FormValues(mode="generate", extras={"refine": 0.3, "unknown": 1})
    assert modes.build_params(extras, size=(64, 64), spec={"params": {"refine": {}}})["refine"] == 0.3
    assert "unknown" not in modes.build_params(extras, size=(64, 64), spec={"params": {"refine": {}}})

    # Mix: the selected layers as images `layerN`, then the prompt; 2 … 8 items.
    layers = [modes.MixLayer("{s}", "Sun", 0.5), modes.MixLayer("{k}", "Sky")]
    mix = modes.FormValues(mode="mix", prompt="a fox", prompt_weight=2.0, mix_layers=layers)
    assert modes.build_params(mix, size=(64, 64))["items"] == [
        {"image": "layer0", "weight": 0.5},
        {"image": "layer1", "weight": 1.0},
        {"prompt": "a fox", "weight": 2.0},
    ]
    assert "prompt" not in modes.build_params(mix, size=(64, 64)) and modes.validate(mix) is None
    assert "Mix blends 2 to 8" in modes.validate(modes.FormValues(mode="mix", mix_layers=layers[:1]))
    zero = [modes.MixLayer("{s}", "Sun", 0.0), modes.MixLayer("{k}", "Sky", 0.0)]
    assert "weight above 0" in modes.validate(modes.FormValues(mode="mix", mix_layers=zero))

    # Compare: the base mode's params plus op and models; the record takes the preset's own part.
    both = modes.FormValues(mode="compare", compare_mode="refine", compare_models=["a", "b"], prompt="p")
    compare = modes.build_params(both)
    assert compare["op"] == "sdedit" and compare["models"] == ["a", "b"] and compare["strength"] == 1.0
    assert modes.validate(modes.FormValues(mode="compare")) is not None
    many = modes.FormValues(mode="compare", compare_models=[f"m{i}" for i in range(9)])
    assert "at most 8" in modes.validate(many)
    result = {
        "op": "compare",
        "model": "a",
        "params": {"op": "sdedit"},
        "compare": [
            {"model": "a", "family": "sd15", "run": 0.5, "params": {"seed": 7, "steps": 4}, "ignored": []},
            {"model": "b", "family": "x", "error": {"code": "job_failed", "message": "boom"}},
        ],
    }
    record = records.generation_record(both, result, {"model": "a", "seed": 7}, (1, 2), {})
    assert (
        record["preset"] == "a" and record["op"] == "sdedit" and record["params"] == {"seed": 7, "steps": 4}
    )
    assert record["compare"]["run"] == 0.5 and record["family"] == "sd15"
    assert records.compare_problems(result) == ["b: boom"]


def _weight(weights: Any, text: str, start: int, end: int | None = None, up: bool = True) -> Any:
    """(new text, selected text) after one Ctrl+Up/Down on text[start:end] (end None: a cursor)."""
    edit = weights.adjust(text, start, start if end is None else end, up)
    if edit is None:
        return None
    new = edit.apply(text)
    return new, new[edit.select_start : edit.select_end]


def test_prompt_weight_keys(plugin: Any) -> None:
    """Ctrl+Up / Ctrl+Down: the word under the cursor, the group around it, or the selection."""
    weights = sub(plugin, "weights")
    # A word under the cursor gets a group; the group goes on in 0.1 steps; at 1.0 it is plain again.
    assert _weight(weights, "a red fox", 7) == ("a red (fox:1.1)", "fox")
    assert _weight(weights, "a red (fox:1.1)", 8) == ("a red (fox:1.2)", "fox")
    assert _weight(weights, "a red (fox:1.1)", 8, up=False) == ("a red fox", "fox")
    assert _weight(weights, "a red fox", 2, up=False) == ("a (red:0.9) fox", "red")
    # The kept selection (the phrase) is recognised as its group: repeated presses go on with it.
    assert _weight(weights, "a red (fox:1.2)", 7, 10) == ("a red (fox:1.3)", "fox")
    assert _weight(weights, "a red (fox:1.2)", 6, 15, up=False) == ("a red (fox:1.1)", "fox")
    # A selection of several words, with spaces around it trimmed.
    assert _weight(weights, "a red fox, snow", 1, 9) == ("a (red fox:1.1), snow", "red fox")
    # `(text)` is 1.1 (the daemon's emphasis): down once is plain text.
    assert _weight(weights, "a (red) fox", 4, up=False) == ("a red fox", "red")
    assert _weight(weights, "a (red) fox", 4) == ("a (red:1.2) fox", "red")
    # Nested groups: the innermost around the cursor; a colon followed by words is text, not a weight.
    assert _weight(weights, "((a:1.2) b:1.5)", 3) == ("((a:1.3) b:1.5)", "a")
    assert _weight(weights, "((a:1.2) b:1.5)", 10) == ("((a:1.2) b:1.6)", "(a:1.2) b")
    assert _weight(weights, "(style: ink)", 3) == ("(style: ink:1.2)", "style: ink")
    # Escaped parentheses are text; two decimals survive; limits 0 … 3; nothing to weigh: no edit.
    assert _weight(weights, "\\(a\\) b", 2) == ("\\((a:1.1)\\) b", "a")
    assert _weight(weights, "(a:1.25)", 2) == ("(a:1.35)", "a")
    assert _weight(weights, "(a:3.0)", 2) is None and _weight(weights, "(a:0.0)", 2, up=False) is None
    assert _weight(weights, "(a:0.1)", 2, up=False) == ("(a:0.0)", "a")
    assert _weight(weights, "a  , b", 3) is None and _weight(weights, "", 0) is None
    # Qt counts UTF-16 units: an emoji before the cursor is two of them.
    assert weights.to_qt("a \U0001f98a fox", 4) == 5 and weights.from_qt("a \U0001f98a fox", 5) == 4
    assert _weight(weights, "a \U0001f98a fox", 6) == ("a \U0001f98a (fox:1.1)", "fox")


def test_progress_in_painter_steps(plugin: Any) -> None:
    """The bar's text counts the steps asked for (after strength) per picture, not scheduler calls."""
    progress = sub(plugin, "progress")
    assert progress.expected({"steps": 30, "strength": 0.5, "variations": 2}) == progress.Expected(15, 2)
    assert progress.expected({"steps": 4, "strength": 1.0}) == progress.Expected(4, 1)
    assert progress.expected({"steps": 5, "models": ["a", "b", "c"]}) == progress.Expected(5, 3)
    assert progress.expected({"prompt": "no steps"}) is None
    shown = progress.Progress(progress.expected({"steps": 4}))
    texts = []
    for step in range(1, 6):  # PNDM: 5 calls for 4 steps
        shown.update(step, 5)
        texts.append((shown.text(), shown.percent))
    assert texts == [
        ("step 1 of 4", 20),
        ("step 2 of 4", 40),
        ("step 3 of 4", 60),
        ("step 4 of 4", 80),
        ("step 4 of 4", 100),
    ]
    two = progress.Progress(progress.expected({"steps": 8, "strength": 0.5, "variations": 2}))
    two.update(6, 10)
    assert two.text() == "picture 2 of 2 \u00b7 step 1 of 4" and two.percent == 60
    two.update(4, 12)  # the daemon's total grew (an estimate was replaced): nothing goes back
    assert two.text() == "picture 2 of 2 \u00b7 step 1 of 4" and two.percent == 60
    blind = progress.Progress(None)
    blind.update(3, 12)
    assert blind.text() == "25 %"


def test_history_entries_and_reuse(plugin: Any) -> None:
    """The strip's entries from stored records (newest job first), and the form a click restores."""
    modes, records, history = sub(plugin, "modes"), sub(plugin, "records"), sub(plugin, "history")
    inpaint = modes.FormValues(mode="inpaint", prompt="a fox", steps=6, seed=None, variations=2, model="tiny")
    result = {"op": "inpaint", "model": "tiny", "seed": 40, "params": {"steps": 6, "seed": 40}}
    old = {
        f"{{{i}}}": {**records.generation_record(inpaint, result, {"seed": 40 + i}, (0, 0), {}), "stamp": 1.0}
        for i in range(2)
    }
    both = modes.FormValues(
        mode="compare", compare_mode="refine", compare_models=["tiny", "tiny-sdxl"], extras={"refine": 0.5}
    )
    compared = {
        "op": "compare",
        "params": {"op": "sdedit"},
        "compare": [
            {"model": "tiny", "params": {"seed": 7, "strength": 0.5}, "ignored": ["refine"]},
            {"model": "tiny-sdxl", "params": {"seed": 7, "refine": 0.5}},
        ],
    }
    new = {"{c}": {**records.generation_record(both, compared, {"model": "tiny", "seed": 7}, (0, 0), {})}}
    data = records.merge_records(records.merge_records(None, old), new)
    entries = history.entries(data)
    assert [(e.uuid, e.label, e.preset) for e in entries] == [
        ("{c}", "Refine #7", "tiny"),  # Compare's layer: the mode its model ran
        ("{0}", "Inpaint #40", "tiny"),
        ("{1}", "Inpaint #41", "tiny"),
    ]
    assert entries[1].caption() == "Inpaint\n#40\ntiny" and "prompt: a fox" in entries[1].tooltip()
    again = history.form_of(entries[2])
    assert (again.mode, again.model, again.prompt, again.steps, again.seed) == (
        "inpaint",
        "tiny",
        "a fox",
        6,
        41,
    )
    assert again.variations == 2 and modes.build_params(again)["seed"] == 41
    winner = history.form_of(entries[0])
    assert (winner.mode, winner.model, winner.seed, winner.compare_models) == ("refine", "tiny", 7, [])
    assert winner.extras == {}  # SD 1.5 ignored SDXL's refine
    assert history.entries(b"not json") == [] and history.entries(None) == []
    # form_values reads what older or newer plugins wrote: unknown keys ignored, missing ones default.
    values = modes.form_values(
        {"mode": "nope", "prompt": "p", "future": 1, "units": [{"model": "m", "x": 2}]}
    )
    assert values.mode == "inpaint" and values.prompt == "p" and values.units[0].model == "m"


def test_job_state_machine(plugin: Any) -> None:
    jobs = sub(plugin, "jobs")
    job = jobs.Job(rid=5, op="inpaint")
    assert job.matches({"type": "accepted", "re": 5}) and not job.matches({"type": "accepted", "re": 6})
    assert job.handle({"type": "accepted", "re": 5, "job": "j1", "position": 2}) == "accepted"
    assert job.state is jobs.JobState.QUEUED and job.position == 2
    assert job.handle({"type": "something-new", "job": "j1"}) is None  # unknown events are ignored
    assert job.handle({"type": "progress", "job": "j1", "step": 1, "total": 4}) == "progress"
    assert job.state is jobs.JobState.RUNNING
    assert job.handle({"type": "result", "job": "j1", "images": []}) == "result"
    assert job.state is jobs.JobState.DONE and job.finished
    assert job.handle({"type": "error", "job": "j1"}) is None  # nothing after the end

    early = jobs.Job(rid=1, op="sdedit")
    early.request_cancel()  # before `accepted`: remembered
    early.handle({"type": "accepted", "re": 1, "job": "j2"})
    assert early.state is jobs.JobState.CANCELLING
    early.handle({"type": "result", "job": "j2"})  # raced the cancel: dropped
    assert early.state is jobs.JobState.CANCELLED and early.result is None

    failed = jobs.Job(rid=2, op="inpaint")
    failed.handle({"type": "error", "re": 2, "code": "invalid_value", "message": "params.steps: bad"})
    assert failed.state is jobs.JobState.FAILED and failed.error_code == "invalid_value"


def test_pending_store_keeps_jobs_across_restarts(plugin: Any, tmp_path: Path) -> None:
    """The file that carries the session token and unfinished jobs over a Krita restart: written at
    once, owner-only, shared by two stores (two windows), tolerant of junk, old records dropped."""
    pending = sub(plugin, "pending")
    path = tmp_path / "krita" / "underpaint-pending.json"
    now = [1_000_000.0]
    store = pending.PendingStore(path, clock=lambda: now[0])
    assert store.jobs == {} and store.session("tcp://a") is None  # no file yet: nothing, no error
    mask = bytes(range(256)) * 4
    record = pending.PendingJob(
        job="j1",
        endpoint="tcp://a",
        session="tok",
        document="/pictures/fox.kra",
        label="Inpaint",
        form={"mode": "inpaint", "seed": 5},
        region=[1, 2, 32, 32],
        size=[64, 64],
        mask=pending.encode_mask(mask),
        submitted=now[0],
    )
    store.set_session("tcp://a", "tok")
    store.put(record)
    assert path.stat().st_mode & 0o777 == 0o600, oct(path.stat().st_mode)

    other = pending.PendingStore(path, clock=lambda: now[0])  # what a restarted Krita reads
    assert other.session("tcp://a") == "tok" and other.session("tcp://b") is None
    [again] = other.of_session("tcp://a", "tok")
    assert again == record and again.mask_bytes() == mask
    assert other.of_session("tcp://a", "other-token") == [] and other.of_session("tcp://b", "tok") == []

    store.move("j1", "/pictures/fox-v2.kra")  # Save As while it ran
    other.put(pending.PendingJob("j2", "tcp://a", "tok", "", "Refine", {}, [0, 0, 8, 8], submitted=now[0]))
    store.load()  # the second store's write did not drop the first one's move
    assert store.jobs["j1"].document == "/pictures/fox-v2.kra" and set(store.jobs) == {"j1", "j2"}
    store.remove("j1")
    assert set(pending.PendingStore(path, clock=lambda: now[0]).jobs) == {"j2"}

    now[0] += pending.MAX_AGE_S + 1  # a week later no daemon keeps the result: dropped when read
    assert pending.PendingStore(path, clock=lambda: now[0]).jobs == {}
    path.write_text("{not json")
    assert pending.PendingStore(path).jobs == {}
    path.write_text(json.dumps({"format": pending.FORMAT, "jobs": {"x": {"job": "x"}, "y": 3}}))
    assert pending.PendingStore(path).jobs == {}  # records without their fields are skipped
    assert pending.same_file(str(path), str(path.parent / "." / path.name)) and not pending.same_file("", "")


def test_reword_request_from_a_record(plugin: Any) -> None:
    """Reword's pure part: which records can be reworded, word weights as typed, the request."""
    rt = sub(plugin, "reword_text")
    params = {"prompt": "a red fox", "seed": 5, "steps": 4, "width": 64, "height": 64, "scheduler": None}
    record = {"op": "txt2img", "preset": "tiny", "params": params}
    tiny = {"name": "tiny", "ops": ["txt2img", "reword"]}
    assert rt.reword_problem(record, tiny) is None and rt.reword_problem(record, None) is None
    assert "Pick an Underpaint result" in rt.reword_problem(None, tiny)
    assert "made by inpaint" in rt.reword_problem({**record, "op": "inpaint"}, tiny)
    assert "cannot reword" in rt.reword_problem(record, {"name": "if", "ops": ["txt2img"]})
    assert "no model 'tiny'" in rt.reword_problem(record, {})
    assert "no prompt" in rt.reword_problem({**record, "params": {"prompt": ""}}, tiny)

    assert rt.parse_weights("") == {}
    assert rt.parse_weights(" snow: 2, red fox : 0.5; sky:0 ") == {"snow": 2.0, "red fox": 0.5, "sky": 0.0}
    for bad, why in (("snow", "word: weight"), ("snow: lots", "not a number"), ("snow: 11", "0 … 10")):
        with pytest.raises(ValueError, match=why):
            rt.parse_weights(bad)
    assert rt.format_weights({"snow": 2.0, "fox": 0.5}) == "snow: 2, fox: 0.5"

    spec = {"params": {k: {} for k in ("op", "prompt", "seed", "steps", "new_prompt", "edit", "weights")}}
    sent = rt.reword_params(record, "a blue fox", "replace", {"fox": 2.0}, spec)
    assert sent == {
        "op": "txt2img",
        "prompt": "a red fox",
        "seed": 5,
        "steps": 4,
        "new_prompt": "a blue fox",
        "edit": "replace",
        "weights": {"fox": 2.0},
    }
    unfiltered = rt.reword_params(record, "a blue fox", "auto", {}, None)
    assert unfiltered["width"] == 64 and unfiltered["variations"] == 1 and "scheduler" not in unfiltered
    assert record["params"] == params  # the stored record is not changed


def test_presets_follow_the_daemon(plugin: Any, daemon: Any) -> None:
    """Against a real daemon's welcome: the modes each preset offers, the reasons for the others, and
    params built for every (preset, mode) that the daemon accepts as they are (queued behind a long
    job, then cancelled: accepted means valid, and nothing is loaded or run)."""
    from underpaint.protocol import Client
    from underpaint.protocol.client import JobCancelled

    modes, presets = sub(plugin, "modes"), sub(plugin, "presets")
    with Client(daemon.endpoint, timeout=30) as client:
        welcome = client.hello()
        tiny = presets.find(welcome, "")
        assert tiny["name"] == welcome["default_model"] and presets.find(welcome, "nope") == {}
        assert "Stable Diffusion 1" in presets.help_text(tiny) and tiny["about"] in presets.help_text(tiny)
        blocker = client.submit("txt2img", {"steps": 200, "width": 512, "height": 512}, model="tiny")
        queued: list[str] = []

        def accepted(job: str) -> None:  # it waits behind the blocker: cancel it before it runs
            client.cancel(job)
            queued.append(job)

        try:
            for preset in presets.presets(welcome):
                offered = [mode for mode, problem in presets.mode_choices(welcome, preset) if problem is None]
                # the preset's ops in its order (ops the docker has no mode for are not offered)
                known = [op for op in preset["ops"] if any(m.op == op for m in modes.MODES)]
                assert [m.op for m in offered] == [*known, "compare"], preset["name"]
                for mode, problem in presets.mode_choices(welcome, preset):
                    if mode not in offered:
                        assert problem.startswith(f"{preset['name']} ({preset['title']}) cannot run ")
                for mode in offered[:-1]:
                    accepted(_submit_form(client, modes, presets, welcome, preset, mode))
            sdedit = [name for name in presets.runners(welcome, "sdedit") if name.startswith("tiny")]
            assert len(sdedit) >= 2, sdedit
            form = modes.FormValues(mode="compare", compare_mode="refine", compare_models=sdedit, seed=1)
            spec = presets.compare_spec(welcome, sdedit, "sdedit")
            params = modes.build_params(form, spec=spec)
            accepted(client.submit("compare", params, {"image": _gray(64, 64, 4)}))
        finally:
            client.cancel(blocker)
            for job in [*queued, blocker]:
                with pytest.raises(JobCancelled):
                    client.wait(job, timeout=60)
        assert len(queued) > 2 * len(presets.presets(welcome))


def _gray(width: int, height: int, channels: int) -> dict[str, Any]:
    """A raw image: a left-to-right ramp (a depth map needs near and far parts)."""
    row = bytes(b for x in range(width) for b in [x * 255 // max(1, width - 1)] * channels)
    return {"width": width, "height": height, "channels": channels, "data": row * height}


def _submit_form(client: Any, modes: Any, presets: Any, welcome: dict, preset: dict, mode: Any) -> str:
    """Submit what the docker would send for this preset and mode (its form defaults)."""
    controlnets = preset.get("controlnets") or ["none"]
    form = modes.FormValues(
        mode=mode.key,
        prompt="a fox",
        instruction="make it winter",
        seed=1,
        model=preset["name"],
        units=[modes.UnitForm(True, "{u}", "U", "none", controlnets[0])],
        mix_layers=[modes.MixLayer("{a}", "A"), modes.MixLayer("{b}", "B")],
        strength=mode.default_strength or 1.0,
    )
    spec = presets.op_spec(welcome, preset, mode.op)
    params = modes.build_params(form, size=(64, 64), spec=spec)
    assert set(params) <= set(spec["params"]), (preset["name"], mode.key)
    images = {}
    if mode.sends_image:
        images["image"] = _gray(64, 64, 4)
    if mode.key == "inpaint":
        images["mask"] = _gray(64, 64, 1)
    if mode.key == "controlnet":
        images["control0"] = _gray(64, 64, 4)
    if mode.key == "mix":
        images |= {"layer0": _gray(64, 64, 4), "layer1": _gray(32, 48, 4)}
    if mode.key == "depth":
        images["depth"] = _gray(64, 64, 1)
    return client.submit(mode.op, params, images, model=preset["name"])


def test_missing_dependencies_message(plugin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    deps = sub(plugin, "deps")
    real = importlib.import_module

    def fake(name: str, *args: Any) -> Any:
        if name == "zmq":
            raise ImportError("No module named 'zmq'")
        return real(name, *args)

    monkeypatch.setattr(deps.importlib, "import_module", fake)
    text = deps.dependency_problem()
    assert text and "pyzmq" in text and "sudo apt install python3-zmq" in text and "pip install" in text
    assert "msgpack" not in text.split("(")[0]  # only what is missing is named first
    monkeypatch.setattr(deps.importlib, "import_module", real)
    assert deps.dependency_problem() is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tick_until(connection: Any, predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {connection.describe()}"
        connection.tick()
        time.sleep(0.01)


def test_connection_down_and_protocol_mismatch(plugin: Any) -> None:
    """The Connection (the docker's network code) outside Krita: no daemon, then a daemon of protocol 2."""
    import zmq

    conn_mod = sub(plugin, "connection")
    port = _free_port()
    conn = conn_mod.Connection(f"tcp://127.0.0.1:{port}", hello_timeout=0.3)
    conn.start()
    assert conn.state is conn_mod.ConnState.CONNECTING
    _tick_until(conn, lambda: conn.state is conn_mod.ConnState.DOWN, 5, "DOWN")
    assert "No Underpaint daemon answers" in conn.describe() and "underpaint serve" in conn.describe()
    with pytest.raises(conn_mod.NotConnected):
        conn.submit("inpaint", {}, {})

    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"tcp://127.0.0.1:{port}")
    from underpaint.protocol.messages import pack, unpack

    try:
        deadline = time.monotonic() + 10
        while conn.state is not conn_mod.ConnState.INCOMPATIBLE:
            assert time.monotonic() < deadline, conn.describe()
            conn.tick()
            if router.poll(10):
                peer, frame = router.recv_multipart()
                hello = unpack(frame)
                assert hello["type"] == "hello" and hello["protocol"] == 1
                assert hello["client"].startswith("underpaint-krita/")
                reply = {
                    "type": "error",
                    "re": hello["id"],
                    "code": "protocol_mismatch",
                    "supported": [2],
                    "message": "protocol 1 is not supported",
                }
                router.send_multipart([peer, pack(reply)])
        assert "speaks protocol version 2; this plugin speaks 1" in conn.describe()
        assert "Update the older" in conn.describe()
    finally:
        conn.close(wait=0)
        router.close(0)


def test_connection_against_daemon(plugin: Any, daemon: Any) -> None:
    """Handshake, status line, a job with previews, and cancel, through the docker's Connection."""
    conn_mod = sub(plugin, "connection")
    events: list[tuple[str, dict]] = []
    conn = conn_mod.Connection(daemon.endpoint, on_job=lambda job, kind, msg: events.append((kind, msg)))
    conn.start()
    try:
        _tick_until(conn, lambda: conn.state is conn_mod.ConnState.CONNECTED, 20, "CONNECTED")
        _tick_until(conn, lambda: conn.daemon_status is not None, 10, "a status reply")
        assert f"Connected to Underpaint {DAEMON_VERSION} on cpu" in conn.describe()
        assert "queued" in conn.describe()
        image = {"width": 64, "height": 64, "channels": 4, "data": bytes(64 * 64 * 4)}
        mask = {"width": 64, "height": 64, "channels": 1, "data": bytes([255]) * (64 * 64)}
        job = conn.submit("inpaint", {"steps": 3, "seed": 1}, {"image": image, "mask": mask}, preview=True)
        _tick_until(conn, lambda: job.finished, 60, "the inpaint result")
        assert job.state.value == "done" and job.result["images"][0]["seed"] == 1
        kinds = [kind for kind, _ in events]
        assert kinds[0] == "accepted" and kinds[-1] == "result" and "progress" in kinds
        assert any("preview" in msg for kind, msg in events if kind == "progress")

        long = conn.submit("inpaint", {"steps": 200, "resolution": 512}, {"image": image, "mask": mask})
        conn.cancel(long)  # before `accepted`: sent once the job id is known
        _tick_until(conn, lambda: long.finished, 30, "the cancel")
        assert long.state.value == "cancelled" and long.result is None
    finally:
        conn.close()


def _daemon_said(daemon: Any, text: str, timeout: float, tick: Callable[[], None] = lambda: None) -> None:
    """Wait until the daemon's log has `text` (ticking a connection meanwhile)."""
    deadline = time.monotonic() + timeout
    while text not in daemon.log():
        assert time.monotonic() < deadline, f"the daemon never logged {text!r}:\n{daemon.log()[-3000:]}"
        tick()
        time.sleep(0.02)


def _small_job(conn: Any, steps: int = 12, seed: int = 3) -> Any:
    image = {"width": 96, "height": 96, "channels": 4, "data": bytes(96 * 96 * 4)}
    mask = {"width": 96, "height": 96, "channels": 1, "data": bytes([255]) * (96 * 96)}
    params = {"steps": steps, "seed": seed, "resolution": 128}
    return conn.submit("inpaint", params, {"image": image, "mask": mask}, preview=False)


def test_connection_survives_a_silent_link(plugin: Any, daemon: Any) -> None:
    """A network that drops every packet mid-job: the Connection says the daemon is lost within ~3 s
    (heartbeats), keeps the job, and when the link is back resumes the session and gets the result
    that finished meanwhile."""
    conn_mod = sub(plugin, "connection")
    host, port = daemon.endpoint.rsplit("/", 1)[-1].split(":")
    relay = relay_mod.Relay((host, int(port)))
    conn = conn_mod.Connection(relay.endpoint)
    conn.start()
    try:
        _tick_until(conn, lambda: conn.state is conn_mod.ConnState.CONNECTED, 20, "CONNECTED")
        session = conn.session
        job = _small_job(conn, steps=8)
        _tick_until(conn, lambda: job.step >= 1, 60, "the job to run")
        relay.silence()
        t0 = time.monotonic()
        _tick_until(conn, lambda: conn.state is conn_mod.ConnState.LOST, 10, "the lost link to show")
        lost_after = time.monotonic() - t0
        assert lost_after < 4.5, f"the silent daemon was noticed after {lost_after:.1f} s"
        assert "Lost the Underpaint daemon" in conn.describe() and "resume" in conn.describe()
        _daemon_said(daemon, f"job {job.job_id} done", 120, conn.tick)  # it finished while we were away
        assert not job.finished and job.state.value == "running", job.state
        relay.restore()
        _tick_until(conn, lambda: job.finished, 60, "the result after the link came back")
        assert job.state.value == "done" and job.result["images"][0]["seed"] == 3
        assert conn.state is conn_mod.ConnState.CONNECTED and conn.welcome["resumed"] is True
        assert conn.session == session
    finally:
        conn.close(wait=0)
        relay.close()


def test_connection_new_socket_mid_job_resumes(plugin: Any, daemon: Any) -> None:
    """Connect pressed again mid-job (same daemon, same keys): a new socket takes the session over and
    the running job's result still arrives on it; the daemon does not cancel it."""
    conn_mod = sub(plugin, "connection")
    conn = conn_mod.Connection(daemon.endpoint)
    conn.start()
    try:
        _tick_until(conn, lambda: conn.state is conn_mod.ConnState.CONNECTED, 20, "CONNECTED")
        session, first_client = conn.session, conn._client
        job = _small_job(conn, steps=10, seed=21)
        _tick_until(conn, lambda: job.step >= 1, 60, "the job to run")
        conn.set_endpoint(daemon.endpoint, force=True)
        assert conn._client is not first_client and not job.finished
        _tick_until(conn, lambda: job.finished, 60, "the result on the new socket")
        assert job.state.value == "done" and job.result["images"][0]["seed"] == 21, job.message
        assert conn.welcome["resumed"] is True and conn.session == session
        assert not re.search(rf"job {job.job_id} (cancelled|stopped)", daemon.log())
    finally:
        conn.close(wait=0)


def test_connection_resumes_a_session_after_a_restart(plugin: Any, daemon: Any) -> None:
    """What a Krita restart does: a job is left running (kept), a new Connection resumes the session
    from its token and adopts the job by id: its result is fetched. An unknown token loses the job."""
    conn_mod = sub(plugin, "connection")
    first = conn_mod.Connection(daemon.endpoint)
    first.start()
    try:
        _tick_until(first, lambda: first.state is conn_mod.ConnState.CONNECTED, 20, "CONNECTED")
        job = _small_job(first, steps=6, seed=9)
        _tick_until(first, lambda: job.job_id is not None, 20, "accepted")
        token = first.session
    finally:
        first.close(wait=0, keep=lambda job: True)  # Krita quits: the job goes on
    _daemon_said(daemon, f"job {job.job_id} done", 120)
    assert f"job {job.job_id} cancelled" not in daemon.log()
    for attempt in ("delivered after the welcome", "fetched again"):
        tokens: list[str] = []
        again = conn_mod.Connection(daemon.endpoint, session=token, on_session=tokens.append)
        adopted = again.adopt(job.job_id, "inpaint")
        again.start()
        try:
            _tick_until(again, lambda j=adopted: j.finished, 30, f"the adopted job's result ({attempt})")
            assert adopted.state.value == "done", (attempt, adopted.message)
            assert adopted.result["images"][0]["seed"] == 9 and tokens == [token]
        finally:
            again.close(wait=0)

    stranger = conn_mod.Connection(daemon.endpoint, session="not-a-session")
    lost = stranger.adopt(job.job_id, "inpaint")
    stranger.start()
    try:
        _tick_until(stranger, lambda: lost.finished, 30, "the job of an unknown session to be lost")
        assert lost.error_code == "job_lost" and "restarted" in lost.message
    finally:
        stranger.close(wait=0)


def test_install_plugin_layout_and_zip(tmp_path: Path) -> None:
    """install-plugin krita and --zip ship the same files; Krita's own importer accepts the zip."""
    home = tmp_path / "home"
    env = _user_env(home)
    out = subprocess.run([*_underpaint(), "install-plugin", "krita"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    pykrita = home / ".local/share/krita/pykrita"
    installed = sorted(p.relative_to(pykrita).as_posix() for p in pykrita.rglob("*") if p.is_file())
    for name in (
        "underpaint_krita.desktop",
        "underpaint_krita/__init__.py",
        "underpaint_krita/docker.py",
        "underpaint_krita/protocol/__init__.py",
        "underpaint_krita/protocol/client.py",
        "underpaint_krita/protocol/regions.py",
    ):
        assert name in installed
    assert not any("__pycache__" in name for name in installed)
    rc = configparser.RawConfigParser()
    rc.optionxform = str  # type: ignore[assignment,method-assign]
    rc.read(home / ".config/kritarc")
    assert rc.get("python", "enable_underpaint_krita") == "true"
    desktop = configparser.RawConfigParser()
    desktop.read(pykrita / "underpaint_krita.desktop")
    assert desktop.get("Desktop Entry", "X-KDE-Library") == "underpaint_krita"
    assert desktop.get("Desktop Entry", "ServiceTypes") == "Krita/PythonPlugin"

    zip_path = tmp_path / "underpaint_krita.zip"
    out = subprocess.run(
        [*_underpaint(), "install-plugin", "krita", "--zip", str(zip_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    with zipfile.ZipFile(zip_path) as zf:
        assert sorted(n for n in zf.namelist() if not n.endswith("/")) == installed
        assert "underpaint_krita/" in zf.namelist()  # Krita's importer looks for the folder entry


def test_zip_imports_with_kritas_importer(krita_binary: str, tmp_path: Path) -> None:
    """Krita's own "Import Python Plugin from File" code accepts the zip and installs the same files."""
    importer = Path("/usr/share/krita/pykrita/plugin_importer/plugin_importer.py")
    need(importer.exists(), f"Krita's plugin importer is not at {importer}")
    zip_path = tmp_path / "underpaint_krita.zip"
    staged = tmp_path / "staged"
    env = _user_env(tmp_path / "home")
    for args in (["--zip", str(zip_path)], ["--dest", str(staged), "--kritarc", str(tmp_path / "kritarc")]):
        out = subprocess.run(
            [*_underpaint(), "install-plugin", "krita", *args], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
    dest = tmp_path / "imported"
    dest.mkdir()
    out = subprocess.run(["python3", str(importer), str(zip_path), str(dest)], capture_output=True, text=True)
    assert out.returncode == 0 and "Imported plugin: Underpaint" in out.stdout, out.stdout + out.stderr
    imported = sorted(p.relative_to(dest / "pykrita").as_posix() for p in dest.rglob("*") if p.is_file())
    assert imported == sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())


def test_enable_in_a_kritarc_krita_wrote(tmp_path: Path) -> None:
    """A kritarc Krita wrote (keys before any section, [A][B] groups) is edited, not rewritten."""
    kritarc = tmp_path / ".config" / "kritarc"
    kritarc.parent.mkdir(parents=True)
    original = (
        "ArtColorSel.ColorSpace=0\nCanvasOnlyActive=false\n\n[MainWindow][DockWidget KisLayerBox]\n"
        "Collapsed=false\n\n[python]\nenable_lastdocumentsdocker=true\nenable_underpaint_krita=false\n"
        "\n[theme]\nTheme=Krita dark\n"
    )
    kritarc.write_text(original)
    out = subprocess.run(
        [*_underpaint(), "install-plugin", "krita"], env=_user_env(tmp_path), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert kritarc.read_text() == original.replace(
        "enable_underpaint_krita=false", "enable_underpaint_krita=true"
    )
    kritarc.write_text("ArtColorSel.ColorSpace=0\n[theme]\nTheme=Krita dark")
    enable_in_kritarc(kritarc)
    assert kritarc.read_text() == (
        "ArtColorSel.ColorSpace=0\n[theme]\nTheme=Krita dark\n\n[python]\nenable_underpaint_krita=true\n"
    )


def test_plugin_is_thin() -> None:
    """No torch, diffusers, numpy or PIL in the plugin; the protocol is imported relatively."""
    source = ROOT / "plugins" / "krita" / "underpaint_krita"
    for path in source.rglob("*.py"):
        text = path.read_text()
        for heavy in ("torch", "diffusers", "numpy", "PIL", "underpaint.protocol"):
            assert f"import {heavy}" not in text and f"from {heavy}" not in text, (
                f"{path.name} imports {heavy}"
            )


# ---------------------------------------------------------------------------------------------------
# Real Krita
# ---------------------------------------------------------------------------------------------------
def _underpaint() -> list[str]:
    return [sys.executable, "-m", "underpaint.daemon.cli"]


def _user_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "KDE_", "QT_"))}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", LANG="C.UTF-8", LC_ALL="C.UTF-8")
    return env


def _system_python_has_bindings() -> bool:
    """Krita embeds the system Python 3: it needs Debian's PyQt5, pyzmq and msgpack there."""
    python = "/usr/bin/python3"  # Debian's, whose dist-packages Krita's embedded Python uses
    probe = [python, "-c", "import PyQt5.QtCore, zmq, msgpack"]
    return Path(python).exists() and subprocess.run(probe, capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def krita_binary() -> str:
    """Krita + Debian's PyQt5/pyzmq/msgpack + Xvfb, installed with apt when missing (root only)."""
    if not (shutil.which("krita") and shutil.which("xvfb-run") and _system_python_has_bindings()):
        need(os.geteuid() == 0, "installing Krita needs root: apt-get install -y " + " ".join(APT_PACKAGES))
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", *APT_PACKAGES]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
        if out.returncode != 0:  # stale package lists: refresh once
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
        assert out.returncode == 0, f"apt-get install failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    krita = shutil.which("krita")
    need(krita is not None and shutil.which("xvfb-run") is not None, "krita and xvfb-run must be on PATH")
    return str(krita)


@pytest.fixture(scope="session")
def krita_home(krita_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's home with the plugin installed by `underpaint install-plugin krita` + the scenario runner."""
    home = tmp_path_factory.mktemp("krita-home")
    out = subprocess.run(
        [*_underpaint(), "install-plugin", "krita"],
        env=_user_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    pykrita = home / ".local/share/krita/pykrita"
    assert (pykrita / "underpaint_krita" / "protocol" / "client.py").exists(), out.stdout
    runner = SCENARIOS / "runner"
    shutil.copytree(
        runner / "underpaint_scenario",
        pykrita / "underpaint_scenario",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy2(runner / "underpaint_scenario.desktop", pykrita)
    kritarc = home / ".config" / "kritarc"
    assert "enable_underpaint_krita=true" in kritarc.read_text()
    enable_in_kritarc(kritarc, "underpaint_scenario")
    return home


def run_krita(
    home: Path,
    scenario: str,
    out: Path,
    config: dict[str, Any],
    *,
    extra_env: dict[str, str] | None = None,
    on_poll: Callable[[], None] | None = None,
    keep_settings: bool = False,
    keep_pending: bool = False,
    daemon: Any = None,
) -> dict[str, Any]:
    """Run full Krita under Xvfb with the scenario; return its result.json, or fail with the logs.

    The docker keeps its form in kritarc: each run starts from the default form unless `keep_settings`;
    and jobs left running at a quit in a file beside it: forgotten unless `keep_pending`. A failure
    shows the end of `daemon`'s log too, when given."""
    out.mkdir(parents=True, exist_ok=True)
    if not keep_settings:
        _forget_form_settings(home)
    if not keep_pending:
        pending_file(home).unlink(missing_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    env = _user_env(home)
    env.update(
        UNDERPAINT_SCENARIO=str(SCENARIOS / scenario),
        UNDERPAINT_SCENARIO_OUT=str(out),
        UNDERPAINT_SCENARIO_TIMEOUT=str(KRITA_TIMEOUT - 20),
        **(extra_env or {}),
    )
    log_path = out / "krita-output.log"
    t0 = time.monotonic()
    for attempt in range(3):  # another Xvfb may take the display xvfb-run -a picked (a race): again
        # -a looks for a free display from -n on: a random start keeps parallel runs apart
        display = str(random.randrange(200, 30000))
        cmd = ["xvfb-run", "-a", "-n", display, "-s", "-screen 0 1280x1024x24", "krita", "--nosplash"]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=out, start_new_session=True
            )
            try:
                while proc.poll() is None:
                    if on_poll is not None:
                        on_poll()
                    if time.monotonic() - t0 > KRITA_TIMEOUT:
                        break
                    time.sleep(0.1)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)  # our own process group: xvfb-run, Xvfb, krita
                    proc.wait()
                    _fail_with_logs(out, f"Krita did not quit within {KRITA_TIMEOUT:g} s", daemon)
        started = (out / "scenario.log").exists() or (out / "result.json").exists()
        if started or b"could not connect to display" not in log_path.read_bytes() or attempt == 2:
            break
    result_path = out / "result.json"
    if not result_path.exists():
        _fail_with_logs(out, f"Krita exited ({proc.returncode}) without writing result.json", daemon)
    result = json.loads(result_path.read_text())
    if not result.get("ok"):
        _fail_with_logs(out, f"the scenario failed:\n{result.get('error')}", daemon)
    result["wall_seconds"] = round(time.monotonic() - t0, 1)
    print(f"{scenario}: Krita ran {result['wall_seconds']} s (scenario {result['seconds']} s)")
    return result


def pending_file(home: Path) -> Path:
    """Where the docker keeps the session token and the jobs a restart must not lose."""
    return home / ".local" / "share" / "krita" / "underpaint-pending.json"


def _forget_form_settings(home: Path) -> None:
    """Drop the docker's saved form (key `form` of kritarc's [underpaint] group), keeping the rest."""
    kritarc = home / ".config" / "kritarc"
    if not kritarc.exists():
        return
    kept, section = [], ""
    for line in kritarc.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.startswith("["):
            section = line.strip()
        if not (section == "[underpaint]" and line.startswith("form=")):
            kept.append(line)
    kritarc.write_text("".join(kept), encoding="utf-8")


def _fail_with_logs(out: Path, why: str, daemon: Any = None) -> None:
    def tail(name: str, n: int = 6000) -> str:
        path = out / name
        return path.read_text(errors="replace")[-n:] if path.exists() else "(none)"

    daemon_log = f"--- daemon log ---\n{daemon.log()[-4000:]}\n" if daemon is not None else ""
    pytest.fail(
        f"{why}\n--- scenario.log ---\n{tail('scenario.log')}\n"
        f"--- Krita output ---\n{tail('krita-output.log')}\n{daemon_log}(files in {out})",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The soft elliptical selection and the sketch (black strokes on transparent), as raw files."""
    folder = tmp_path_factory.mktemp("inputs")
    picture = Image.open(PICTURE).convert("RGBA")
    mask = Image.new("L", picture.size, 0)
    ImageDraw.Draw(mask).ellipse((130, 30, 320, 190), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(6))  # soft edges
    sketch = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(sketch)
    draw.ellipse((150, 45, 300, 175), outline=(0, 0, 0, 255), width=4)
    draw.line((160, 150, 290, 150), fill=(0, 0, 0, 255), width=4)
    (folder / "mask.raw").write_bytes(mask.tobytes())
    (folder / "sketch.raw").write_bytes(sketch.tobytes())
    return {
        "folder": folder,
        "picture": np.asarray(picture),
        "mask": np.asarray(mask),
        "sketch": np.asarray(sketch),
    }


def _bbox(array: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(array)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def _grown(box: tuple[int, int, int, int], pad: int, width: int, height: int) -> list[int]:
    x0, y0 = max(0, box[0] - pad), max(0, box[1] - pad)
    x1, y1 = min(width, box[0] + box[2] + pad), min(height, box[1] + box[3] + pad)
    return [x0, y0, x1 - x0, y1 - y0]


EXPECTED_RESULTS = [  # (job, layer name), bottom to top in the Underpaint group
    ("inpaint", "Inpaint #1234 (tiny): a red fox"),
    ("inpaint", "Inpaint #1235 (tiny): a red fox"),
    ("refine", "Refine #7 (tiny): an oil painting"),
    ("controlnet", "ControlNet #21 (tiny): a cat"),
    ("instruct", "Instruct #5 (tiny): make it winter"),
    ("generate", "Generate #99 (tiny): a blue bird"),
]


def test_krita_docker_session(krita_home: Path, daemon: Any, inputs: dict[str, Any], tmp_path: Path) -> None:
    """Inpaint, Refine, ControlNet, Instruct, Generate, Cancel, undo, save, Upscale, in real Krita."""
    out = tmp_path / "main"
    config = {
        "endpoint": daemon.endpoint,
        "picture": str(PICTURE),
        "mask": str(inputs["folder"] / "mask.raw"),
        "sketch": str(inputs["folder"] / "sketch.raw"),
        "kra": str(out / "session.kra"),
        "png": str(out / "session.png"),
    }
    result = run_krita(krita_home, "scenario_main.py", out, config)
    res = result["results"]
    picture, mask, sketch = inputs["picture"], inputs["mask"], inputs["sketch"]
    height, width = mask.shape
    assert f"Connected to Underpaint {DAEMON_VERSION} on cpu" in res["status"]
    assert res.get("dialogs") is None, res.get("dialogs")

    # Every job ran through the docker and ended as the painter expects.
    jobs = res["jobs"]
    for name in ("inpaint", "refine", "controlnet", "instruct", "generate", "undo", "upscale"):
        assert jobs[name]["state"] == "done", (name, jobs[name])
        assert "progress" in jobs[name]["events"], (name, jobs[name]["events"])
    mask_box = _bbox(mask)
    padded = _grown(mask_box, 32, width, height)
    for name in ("inpaint", "refine", "controlnet", "instruct"):
        assert jobs[name]["region"] == padded, (name, jobs[name]["region"], padded)
    assert jobs["generate"]["region"] == list(mask_box)
    assert [img["seed"] for img in jobs["inpaint"]["images"]] == [1234, 1235]

    # What the plugin reads and sends: the padded crop, R,G,B,A order, the soft mask, the control layers
    # (the hidden sketch flattened on white and inverted; the photo as is).
    x, y, w, h = padded
    assert res["capture"] == {"region": padded, "keys": ["control0", "control1", "image", "mask"]}
    sent = {
        key: np.frombuffer((out / f"capture_{key}.raw").read_bytes(), np.uint8)
        for key in res["capture"]["keys"]
    }
    assert np.array_equal(sent["image"].reshape(h, w, 4)[..., :3], picture[y : y + h, x : x + w, :3])
    assert np.array_equal(sent["mask"].reshape(h, w), mask[y : y + h, x : x + w])
    strokes = sketch[y : y + h, x : x + w, 3] == 255
    control0 = sent["control0"].reshape(h, w, 4)[..., :3]
    assert strokes.any() and (control0[strokes] == 255).all() and (control0[~strokes] == 0).all()
    assert np.array_equal(sent["control1"].reshape(h, w, 4)[..., :3], picture[y : y + h, x : x + w, :3])
    assert res["active_after_jobs"] == "Background"  # the painter's active layer is kept
    assert res["previews_after_jobs"] == []

    # Cancel mid-job: the preview layer was there (locked) and is gone; no result layer was added.
    assert res["cancel_preview"]["name"] == "Underpaint preview" and res["cancel_preview"]["locked"]
    assert (
        res["cancel_preview"]["total"] >= 100
        and res["cancel_preview"]["step"] < res["cancel_preview"]["total"]
    )
    assert jobs["cancel"]["state"] == "cancelled" and "result" not in jobs["cancel"]["events"]
    assert res["after_cancel"]["group"] == res["after_cancel"]["before"]
    assert res["after_cancel"]["previews"] == []
    assert "nothing was added" in res["cancel_message"]

    # Undo removes an inserted result in one step.
    undone = "Inpaint #11 (tiny): undo me"
    assert undone in res["undo_before"] and undone not in res["undo_after"]

    # The saved .kra: original layers byte-identical, results in the group with the right names.
    assert res["saved"] and res["exported"]
    doc = kra.read_kra(Path(config["kra"]))
    assert (doc.width, doc.height) == (width, height)
    top = [(layer.name, layer.nodetype) for layer in doc.layers if layer.nodetype != "selectionmask"]
    # the group goes right above the active layer (Background), below the hidden sketch
    assert top == [("Background", "paintlayer"), ("Underpaint", "grouplayer"), ("Sketch", "paintlayer")], top
    background, sketch_layer = doc.find("Background"), doc.find("Sketch")
    assert np.array_equal(doc.pixels(background)[..., [2, 1, 0, 3]], picture), "the picture layer changed"
    assert np.array_equal(doc.pixels(sketch_layer)[..., [2, 1, 0, 3]], sketch), "the sketch layer changed"
    assert not sketch_layer.visible
    assert background.uuid == res["originals"]["Background"]["uuid"]
    group = doc.find("Underpaint")
    names = [layer.name for layer in group.children]
    assert names == [name for _, name in EXPECTED_RESULTS], names
    assert [layer.visible for layer in group.children] == [True, False, True, True, True, True]
    assert not any(layer.name == "Underpaint preview" for layer in doc.all_layers())

    records = json.loads(doc.annotations["underpaint"])["layers"]
    by_name = {entry["name"]: entry for job in jobs.values() for entry in job.get("layers", [])}
    for (job_name, layer_name), layer in zip(EXPECTED_RESULTS, group.children, strict=True):
        pixels = doc.pixels(layer)
        alpha = pixels[..., 3]
        assert alpha.any(), f"{layer_name} is empty"
        assert not alpha[mask == 0].any(), f"{layer_name} paints outside the selection"
        if job_name == "generate":
            region = mask_box
            assert np.array_equal(alpha[mask > 0], mask[mask > 0]), "Generate's alpha is the selection"
        else:
            region = tuple(padded)
            assert (alpha.astype(int) <= mask.astype(int)).all(), (
                f"{layer_name}: alpha is the mask feathered inwards"
            )
        x, y, w, h = region
        outside = np.ones_like(alpha, bool)
        outside[y : y + h, x : x + w] = False
        assert not pixels[outside].any(), f"{layer_name} has pixels outside its region {region}"
        assert by_name[layer_name]["rect"] == list(region) and by_name[layer_name]["uuid"] == layer.uuid
        record = records[layer.uuid]  # parameters kept with the document, enough to reproduce it
        assert record["name"] == layer_name and record["model"] == record["preset"] == "tiny"
        assert record["family"] == "sd15"
        assert record["seed"] == record["params"]["seed"] and f"#{record['seed']} (tiny):" in layer_name
        assert (
            record["op"]
            == {
                "inpaint": "inpaint",
                "refine": "sdedit",
                "controlnet": "controlnet",
                "instruct": "instruct",
                "generate": "txt2img",
            }[job_name]
        )
        assert [record["x"], record["y"]] == list(region[:2])
    assert records[group.children[3].uuid]["source_layers"] == ["Sketch", "Background"]
    assert records[group.children[4].uuid]["source"] == "layer:Background"  # Instruct read the active layer
    assert records[group.children[2].uuid]["source"] == "visible"
    assert records[group.children[3].uuid]["params"]["units"][0]["model"] == "scribble"

    # The composite: unchanged outside the selection, changed inside.
    composite = np.asarray(Image.open(config["png"]).convert("RGBA"))
    assert composite.shape == picture.shape
    assert np.array_equal(composite[mask == 0], picture[mask == 0]), "pixels outside the selection changed"
    assert not np.array_equal(composite[mask == 255], picture[mask == 255])
    assert np.array_equal(doc.merged(), composite)

    # Upscale opened a new document x4 the selected 80x60 rectangle; the 16-bit document was refused.
    assert [(d["width"], d["height"]) for d in res["upscale_docs"]] == [(320, 240)]
    assert res["upscale_docs"][0]["layers"][-1] == "Upscale #8 (tiny): a cat"
    assert "RGBA 8-bit" in res["deep_message"] and "U16" in res["deep_message"] and not res["deep_busy"]


def test_krita_reconnect_and_cancel_on_close(krita_home: Path, underpaint_home: Path, tmp_path: Path) -> None:
    """Daemon down -> message; daemon up -> reconnect; closing a never-saved document, or quitting Krita
    with one, cancels its job (its result would have nowhere to go; saved ones go on: restart test)."""
    from underpaint.daemon.commands.launch import running_daemon
    from underpaint.protocol import Client

    out = tmp_path / "connection"
    port = _free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    with ExitStack() as stack:
        started: list[Any] = []

        def on_poll() -> None:
            if not started and (out / "want_daemon").exists():
                started.append(stack.enter_context(running_daemon("--endpoint", endpoint, preset="tiny")))

        config = {"down_endpoint": endpoint, "picture": str(PICTURE)}
        result = run_krita(krita_home, "scenario_connection.py", out, config, on_poll=on_poll)
        res = result["results"]
        assert started and started[0].endpoint == endpoint
        assert "No Underpaint daemon answers at " + endpoint in res["down_status"], res["down_status"]
        assert "underpaint serve" in res["down_status"]
        assert not res["down_generate_enabled"] and not res["down_busy"]
        assert "No Underpaint daemon answers at " + endpoint in res["down_generate_tip"]  # says why
        assert f"Connected to Underpaint {DAEMON_VERSION}" in res["up_status"]
        assert not res["up_generate_enabled"] and "Open a document first" in res["up_generate_tip"]
        assert res["up_status_line"] == "Open a document first."  # the status line says why, too
        assert "Select a region first" in res["no_selection_message"] and not res["no_selection_busy"]
        assert res["no_selection_generate"][0] is False
        assert "Select a region first" in res["no_selection_generate"][1]
        assert res["close_entry"]["state"] == "cancelled", res["close_entry"]
        assert "closed" in res["close_message"]
        assert res["close_daemon_status"]["running"] is None

        # Krita quit while the last job ran: the daemon must drop it, not run 200 steps for nobody.
        quit_job = json.loads((out / "quitting").read_text())["job"]
        with Client(endpoint, timeout=10) as client:
            deadline = time.monotonic() + 10
            while True:
                status = client.status()
                if status["running"] is None and status["queued"] == 0:
                    break
                assert time.monotonic() < deadline, (
                    f"{quit_job} still on the daemon after Krita quit: {status}"
                )
                time.sleep(0.2)
        log = started[0].log()
        # "cancelled" (queued) or "stopped (client)" (running): the daemon dropped it for the client
        assert re.search(rf"job {quit_job} (cancelled|stopped \(client\))", log), log[-3000:]


def _keygen(folder: Path, *names: str) -> None:
    for name in names:
        made = subprocess.run([*_underpaint(), "keygen", str(folder), "--client", name], capture_output=True)
        assert made.returncode == 0, made.stderr


def _forget_keys(home: Path) -> None:
    """Drop the key paths a scenario saved (the other scenarios talk to daemons without keys)."""
    kritarc = home / ".config" / "kritarc"
    lines = kritarc.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(("server_key=", "client_key="))]
    kritarc.write_text("".join(kept), encoding="utf-8")


def test_krita_keys_and_a_dropped_link(
    krita_home: Path, underpaint_home: Path, inputs: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 9 in real Krita: a daemon with keys refuses the docker without them (saying what to set)
    and with an unknown key, and serves it with the right pair; a link that goes silent mid-job shows
    as lost within ~3 s and the result still arrives once it is back; a daemon killed mid-job shows at
    once, and after a new daemon starts the job is reported lost and nothing is added."""
    from underpaint.daemon.commands.launch import running_daemon

    out, keys = tmp_path / "link", tmp_path / "keys"
    _keygen(keys, "painter", "stranger")
    (keys / "authorized" / "stranger.key").unlink()  # a valid pair the daemon does not know
    port = _free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    relay = relay_mod.Relay(("127.0.0.1", port))
    config = {
        "endpoint": relay.endpoint,
        "server_key": str(keys / "server.key"),
        "client_key": str(keys / "painter.key_secret"),
        "stranger_key": str(keys / "stranger.key_secret"),
        "picture": str(PICTURE),
        "mask": str(inputs["folder"] / "mask.raw"),
        "kra": str(out / "link.kra"),
        "steps": 30,  # long enough that it is still running when the link goes silent
    }
    with ExitStack() as stack:
        stack.callback(relay.close)
        stack.callback(_forget_keys, krita_home)
        daemons = [stack.enter_context(running_daemon(endpoint=endpoint, keys=keys))]
        seen: dict[str, Any] = {}

        def on_poll() -> None:
            silence, kill = out / "silence", out / "kill"
            if silence.exists() and "silenced" not in seen:
                relay.silence()
                seen["silenced"] = silence.read_text()
            if "silenced" in seen and "restored" not in seen and (out / "silence.seen").exists():
                if f"job {seen['silenced']} done" in daemons[-1].log():  # it finished while cut off
                    relay.restore()
                    seen["restored"] = time.monotonic()
            if kill.exists() and "killed" not in seen:
                seen["killed"] = kill.read_text()
                daemons[-1].process.kill()
                daemons[-1].process.wait()
            if "killed" in seen and len(daemons) == 1 and (out / "kill.seen").exists():
                daemons.append(stack.enter_context(running_daemon(endpoint=endpoint, keys=keys)))

        res = run_krita(krita_home, "scenario_link.py", out, config, on_poll=on_poll)["results"]
        assert res.get("dialogs") is None, res.get("dialogs")

        # Keys: the status line says what is wrong and where to fix it; Generate is off meanwhile.
        no_keys, stranger, missing = res["no_keys"], res["stranger"], res["missing"]
        assert "needs keys" in no_keys["status"] and "Advanced > Daemon" in no_keys["status"], no_keys
        assert "underpaint keygen" in no_keys["status"] and no_keys["seconds"] < 5
        assert "refused this plugin's keys" in stranger["status"] and "authorized" in stranger["status"]
        assert "Cannot use the keys" in missing["status"] and ".missing" in missing["status"], missing
        for seen_state in (no_keys, stranger, missing):
            assert seen_state["generate"][0] is False and "Off:" in seen_state["generate"][1]
        assert f"Connected to Underpaint {DAEMON_VERSION}" in res["connected"]
        assert res["settings"] == {"server_key": config["server_key"], "client_key": config["client_key"]}
        layout = res["keys_layout"]  # Advanced open at Krita's default docker size (keys.png)
        assert layout["hscroll"] == 0 and layout["body_width"] <= layout["viewport_width"], layout
        assert layout["keys_shown"] and layout["untipped"] == [], layout
        log = daemons[0].log()
        assert "hello from underpaint-krita" in log and "session resumed" in log

        # The silent link: lost within ~3 s (heartbeats), the job waited, the result came after it.
        silent = res["silent"]
        assert silent["seconds"] < 4.5, f"the silent link was noticed after {silent['seconds']} s"
        assert "Lost the Underpaint daemon" in silent["status"] and silent["busy"], silent
        assert "out of reach" in silent["line"] and not silent["generate"]
        assert silent["job_state"] in ("queued", "running")
        entry = res["silent_entry"]
        assert entry["state"] == "done" and entry["seed"] == 77, entry
        assert "added 1 layer" in res["silent_message"] and res["resumed"]
        assert f"Connected to Underpaint {DAEMON_VERSION}" in res["back_status"]

        # The killed daemon: lost at once; the new daemon does not know the job: lost, nothing added.
        killed = res["killed"]
        assert killed["seconds"] < 3.5, killed
        assert res["killed_entry"]["state"] == "failed" and res["killed_entry"]["error_code"] == "job_lost"
        assert "restarted" in res["killed_message"] and "lost" in res["killed_message"]
        assert res["killed_layers"]["before"] == res["killed_layers"]["after"] and res["previews"] == []
        assert f"Connected to Underpaint {DAEMON_VERSION}" in res["after_restart_status"]
        assert len(daemons) == 2 and "killed" in seen

    # The saved document: the picture untouched, one result inside the selection, no preview left.
    doc = kra.read_kra(Path(config["kra"]))
    picture, mask = inputs["picture"], inputs["mask"]
    assert np.array_equal(doc.pixels(doc.find("Background"))[..., [2, 1, 0, 3]], picture)
    group = doc.find("Underpaint")
    assert [layer.name for layer in group.children] == ["Inpaint #77 (tiny): a quiet fox"]
    alpha = doc.pixels(group.children[0])[..., 3]
    assert alpha.any() and not alpha[mask == 0].any()
    assert not any(layer.name == "Underpaint preview" for layer in doc.all_layers())


def test_krita_restart_mid_job_delivers_the_layer(
    krita_home: Path, daemon: Any, inputs: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 9 in real Krita: quit Krita mid-job (document not saved); the job finishes with nobody
    connected; a new Krita resumes the session from the kept token and, once the file is opened,
    places the result as if the job had just finished. Closing a saved document mid-job frees the
    docker; reopening the file places that result too. Nothing of the picture changes."""
    out = tmp_path / "restart"
    out.mkdir()
    picture = out / "kept-fox.png"
    shutil.copy2(PICTURE, picture)
    config = {
        "endpoint": daemon.endpoint,
        "picture": str(picture),
        "mask": str(inputs["folder"] / "mask.raw"),
        "kra": str(out / "kept-fox.kra"),
        "png": str(out / "kept-fox-merged.png"),
        "steps": 200,  # still running when Krita quits (or the document closes), on a fast machine too
    }
    quit_config = {**config, "phase": "quit"}
    first = run_krita(krita_home, "scenario_restart.py", out / "quit", quit_config, daemon=daemon)["results"]
    job = first["job"]
    assert not first["finished_at_quit"], "the job ended before Krita quit: the test proves nothing"
    kept_file = Path(first["store_path"])
    assert kept_file == pending_file(krita_home)
    assert kept_file.stat().st_mode & 0o077 == 0, "the session token is a secret: owner only"
    stored = json.loads(kept_file.read_text())
    assert stored["sessions"] == {daemon.endpoint: first["session"]}
    record = stored["jobs"][job]
    assert record["document"] == str(picture) and record["session"] == first["session"]
    assert record["form"]["seed"] == 4321 and record["label"] == "Inpaint" and record["anchor"]
    _daemon_said(daemon, f"job {job} done", 200)  # it finishes with no Krita connected
    assert not re.search(rf"job {job} (cancelled|stopped)", daemon.log()), "quitting cancelled the job"

    res = run_krita(
        krita_home,
        "scenario_restart.py",
        out / "resume",
        {**config, "phase": "resume"},
        keep_pending=True,
        daemon=daemon,
    )["results"]
    assert res.get("dialogs") is None, res.get("dialogs")
    assert res["resumed"] and res["session"] == first["session"]
    assert daemon.log().count("(session resumed)") >= 1
    assert res["waiting"] == [job] and "kept-fox.png" in res["waiting_message"], res["waiting_message"]
    assert "is ready" in res["waiting_message"] and job in res["store_waiting"]["jobs"]
    assert res["first_layers"] == ["Inpaint #4321 (tiny): a patient fox"], res["first_layers"]
    assert (
        "added 1 layer" in res["placed_message"] and "went on while Krita was closed" in res["placed_message"]
    )
    assert res["active"] == "Background" and res["history_title"] == "History (1)"
    assert res["first_entry"]["state"] == "done" and res["first_entry"]["job"] == job

    refine = res["refine_job"]
    assert not res["refine_finished_at_close"], "the job ended before its document was closed"
    assert "kept-fox.kra was closed" in res["closed_message"] and "open" in res["closed_message"]
    assert "A job is running" not in res["closed_generate_tip"]  # the docker is free for new jobs
    assert res["store_parked"]["jobs"][refine]["document"] == config["kra"]
    assert "added 1 layer" in res["reopened_message"] and "was closed" in res["reopened_message"]
    assert res["previews"] == [] and res["store_end"]["jobs"] == {}
    assert res["saved"] and res["saved_again"] and res["exported"]

    # The saved file: the picture untouched, both results in the group, inside the selection, recorded.
    doc = kra.read_kra(Path(config["kra"]))
    original, mask = inputs["picture"], inputs["mask"]
    assert np.array_equal(doc.pixels(doc.find("Background"))[..., [2, 1, 0, 3]], original)
    group = doc.find("Underpaint")
    names = [layer.name for layer in group.children]
    assert names == ["Inpaint #4321 (tiny): a patient fox", "Refine #99 (tiny): a patient fox"], names
    records = json.loads(doc.annotations["underpaint"])["layers"]
    for layer in group.children:
        alpha = doc.pixels(layer)[..., 3]
        assert alpha.any() and not alpha[mask == 0].any(), layer.name
        assert records[layer.uuid]["name"] == layer.name and records[layer.uuid]["model"] == "tiny"
    assert [records[layer.uuid]["seed"] for layer in group.children] == [4321, 99]
    composite = np.asarray(Image.open(config["png"]).convert("RGBA"))
    assert np.array_equal(composite[mask == 0], original[mask == 0]), "pixels outside the selection changed"


def test_krita_reword_a_result(krita_home: Path, daemon: Any, inputs: dict[str, Any], tmp_path: Path) -> None:
    """Issue 11 in real Krita: the Reword section shows a Generate result's stored prompt; invalid
    weights are refused before sending; the edited prompt makes a new layer right above the source,
    shaped like it, recorded as a reword of it; the source and the picture are untouched."""
    out = tmp_path / "reword"
    config = {
        "endpoint": daemon.endpoint,
        "picture": str(PICTURE),
        "mask": str(inputs["folder"] / "mask.raw"),
        "kra": str(out / "reword.kra"),
        "prompt": "a red fox in the snow",
        "new_prompt": "a blue fox in the snow",
    }
    res = run_krita(krita_home, "scenario_reword.py", out, config, daemon=daemon)["results"]
    assert res.get("dialogs") is None, res.get("dialogs")
    assert res["generated"]["state"] == "done" and res["generated"]["seed"] == 5
    assert not res["off_enabled"] and "Pick an Underpaint result layer" in res["off_tip"], res["off_tip"]
    assert res["shown_prompt"] == config["prompt"] and "Generate #5" in res["source_label"]
    layout = res["layout"]  # the open section at Krita's default docker size (reword.png)
    assert layout["hscroll"] == 0 and layout["body_width"] <= layout["viewport_width"], layout
    assert layout["button_shown"] and layout["untipped"] == [], layout
    bad = res["bad_weights"]
    assert "Word weights" in bad["error"] and "lots" in bad["error"] and not bad["busy"] and bad["jobs"] == 0
    assert res["started"] and res["entry"]["state"] == "done" and res["entry"]["op"] == "reword", res["entry"]
    assert "added 1 layer" in res["message"] and res["previews"] == []
    names = ["Generate #5 (tiny): a red fox in the snow", "Reword #5 (tiny): a blue fox in the snow"]
    assert res["layers"] == names and res["source_unchanged"] and res["active"] == names[0]
    assert "job " in daemon.log() and "reword" in daemon.log()

    doc = kra.read_kra(Path(config["kra"]))
    assert np.array_equal(doc.pixels(doc.find("Background"))[..., [2, 1, 0, 3]], inputs["picture"])
    group = doc.find("Underpaint")
    assert [layer.name for layer in group.children] == names  # bottom to top: right above its source
    source, reworded = group.children
    records = json.loads(doc.annotations["underpaint"])["layers"]
    record = records[reworded.uuid]
    assert record["op"] == "reword" and record["reword_of"] == source.uuid and record["seed"] == 5
    params = record["params"]
    assert params["op"] == "txt2img" and params["prompt"] == config["prompt"]
    assert params["new_prompt"] == config["new_prompt"] and params["weights"] == {"snow": 2.0}
    assert params["edit"] == "replace"  # auto, resolved by the daemon: as many words, one swapped
    src, new = doc.pixels(source), doc.pixels(reworded)
    assert np.array_equal(src[..., 3] > 0, new[..., 3] > 0), "the reworded layer has the source's shape"
    assert not new[..., 3][inputs["mask"] == 0].any()
    assert not np.array_equal(src[..., :3], new[..., :3]), "the reworded layer is the same picture"


def test_krita_rank_by_clip(krita_home: Path, daemon: Any, inputs: dict[str, Any], tmp_path: Path) -> None:
    """Issue 11 in real Krita: "Rank by CLIP" only where the preset's op spec lists `rank` (not DDPM),
    greyed out at one variation, tipped and reachable at the default docker size; a ranked Generate of
    3 variations on `tiny`: the visible layer is the best one, each layer stores its score (and shows
    it in its name) in the order the daemon sent them, and the painter's pixels stay as they were."""
    out = tmp_path / "rank"
    config = {
        "endpoint": daemon.endpoint,
        "picture": str(PICTURE),
        "mask": str(inputs["folder"] / "mask.raw"),
        "kra": str(out / "rank.kra"),
        "prompt": "a red fox in the snow",
        "seed": 40,
    }
    res = run_krita(krita_home, "scenario_rank.py", out, config, daemon=daemon)["results"]
    assert res.get("dialogs") is None, res.get("dialogs")
    assert not res["ddpm"]["shown"] and "Rank" not in res["ddpm"]["extra_labels"], res["ddpm"]
    assert res["tiny_one"]["shown"] and not res["tiny_one"]["enabled"], res["tiny_one"]
    assert res["tiny_three"]["shown"] and res["tiny_three"]["enabled"], res["tiny_three"]
    assert "Rank" not in res["tiny_three"]["extra_labels"] and "CLIP" in res["tooltip"]
    layout = res["layout"]
    assert layout["hscroll"] == 0 and layout["body_width"] <= layout["viewport_width"], layout
    assert layout["check_shown"] and layout["untipped"] == [], layout
    assert res["sent_rank"] is True

    entry = res["entry"]
    assert entry["state"] == "done" and "added 3 layer" in res["message"], res["message"]
    sent = [image["score"] for image in entry["images"]]  # as the daemon sent them: best first
    assert len(sent) == 3 and all(isinstance(s, float) for s in sent), sent
    assert sent == sorted(sent, reverse=True) and len(set(sent)) == 3, sent
    assert entry["seed"] == entry["images"][0]["seed"]
    assert sorted(image["seed"] for image in entry["images"]) == [40, 41, 42]
    assert res["previews"] == [] and res["background_unchanged"] and res["saved"]

    doc = kra.read_kra(Path(config["kra"]))
    assert np.array_equal(doc.pixels(doc.find("Background"))[..., [2, 1, 0, 3]], inputs["picture"])
    group = doc.find("Underpaint")
    records = json.loads(doc.annotations["underpaint"])["layers"]
    placed = [layer["uuid"] for layer in res["placed"]]  # the daemon's order, best first
    assert sorted(placed) == sorted(layer.uuid for layer in group.children)
    stored = [records[uuid]["score"] for uuid in placed]
    assert stored == sent, (stored, sent)
    assert [records[uuid]["seed"] for uuid in placed] == [image["seed"] for image in entry["images"]]
    assert all(records[uuid]["params"]["rank"] is True for uuid in placed)
    visible = [layer for layer in group.children if layer.visible]
    assert len(visible) == 1, [(layer.name, layer.visible) for layer in group.children]
    best = max(group.children, key=lambda layer: records[layer.uuid]["score"])
    assert visible[0].uuid == best.uuid == placed[0]
    for layer in group.children:
        score = records[layer.uuid]["score"]
        assert f"score {score:.3f}" in layer.name and records[layer.uuid]["name"] == layer.name, layer.name
    mask = inputs["mask"]
    for layer in group.children:
        assert not doc.pixels(layer)[..., 3][mask == 0].any(), "a result outside the selection"
    assert len({doc.pixels(layer).tobytes() for layer in group.children}) == 3


def test_krita_without_pyzmq(krita_home: Path, tmp_path: Path) -> None:
    """Krita's Python without zmq: the docker loads and tells the painter what to install.

    The plugin is first re-installed over the kritarc that the earlier Krita runs wrote (an upgrade).
    """
    out = subprocess.run(
        [*_underpaint(), "install-plugin", "krita"], env=_user_env(krita_home), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    fake = tmp_path / "no-zmq" / "zmq"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'zmq' (hidden by the test)\")\n")
    result = run_krita(
        krita_home, "scenario_nodeps.py", tmp_path / "nodeps", {}, extra_env={"PYTHONPATH": str(fake.parent)}
    )
    res = result["results"]
    assert res["state"] == "NO_DEPENDENCIES" and not res["generate_enabled"] and not res["busy"]
    assert "pyzmq" in res["status"] and "sudo apt install python3-zmq" in res["status"], res["status"]
    assert "pip install" in res["status"]


# ---------------------------------------------------------------------------------------------------
# Model families in real Krita (GitHub issue #8)
# ---------------------------------------------------------------------------------------------------
FAMILY_STEPS = ["layout", "sdxl", "variation", "depth", "compare", "mix"]
COMPARED = ["tiny", "tiny-sdxl"]
TINY_PRESETS = ["tiny", "tiny-sdxl", "tiny-sd2", "tiny-sd-variation", "tiny-kandinsky22", "tiny-ddpm"]
MODE_OF_OP = {"txt2img": "generate", "sdedit": "refine", "mix": "mix", "variation": "variation"}
MODE_OF_OP |= {op: op for op in ("inpaint", "controlnet", "instruct", "upscale", "depth")}


@pytest.fixture(scope="module")
def family_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """Two partial layers to mix (a sky band and a sun disc) and an opaque depth layer (near = right)."""
    folder, picture = inputs["folder"], inputs["picture"]
    height, width = picture.shape[:2]
    sky = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    ImageDraw.Draw(sky).rectangle((0, 0, width - 1, 79), fill=(70, 130, 220, 255))
    sun = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    ImageDraw.Draw(sun).ellipse((300, 20, 379, 99), fill=(250, 210, 40, 255))
    ramp = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    depth = Image.fromarray(ramp, "L").convert("RGBA")
    layers = {"Sky": sky, "Sun": sun, "Depth": depth}
    for name, image in layers.items():
        (folder / f"{name.lower()}.raw").write_bytes(image.tobytes())
    return {**inputs, **{name: np.asarray(image) for name, image in layers.items()}}


def test_krita_model_families(
    krita_home: Path, daemon: Any, family_inputs: dict[str, Any], tmp_path: Path
) -> None:
    """The model picker, modes per preset, the layout at Krita's default size, and SDXL Inpaint,
    Variation, Depth (with a depth layer), Compare and Kandinsky Mix of two layers, in real Krita."""
    from underpaint.protocol import Client

    out = tmp_path / "families"
    folder = family_inputs["folder"]
    config = {
        "endpoint": daemon.endpoint,
        "picture": str(PICTURE),
        "mask": str(folder / "mask.raw"),
        "sky": str(folder / "sky.raw"),
        "sun": str(folder / "sun.raw"),
        "depth": str(folder / "depth.raw"),
        "kra": str(out / "families.kra"),
        "steps": FAMILY_STEPS,
        "mode_models": TINY_PRESETS,
        "layout_models": ["tiny", "tiny-kandinsky22", "tiny-sd2"],
        "compare_models": COMPARED,
        "depth_model": "tiny-sd2",
    }
    with Client(daemon.endpoint, timeout=30) as client:
        welcome = client.hello()
    by_name = {p["name"]: p for p in welcome["models"]}
    res = run_krita(krita_home, "scenario_families.py", out, config)["results"]
    picture, mask = family_inputs["picture"], family_inputs["mask"]
    height, width = mask.shape
    assert res.get("dialogs") is None, res.get("dialogs")

    # The picker lists every preset of the daemon, starts on its default, and is remembered.
    assert res["models"] == [p["name"] for p in welcome["models"]] and res["default_model"] == "tiny"
    assert res["saved_model"] == "tiny-sdxl" and res["model_after_reconnect"] == "tiny-sdxl"
    # The modes follow the preset: its ops in its order, then Compare (e.g. DDPM: Generate only).
    assert res["modes"]["tiny-ddpm"] == ["generate", "compare"]
    assert res["modes"]["tiny-sd-variation"] == ["variation", "compare"]
    assert "mix" in res["modes"]["tiny-kandinsky22"] and "depth" in res["modes"]["tiny-sd2"]
    for name in TINY_PRESETS:
        offered = [MODE_OF_OP[op] for op in by_name[name]["ops"] if op in MODE_OF_OP] + ["compare"]
        assert res["modes"][name] == offered, (name, res["modes"][name])
        tip = res["model_tips"][name]
        assert by_name[name]["title"] in tip and by_name[name]["about"] in tip, tip
        for mode, reason in res["mode_tips"][name].items():
            if mode not in offered:  # greyed out, saying why and which models can
                assert reason.startswith(f"{name} ({by_name[name]['title']}) cannot "), reason
                assert "models that can: " in reason or "no model of this daemon can" in reason
    assert "tiny-sdxl" in res["mode_tips"]["tiny-ddpm"]["inpaint"]
    # Fields the painter left alone take each preset's defaults; what they set is kept.
    assert res["guidance"]["tiny"] == 7.5 and res["guidance"]["tiny-kandinsky22"] == 4.0
    assert res["guidance"]["tiny-sd-variation"] == 3.0 and res["guidance_kept"] == 6.0
    assert res["steps"]["tiny-ddpm"] == 1000 and res["steps"]["tiny-kandinsky22"] == 50
    assert res["steps_after_ddpm"] == 50

    # Usable at Krita's default size: no horizontal scrolling in any mode; prompt and Generate shown.
    assert res["layout"], "no layout was checked"
    for tag, seen in res["layout"].items():
        assert seen["hscroll"] == 0 and seen["body_width"] <= seen["viewport_width"], (tag, seen)
        assert seen["generate_shown"] and seen["mode_shown"], (tag, seen)
        assert seen["text_shown"] in (True, None), (tag, seen)
        assert seen["untipped"] == [], (tag, seen["untipped"])  # every control explains itself
        assert (out / "screens" / f"{tag.replace(':', '-')}.png").stat().st_size > 0
    assert res["layout"]["tiny:generate"]["text_shown"] and res["layout"]["tiny:instruct"]["text_shown"]

    # The model's own options: SDXL's refine is offered (and sent), SD 1.5 has none.
    # (Options every family has, e.g. `rank`, may be listed too: they come from the same op specs.)
    assert "refine" in res["sdxl_options"] and "refine" not in res["tiny_options"]
    assert "refine" in res["compare_options"]  # what any compared preset takes
    assert not res["variation_prompt_shown"]  # variation takes no prompt
    jobs = res["jobs"]
    for name in ("sdxl", "variation", "depth", "compare", "mix"):
        assert jobs[name]["state"] == "done", (name, jobs[name])
        assert "progress" in jobs[name]["events"], (name, jobs[name]["events"])
    assert res["active_after_jobs"] == "Background"
    assert "Failed" not in res["compare_message"], res["compare_message"]

    doc = kra.read_kra(Path(config["kra"]))
    top = [(layer.name, layer.nodetype) for layer in doc.layers if layer.nodetype != "selectionmask"]
    assert top == [
        ("Background", "paintlayer"),
        ("Underpaint", "grouplayer"),  # above the painter's active layer
        ("Sky", "paintlayer"),
        ("Sun", "paintlayer"),
        ("Underpaint", "grouplayer"),  # Mix: above the layers it blended (Sun became active)
        ("Depth", "paintlayer"),
    ], top
    layers = [layer for layer in doc.layers if layer.nodetype != "selectionmask"]
    originals = {"Background": picture, **{k: family_inputs[k] for k in ("Sky", "Sun", "Depth")}}
    for layer in layers:
        if layer.name in originals:  # the painter's layers, byte for byte
            assert np.array_equal(doc.pixels(layer)[..., [2, 1, 0, 3]], originals[layer.name]), layer.name
            assert layer.uuid == res["layers"][layer.name]
    records = json.loads(doc.annotations["underpaint"])["layers"]
    compared = {name: jobs["compare"]["compare"][i] for i, name in enumerate(COMPARED)}
    expected = [  # (preset, layer name pattern), bottom to top
        ("tiny-sdxl", re.escape("Inpaint #5 (tiny-sdxl): a red fox")),
        ("tiny-sd-variation", re.escape("Variation #3 (tiny-sd-variation)")),
        ("tiny-sd2", re.escape("Depth #4 (tiny-sd2): a stone cat")),
        *[(name, re.escape(f"Refine #7 ({name}, ") + r"\d+\.\d\d s\): an oil painting") for name in COMPARED],
    ]
    group = layers[1]
    assert len(group.children) == len(expected), [c.name for c in group.children]
    padded = tuple(_grown(_bbox(mask), 32, width, height))
    for (preset, pattern), layer in zip(expected, group.children, strict=True):
        assert re.fullmatch(pattern, layer.name), (pattern, layer.name)
        record = records[layer.uuid]
        assert record["preset"] == record["model"] == preset and record["name"] == layer.name
        assert record["family"] == by_name[preset]["family"]
        assert set(record["params"]) <= set(by_name[preset]["op_specs"][record["op"]]["params"])
        pixels = doc.pixels(layer)
        alpha = pixels[..., 3]
        assert alpha.any() and (alpha.astype(int) <= mask.astype(int)).all(), layer.name
        outside = np.ones_like(alpha, bool)
        x, y, w, h = padded
        outside[y : y + h, x : x + w] = False
        assert not pixels[outside].any(), f"{layer.name} has pixels outside {padded}"
        assert [record["x"], record["y"]] == [x, y]
    sdxl, variation, depth, *compare_records = (records[c.uuid] for c in group.children)
    assert sdxl["params"]["refine"] == 0.5 and sdxl["op"] == "inpaint"
    assert variation["op"] == "variation" and "prompt" not in variation["params"]
    assert depth["op"] == "depth" and depth["source_layers"] == ["Depth"]
    for name, record in zip(COMPARED, compare_records, strict=True):
        assert record["op"] == "sdedit" and record["mode"] == "compare" and record["seed"] == 7
        assert record["compare"]["model"] == name and record["compare"]["run"] == compared[name]["run"]
    assert compare_records[0]["compare"]["ignored"] == ["refine"]  # SD 1.5 does not take it
    assert compare_records[1]["params"]["refine"] == 0.5
    assert [c.visible for c in group.children] == [True, True, True, True, False]

    # Mix: two selected layers and the prompt, weighted, blended into a canvas-sized layer at (0, 0).
    (mixed,) = layers[4].children
    assert mixed.name == "Mix #8 (tiny-kandinsky22): a red fox", mixed.name
    record = records[mixed.uuid]
    assert record["op"] == "mix" and record["source_layers"] == ["Sun", "Sky"]
    assert [(i.get("image"), i.get("prompt"), i["weight"]) for i in record["params"]["items"]] == [
        ("layer0", None, 0.5),
        ("layer1", None, 1.0),
        (None, "a red fox", 2.0),
    ]
    assert res["mix_panel"] == ["Sun", "Sky"]
    mix_pixels = doc.pixels(mixed)
    assert (mix_pixels[..., 3] == 255).all() and [record["x"], record["y"]] == [0, 0]
    assert mix_pixels[..., :3].std() > 0  # a picture, not a flat fill


# ---------------------------------------------------------------------------------------------------
# The docker as painters meet it (GitHub issues #10 and #13)
# ---------------------------------------------------------------------------------------------------
def _layout_ok(layout: dict[str, Any], out: Path) -> None:
    """Usable at Krita's default size: no sideways scrolling, prompt and Generate shown, all tipped."""
    assert layout, "no layout was checked"
    for tag, seen in layout.items():
        assert seen["hscroll"] == 0 and seen["body_width"] <= seen["viewport_width"], (tag, seen)
        assert seen["generate_shown"] and seen["mode_shown"], (tag, seen)
        assert seen["text_shown"] in (True, None), (tag, seen)
        assert seen["untipped"] == [], (tag, seen["untipped"])


def test_krita_editor(krita_home: Path, daemon: Any, inputs: dict[str, Any], tmp_path: Path) -> None:
    """Advanced folded, Generate off with the reason (and on again), progress in the painter's steps,
    the job's document named, one undo step per job, the history strip, weight keys, syntax errors."""
    out = tmp_path / "editor"
    folder = inputs["folder"]
    config = {
        "endpoint": daemon.endpoint,
        "picture": str(PICTURE),
        "mask": str(folder / "mask.raw"),
        "sketch": str(folder / "sketch.raw"),
        "kra": str(out / "editor.kra"),
    }
    res = run_krita(krita_home, "scenario_editor.py", out, config)["results"]
    assert res.get("dialogs") is None, res.get("dialogs")

    # Advanced is folded away by default; the docker fits Krita's default size folded and open.
    assert res["advanced_open_at_start"] is False
    _layout_ok(res["layout"], out)
    assert res["folded_hidden"] == [False, False, False] and res["open_shown"] == [True, True, True]
    assert (out / "screens" / "editor-folded.png").stat().st_size > 0

    # A disabled Generate says why (tooltip and message line); the hint goes when its cause does.
    off = {k: res[k] for k in ("no_document", "no_selection", "no_instruction")}
    assert "Open a document first" in off["no_document"]["tip"]
    assert off["no_document"]["status"] == "Open a document first."
    assert "Select a region first" in off["no_selection"]["tip"]
    assert "Select a region first" in off["no_selection"]["status"]
    assert "needs an instruction" in off["no_instruction"]["tip"]
    assert "needs an instruction" in off["no_instruction"]["status"]
    assert not any(state["enabled"] for state in off.values())
    for key in ("with_selection", "with_instruction"):  # back on: the status line shows the daemon
        assert res[key]["enabled"] and res[key]["status"].startswith("Connected to Underpaint"), res[key]
        assert res[key]["tip"].startswith("run the mode"), res[key]
    # An error about a layer that is gone clears once another layer is picked.
    assert "is gone" in res["gone_layer"]["message"] and not res["gone_layer"]["busy"]
    assert res["gone_layer_after"]["message"] == "" and res["gone_layer_after"]["enabled"]

    jobs = res["jobs"]
    for name in ("inpaint", "refine", "again", "weighted"):
        assert jobs[name]["state"] == "done", (name, jobs[name])
    assert jobs["cancel"]["state"] == "cancelled"

    # One job = one undo step: the job that made the group (undo takes group and layer, redo brings
    # both back); several layers into an existing group are one step each; a cancel adds and removes.
    undo = res["undo"]
    assert undo["inpaint"] == ["Add Layer"], undo
    assert res["undone_top"] == ["Background"] and res["redone"] == ["Inpaint #11 (tiny): a red fox"]
    assert undo["refine"] == ["Add Layer", "Add Layer"], undo
    assert undo["cancel"] == ["Add Layer", "Remove Layer"], undo
    assert res["active_after_cancel"] == "Background"  # the painter's layer, not a neighbour of the preview

    # Progress in the steps the painter asked for, though the sampler makes one call more (PNDM).
    assert jobs["inpaint"]["progress"] == "step 4 of 4" and jobs["inpaint"]["calls"] == [5, 5]
    assert jobs["refine"]["progress"] == "picture 2 of 2 \u00b7 step 4 of 4"  # 8 steps at strength 0.5
    assert jobs["refine"]["calls"] == [10, 10]
    seen = res["progress"]["inpaint"] + res["progress"]["refine"]
    for text, percent, step, total in seen:
        assert re.fullmatch(r"(picture [12] of 2 \u00b7 )?step [1-4] of 4", text), text
        assert percent == step * 100 // total
    # The long job that was cancelled: it named its document while another one was shown.
    assert res["other_shown_message"].startswith(f"Inpaint in {res['job_doc_name']}: step ")
    assert re.search(r"step \d+ of 200$", res["other_shown_message"]), res["other_shown_message"]

    # The history strip: every result of the document, newest first, with thumbnail, mode, seed, preset.
    assert res["strip"] == ["Refine\n#12\ntiny", "Refine\n#13\ntiny", "Inpaint\n#11\ntiny"], res["strip"]
    assert all(res["strip_icons"]) and res["strip_title"] == "History (3)"
    restored = res["restored"]
    assert {k: restored[k] for k in ("mode", "model", "prompt", "steps", "seed", "variations")} == {
        "mode": "inpaint",
        "model": "tiny",
        "prompt": "a red fox",
        "steps": 4,
        "seed": 11,
        "variations": 1,
    }, restored
    assert restored["strength"] == 1.0 and not restored["random"] and "seed 11" in restored["message"]

    # Weights typed with Ctrl+Up / Ctrl+Down, and sent as typed.
    assert res["weights"] == [
        "a red (fox:1.1) in snow",
        "a red (fox:1.2) in snow",
        "a red fox in snow",
        "a (red fox:0.9) in snow",
        "a (red fox:0.9) in snow",  # up, then Ctrl+Z
        "blurry, ugly",  # the same in the negative prompt (a line edit)
        "blurry, (ugly:1.1)",
    ]
    # A prompt the daemon cannot read: the error under the prompt, the cursor at the '(' (character 2).
    assert jobs["malformed"]["state"] == "failed" and jobs["malformed"]["error_code"] == "invalid_value"
    error = res["syntax_error"]
    assert error["shown"] and "2" in error["text"] and error["cursor"] == 2 and error["focus"], error
    assert "failed" in error["message"]
    negative = res["negative_error"]  # weight 9 is out of range: the cursor at the 9 (character 14)
    assert jobs["malformed_negative"]["error_code"] == "invalid_value" and negative["shown"], negative
    assert "negative_prompt" in negative["text"] and negative["focus"] and negative["cursor"] == 14
    assert not res["negative_error_after"]
    after = res["syntax_error_after"]
    assert not after["shown"] and after["message"] == "" and after["prompt"] == "a \\(red fox in snow"

    # The saved file: the reused settings made the same picture again, bit for bit.
    doc = kra.read_kra(Path(config["kra"]))
    records = json.loads(doc.annotations["underpaint"])["layers"]
    group = doc.find("Underpaint")
    by_name = {layer.name: layer for layer in group.children}
    first = by_name["Inpaint #11 (tiny): a red fox"]
    again = [c for c in group.children if c.name == first.name and c.uuid != first.uuid]
    assert len(again) == 1 and np.array_equal(doc.pixels(first), doc.pixels(again[0]))
    weighted = records[jobs["weighted"]["layers"][0]["uuid"]]["params"]
    assert weighted["prompt"] == "a (red fox:0.9) in snow"
    assert weighted["negative_prompt"] == "blurry, (ugly:1.1)"
    assert not any(layer.name == "Underpaint preview" for layer in doc.all_layers())


def test_krita_settings_persist(krita_home: Path, daemon: Any, tmp_path: Path) -> None:
    """Every form field, the model, the mode and the folded sections survive a Krita restart."""
    config = {
        "endpoint": daemon.endpoint,
        "dead_endpoint": f"tcp://127.0.0.1:{_free_port()}",
        "model": "tiny-sdxl",
        "compare_models": ["tiny", "tiny-sdxl"],
    }
    first = run_krita(krita_home, "scenario_settings.py", tmp_path / "set", {**config, "phase": "set"})
    wrote = first["results"]["set"]
    assert first["results"]["saved"], "nothing was saved to Krita's settings"
    second = run_krita(
        krita_home,
        "scenario_settings.py",
        tmp_path / "check",
        {**config, "phase": "check"},
        keep_settings=True,
    )
    res = second["results"]
    values = wrote["values"]
    # What was set really differs from the defaults, so the comparison below can fail.
    assert values["mode"] == "refine" and values["model"] == "tiny-sdxl" and values["scheduler"]
    assert values["seed"] == 4242 and values["extras"] == {"refine": 0.3} and wrote["advanced_open"]
    assert values["units"][1]["enabled"] and values["units"][1]["invert"] and values["source"] == "layer"
    assert values["speed"] == "live" and values["live_delay"] == 650  # issue 10: Speed and Live delay
    assert res["model_setting"] == "tiny-sdxl" and res["state_before"] != "CONNECTED"
    assert res["before_welcome"]["values"]["model"] == ""  # the picker lists no model before a welcome
    for when in ("before_welcome", "after_welcome"):  # texts, numbers and the mode need no daemon
        seen = res[when]["values"]
        for key in ("mode", "prompt", "negative_prompt", "instruction", "strength", "steps", "guidance"):
            assert seen[key] == values[key], (when, key, seen[key], values[key])
        for key in ("image_guidance", "seed", "variations", "resolution", "padding", "feather", "factor"):
            assert seen[key] == values[key], (when, key, seen[key], values[key])
        assert (
            seen["source"] == "layer" and seen["prompt_weight"] == 1.5 and seen["compare_mode"] == "inpaint"
        )
        assert res[when]["advanced_open"] and not res[when]["history_open"]
    # Once the daemon said what it serves: the model, its sampler, options, ControlNets, compared models.
    after = res["after_welcome"]
    assert after["values"] == values, {
        k: (after["values"][k], v) for k, v in values.items() if after["values"][k] != v
    }
    assert after["ticked"] == ["tiny", "tiny-sdxl"] and after["extras"] == {"refine": 0.3}
    assert after["seed_text"] == "4242" and not after["random"]


# ---------------------------------------------------------------------------------------------------
# Live mode, LoRA rows and the live sampler setting (GitHub issue #10)
# ---------------------------------------------------------------------------------------------------
LIVE_STEPS = 120  # quality steps of the painting phase: a job (72 steps at strength 0.6) outlasts a stroke


@pytest.fixture(scope="module")
def lora_daemon(underpaint_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A daemon whose config adds `tiny-lora`: the tiny SD 1.5 model with one seeded LoRA file."""
    from lora_files import build_lora

    from underpaint.daemon.commands.launch import running_daemon

    folder = tmp_path_factory.mktemp("krita-loras")
    lora = build_lora(underpaint_home / "models", "sd15", folder / "style.safetensors")
    config = folder / "presets.toml"
    config.write_text(f'[presets.tiny-lora]\nbuiltin = "tiny"\n[presets.tiny-lora.loras]\nstyle = "{lora}"\n')
    with running_daemon("--config", str(config), preset="tiny") as proc:
        yield proc


def test_krita_live_mode_loras_and_live_sampler(
    krita_home: Path, lora_daemon: Any, inputs: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 10 in real Krita: Live on/off leaves every other layer as it was; painting while live
    supersedes older jobs and ends on the result for the final canvas (re-run here through the Python
    client); Keep adds a recorded result layer; LoRA rows change pixels by weight (0 = none) and come
    back from a history click; the Speed setting "Live" sends the preset's live sampler setting."""
    from underpaint.protocol import Client

    out = tmp_path / "live"
    config = {
        "endpoint": lora_daemon.endpoint,
        "picture": str(PICTURE),
        "kra": str(out / "live.kra"),
        "model": "tiny-lora",
        "lora": "style",
        "steps": LIVE_STEPS,
        "dead_endpoint": f"tcp://127.0.0.1:{_free_port()}",
    }
    res = run_krita(krita_home, "scenario_live.py", out, config, daemon=lora_daemon)["results"]
    assert res.get("dialogs") is None, res.get("dialogs")
    assert res["lora_rows"] == ["style"] and res["lora_panel_shown"], res
    with Client(lora_daemon.endpoint, timeout=120) as client:
        preset = next(p for p in client.models()["presets"] if p["name"] == "tiny-lora")
        live_map = preset.get("live") or {"steps": 4, "guidance_scale": 2.0}

        # 1. On and off: the live layer on top, a result in it, the live sampler sent; off: all as before.
        one = res["phase1"]
        assert res["live_checked"] and one["top"] == "Underpaint live" and one["live_layers"] == 1, one
        assert one["active"] == "Paint" and one["keep_enabled"], one
        # A fresh daemon loads the model for the first job: the docker said so (PROTOCOL.md 6.10).
        assert one["stats"]["loading"] >= 1 and one["loading_said"].startswith("Live: loading "), one
        assert one["stats"]["placed"] >= 1 and one["stats"]["lane"].startswith("live:"), one
        spec = preset["op_specs"]["sdedit"]["params"]
        for name, value in live_map.items():
            if name in spec and name != "loras":
                assert one["sent"][name] == value, (name, one["sent"])
        assert not one["off_checked"] and one["off_live_layers"] == 0 and not one["keep_after_off"], one
        assert one["unchanged"] and one["order_unchanged"], "Live on/off changed another layer"
        layout = res["layout"]
        _layout_ok({"live": layout}, out)
        assert layout["live_shown"] and layout["lora_row"] and layout["live_text"] == "Live: on", layout

        # 2. Painting while live: superseded jobs, one fixed seed, the final canvas's result.
        two = res["phase2"]
        stats = two["stats"]
        assert stats["superseded"] >= 1 and stats["sent"] >= 3, stats
        assert len(two["seeds"]) == 1 and two["live_layers"] == 1 and two["top"] == "Underpaint live", two
        assert two["errors"] == [] and two["keep_enabled"], two
        assert res["input_is_final_canvas"], "the last live job did not read the final canvas"
        params = json.loads((out / "live-params.json").read_text())
        model = params.pop("model")
        assert params["seed"] == two["seeds"][0] and params["steps"] == LIVE_STEPS, params
        width, height = Image.open(PICTURE).size
        sent = {"format": "raw", "width": width, "height": height, "channels": 4}
        sent["data"] = (out / "live-input.raw").read_bytes()
        again = client.run("sdedit", params, {"image": sent}, model=model)["images"][0]
        x, y, w, h = two["rect"]
        assert (again.get("x", 0), again.get("y", 0), again["width"], again["height"]) == (x, y, w, h)
        expected_rgba = np.frombuffer(bytes(again["data"]), np.uint8).reshape(h, w, 4)
        shown = np.frombuffer((out / "live-layer.raw").read_bytes(), np.uint8).reshape(h, w, 4)
        assert np.array_equal(shown[..., [2, 1, 0, 3]], expected_rgba), "the live layer is not the final job"
        assert two["off_live_layers"] == 0 and two["unchanged"], "Live off changed another layer"
        # Undo History: the live layer comes as one step however often its pixels change, Keep is one
        # step, Live off one.
        steps = {"live": ["Add Layer"], "keep": ["Add Layer"], "off": ["Remove Layer"]}
        assert res["undo"] == steps, res["undo"]
        assert res["kept_equal"] and "Kept the live result" in res["kept_message"], res["kept_message"]

        # 3. LoRAs by weight; the live sampler on Generate; a history click restores the LoRA.
        loras = res["loras"]
        assert all(run["state"] == "done" for run in loras["runs"].values()), loras
        assert loras["zero_equals_none"] and loras["one_differs"], loras
        assert res["restored"]["clicked"] == 5 and res["restored"]["loras"] == [
            {"name": "style", "weight": 1.0}
        ]
        assert res["live_sampler"]["state"] == "done", res["live_sampler"]

    doc = kra.read_kra(Path(config["kra"]))
    with pytest.raises(KeyError):
        doc.find("Underpaint live")  # Live off took it out before the save
    records = json.loads(doc.annotations["underpaint"])["layers"]
    kept = [r for r in records.values() if r.get("live")]
    assert len(kept) == 1 and kept[0]["op"] == "sdedit" and kept[0]["seed"] == two["seeds"][0], kept
    assert kept[0]["params"]["steps"] == LIVE_STEPS and kept[0]["form"]["mode"] == "refine"
    assert kept[0]["form"]["seed"] == two["seeds"][0]  # a history click makes that picture again
    runs = res["loras"]["runs"]
    assert records[runs["one"]["uuid"]]["params"]["loras"] == [{"name": "style", "weight": 1.0}]
    assert records[runs["zero"]["uuid"]]["params"]["loras"] == [{"name": "style", "weight": 0.0}]
    assert not records[runs["none"]["uuid"]]["params"].get("loras")
    switched, closed = res["switched"], res["closed"]
    assert not switched["checked"] and switched["old_live_layers"] == 0, switched
    assert "another document is shown" in switched["message"], switched
    assert not closed["checked"] and "Live is off" in closed["message"], closed
    control = res["controlnet"]
    assert control["mode"] == "controlnet" and control["sent_for_sketch"] == 1, control
    assert control["units"][0]["model"] == "scribble" and "control0" in control["images"], control
    lost = res["lost"]
    assert lost["sent_while_lost"] == 0 and lost["still_on"] and "Internal error" not in lost["message"], lost
    assert lost["placed_after"] >= 1 and lost["live_layers_after_off"] == 0, lost
    stack = res["stack"]
    assert len(stack["layers"]) >= 6 and stack["sent_for_background"] == 1, stack
    assert stack["reads_max"] <= 2 and stack["background_in_input"], stack
    busy = res["generate_while_live"]
    assert busy["state"] == "done" and busy["paused_ticks"] >= 1, busy
    assert busy["sent_while_busy"] == 0 and busy["sent_after"] >= 1, busy
    fast = records[res["live_sampler"]["uuid"]]["params"]
    for name in ("steps", "guidance_scale", "scheduler"):
        if name in live_map:
            assert fast[name] == live_map[name], (name, fast, live_map)


def test_lora_and_live_sampler_params(plugin: Any) -> None:
    """What the LoRA rows and the Speed setting send: only keys the op spec lists; the live setting's
    LoRAs join the painter's (the painter's weight wins for a name in both); stored forms read back."""
    modes, jobs = sub(plugin, "modes"), sub(plugin, "jobs")
    spec = {"params": {n: {} for n in ("prompt", "steps", "guidance_scale", "seed", "strength", "loras")}}
    form = modes.FormValues(mode="refine", prompt="p", seed=4, loras=[{"name": "style", "weight": 0.5}])
    assert modes.build_params(form, spec=spec)["loras"] == [{"name": "style", "weight": 0.5}]
    live = {"steps": 2, "guidance_scale": 1.0, "scheduler": "lcm", "loras": [{"name": "lcm", "weight": 1.0}]}
    fast = modes.build_params(form, spec=spec, live=live)
    assert fast["steps"] == 2 and fast["guidance_scale"] == 1.0 and "scheduler" not in fast  # not in spec
    assert fast["loras"] == [{"name": "style", "weight": 0.5}, {"name": "lcm", "weight": 1.0}]
    both = modes.build_params(
        modes.FormValues(mode="refine", loras=[{"name": "lcm", "weight": 0.3}]), spec=spec, live=live
    )
    assert both["loras"] == [{"name": "lcm", "weight": 0.3}]
    no_loras = {"params": {"prompt": {}, "steps": {}}}
    assert "loras" not in modes.build_params(form, spec=no_loras, live=live)
    assert "loras" not in modes.build_params(modes.FormValues(mode="refine"), spec=spec)
    live_setting = sub(plugin, "protocol.live").live_setting  # the vendored protocol's, shared with GIMP
    assert live_setting({}) == {"steps": 4, "guidance_scale": 2.0}  # a daemon without `live`
    assert live_setting({"live": {"steps": 1}}) == {"steps": 1}
    stored = modes.form_values({"loras": [{"name": "a", "weight": 9}, {"weight": 1}, "x"], "speed": "warp"})
    assert stored.loras == [{"name": "a", "weight": 2.0}] and stored.speed == "auto"
    job = jobs.Job(rid=1, op="sdedit", job_id="j1", state=jobs.JobState.RUNNING)
    assert job.handle({"type": "cancelled", "job": "j1", "reason": "superseded", "by": "j2"}) == "cancelled"
    assert job.reason == "superseded" and job.state is jobs.JobState.CANCELLED
    waiting = jobs.Job(rid=2, op="sdedit", job_id="j3", state=jobs.JobState.QUEUED)
    event = {"type": "loading", "job": "j3", "what": "unet of sd15", "elapsed_s": 12.4}
    event["total_bytes"] = 3_400_000_000
    assert waiting.handle(event) == "loading" and waiting.state is jobs.JobState.QUEUED
    assert jobs.loading_text(waiting.loading) == "loading unet of sd15\u2026 12 s (3.4 GB)"
    downloading = {"what": "x", "elapsed_s": 2, "bytes": 5_000_000}
    assert jobs.loading_text(downloading) == "loading x\u2026 2 s (5.0 MB so far)"
    started = {"type": "progress", "job": "j3", "step": 1, "total": 4}
    assert waiting.handle(started) == "progress" and waiting.loading is None
    assert waiting.handle({"type": "teleport", "job": "j3"}) is None  # unknown events are ignored


def test_krita_live_polling_bench_section(krita_binary: str, tmp_path: Path) -> None:
    """bench section 12 (opt-in there, run here where Krita is sure to be installed): Live's per-tick
    canvas check inside real Krita reads at most two layers per tick after the first, still sees a
    stroke at the next tick and a change on another layer within as many ticks as there are layers."""
    raw = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--sections", "12", "--json", str(raw)],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=360,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(raw.read_text())
    checks = result["checks"]
    assert len(checks) == 4 and all(checks.values()), checks
    poll = result["data"]["krita_poll"]
    assert max(poll["reads"][1:]) <= 2 and poll["reads"][0] == poll["layers"], poll
    assert len(poll["baseline_ms"]) == len(poll["fingerprint_ms"]) >= 4, poll
    assert any(row["section"] == "12. Krita live polling" for row in result["rows"]), result["rows"]
