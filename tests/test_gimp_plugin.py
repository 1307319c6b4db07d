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
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import need
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PLUGIN = REPO / "plugins" / "gimp" / "underpaint"
PICTURE = REPO / "daemon" / "assets" / "chelsea.png"
GIMP_TIMEOUT = float(os.environ.get("UNDERPAINT_GIMP_TIMEOUT", "300"))  # s per gimp-console run: a hang fails

sys.path.insert(0, str(HERE / "gimp"))
import gimp_chroot  # noqa: E402


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
from underpaint_gimp import job, modes, placement, region, request  # noqa: E402

ELLIPSE = (120, 20, 210, 180)  # x, y, w, h: over the cat's head
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
    assert region.generate_size(Rect(0, 0, 242, 212), 0, 0) == (248, 216)
    assert region.generate_size(Rect(0, 0, 20, 5000), 0, 0) == (64, 2048)
    assert region.generate_size(Rect(0, 0, 242, 212), 96, 0) == (96, 216)


def test_modes_map_to_protocol_ops() -> None:
    ops = {m.key: m.op for m in modes.MODES}
    assert ops == {
        "inpaint": "inpaint",
        "refine": "sdedit",
        "controlnet": "controlnet",
        "instruct": "instruct",
        "generate": "txt2img",
        "upscale": "upscale",
    }
    assert len({m.procedure for m in modes.MODES}) == len(modes.MODES)
    for mode in modes.MODES:
        names = [a.name for a in mode.args]
        assert len(names) == len(set(names)), mode.key
        assert {"steps", "guidance", "seed", "variations", "model", "endpoint", "negative-prompt"} <= set(
            names
        )
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


def _defaults(mode: modes.Mode, **overrides: Any) -> dict[str, Any]:
    values = {arg.name: arg.default for arg in mode.args}
    values.update(overrides)
    return values


def _crop_pixels(mode: modes.Mode, with_mask: bool = True) -> request.Pixels:
    """What the GIMP side reads for the test selection: an RGBA crop and its 8-bit mask."""
    picture = Image.open(PICTURE).convert("RGBA")
    mask = Image.new("L", picture.size, 0)
    x, y, w, h = ELLIPSE
    ImageDraw.Draw(mask).ellipse((x, y, x + w, y + h), fill=255)
    bounds = Rect(x, y, w, h)
    image = Rect(0, 0, *picture.size)
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
    )


def test_request_errors_a_user_can_fix() -> None:
    inpaint = modes.mode_by_key("inpaint")
    with pytest.raises(request.UserError, match="needs a selection"):
        request.build_request(inpaint, _defaults(inpaint), _crop_pixels(inpaint, with_mask=False))
    instruct = modes.mode_by_key("instruct")
    with pytest.raises(request.UserError, match="needs an instruction"):
        request.build_request(instruct, _defaults(instruct, instruction="  "), _crop_pixels(instruct))
    welcome = {
        "ops": {"inpaint": {}},
        "default_model": "tiny",
        "models": [{"name": "tiny", "ops": ["inpaint"]}],
    }
    req = request.build_request(inpaint, _defaults(inpaint, model="nope"), _crop_pixels(inpaint))
    with pytest.raises(request.UserError, match="No model preset 'nope'"):
        request.check_against_welcome(req, welcome)
    refine = modes.mode_by_key("refine")
    with pytest.raises(request.UserError, match="does not offer 'sdedit'"):
        request.check_against_welcome(
            request.build_request(refine, _defaults(refine), _crop_pixels(refine)), welcome
        )
    message = job.missing_dependency_message(ModuleNotFoundError("No module named 'zmq'", name="zmq"))
    assert (
        "'zmq'" in message
        and "apt install python3-zmq python3-msgpack" in message
        and "pip install" in message
    )


OVERRIDES: dict[str, dict[str, Any]] = {
    "inpaint": {"prompt": "a fox", "variations": 2},
    "refine": {"prompt": "a watercolour cat"},
    "controlnet": {"prompt": "a cat", "controlnet": "canny", "preprocessor": "canny"},
    "instruct": {"instruction": "make it winter"},
    "generate": {"prompt": "a cat on a sofa"},
    "upscale": {"prompt": "a cat"},
}


@pytest.mark.parametrize("key", [m.key for m in modes.MODES])
def test_every_mode_round_trips_through_the_daemon(daemon, key: str) -> None:
    """Requests built by the plug-in are accepted by the real daemon and become the right layers."""
    mode = modes.mode_by_key(key)
    pixels = _crop_pixels(mode)
    values = _defaults(mode, steps=4, seed=11, endpoint=daemon.endpoint, **OVERRIDES[key])
    req = request.build_request(mode, values, pixels)
    reports: list[tuple[float | None, str]] = []
    with job.Session(daemon.endpoint, protocol=_protocol) as session:
        result = session.run(req, lambda fraction, text: reports.append((fraction, text)))
    auto = mode.op == "txt2img"
    plans = placement.plan_layers(mode, result, pixels.region, fit=auto)
    assert len(plans) == values["variations"]
    fractions = [f for f, _ in reports if f is not None]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0, reports
    for i, plan in enumerate(plans):
        assert plan.name == f"{mode.title} seed {11 + i}"
        stored = json.loads(plan.parasite)
        assert stored["op"] == mode.op and stored["seed"] == 11 + i and stored["model"] == "tiny"
        assert stored["params"]["steps"] == 4
        image = result["images"][i]
        if mode.new_image:
            assert (plan.x, plan.y, plan.width, plan.height) == (0, 0, 4 * 40, 4 * 30)
        elif auto:
            assert plan.fit == pixels.region and (plan.width, plan.height) == (216, 184)
        else:
            assert (plan.x, plan.y) == (pixels.region.x + image["x"], pixels.region.y + image["y"])


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
    for name in ("__init__", "modes", "region", "request", "placement", "job", "gimp_io", "procedures"):
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
    ) -> dict:
        """Run tests/gimp/batch_calls.py in gimp-console with `calls`; return its result.json.

        `dialogs`: run on a virtual display, answering each dialog titled like a key with its value.
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
        argv = gimp_chroot.gimp_batch_argv(self.inside(self.work / "batch_calls.py"))
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
            sketch = Image.new("RGB", Image.open(PICTURE).size, "black")
            x, y, w, h = ELLIPSE
            ImageDraw.Draw(sketch).ellipse((x + 20, y + 20, x + w - 20, y + h - 20), outline="white", width=4)
            sketch.save(work / "sketch.png")
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
        entry: dict[str, Any] = {
            "name": mode.key,
            "procedure": mode.procedure,
            "args": {**common, **call[mode.key]},
            "selection": ["rect", *UPSCALE_RECT, 0] if mode.new_image else SELECTION,
        }
        if mode.key == "controlnet":
            entry["control_picture"] = gimp.inside(gimp.work / "sketch.png")
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
        "modes", _mode_calls(daemon.endpoint, gimp), procedures=[m.procedure for m in modes.MODES]
    )


def test_gimp_registers_every_procedure(gimp_modes: dict[str, Any]) -> None:
    """Filters > Underpaint > ..., with the typed arguments batch callers pass by name."""
    kinds = {
        "str": "gchararray",
        "int": "gint",
        "float": "gdouble",
        "choice": "gchararray",
        "layer": "GimpLayer",
    }
    for mode in modes.MODES:
        info = gimp_modes["procedures"][mode.procedure]
        assert info is not None, f"{mode.procedure} is not registered\n{gimp_modes['log']}"
        assert [path.rstrip("/") for path in info["menu_paths"]] == ["<Image>/Filters/Underpaint"], info
        assert info["menu_label"] == mode.label
        assert info["image_types"] == "RGB*, GRAY*"
        arguments = info["arguments"]
        assert list(arguments)[:3] == ["run-mode", "image", "drawables"], arguments
        for arg in mode.args:
            assert arguments.get(arg.name) == kinds[arg.kind], (mode.key, arg.name, arguments)


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


@pytest.mark.parametrize("key", ["inpaint", "refine", "controlnet", "instruct", "generate"])
def test_gimp_mode_adds_layers_and_keeps_the_rest(gimp_modes: dict[str, Any], key: str) -> None:
    out, entry = gimp_modes["out"], gimp_modes["calls"][key]
    mode = modes.mode_by_key(key)
    assert entry["success"], f"{entry['error']}\n{gimp_modes['log']}"
    image = entry["image"]
    h, w = _original().shape[:2]
    assert (image["width"], image["height"]) == (w, h)
    selection = _gray(out, f"{key}-selection.y", w, h)
    assert selection.max() == 255 and 0 < selection[(selection > 0) & (selection < 255)].size, "not feathered"
    layers = image["layers"]
    top = [row for row in layers if row["parent"] is None]
    expected_top = (
        ["Underpaint", "Background"] if key != "controlnet" else ["control", "Underpaint", "Background"]
    )
    assert [row["name"] for row in top] == expected_top
    group = next(row for row in top if row["name"] == "Underpaint")
    assert group["group"] and "underpaint-group" in group["parasites"]
    results = [row for row in layers if row["parent"] == "Underpaint"]
    variations = 2 if key == "inpaint" else 1
    assert [row["name"] for row in results] == [f"{mode.title} seed {7 + i}" for i in range(variations)]

    # the patch sits at the crop's origin plus the daemon's offset: the selection grown by padding
    if key == "generate":
        bounds = _expected_region(selection, 0)
        expected = (bounds.x, bounds.y, bounds.width, bounds.height)
    else:
        crop = _expected_region(selection, PADDING)
        expected = (crop.x, crop.y, crop.width, crop.height)
    for i, row in enumerate(results):
        assert (row["x"], row["y"], row["width"], row["height"]) == expected, row
        stored = json.loads(row["parasites"]["underpaint-params"])
        assert stored["op"] == mode.op and stored["seed"] == 7 + i and stored["model"] == "tiny"
        assert stored["params"]["steps"] == STEPS and stored["params"]["seed"] == 7
        assert stored["region"][:2] == [row["x"], row["y"]] or key == "generate"
        pixels = _rgba(out, row["pixels"], row["width"], row["height"])
        under = selection[row["y"] : row["y"] + row["height"], row["x"] : row["x"] + row["width"]]
        if key == "generate":
            assert row["mask"], "Generate masks its layer with the selection"
            mask = _gray(out, row["mask_pixels"], row["width"], row["height"])
            assert np.array_equal(mask, under)
        else:
            assert not pixels[..., 3][under == 0].any(), "result alpha must be 0 outside the selection"
            assert pixels[..., 3][under == 255].min() > 0

    # existing layers byte-identical, composite unchanged outside the selection and changed inside
    original = _original()
    background = next(row for row in top if row["name"] == "Background")
    assert (background["x"], background["y"], background["width"], background["height"]) == (0, 0, w, h)
    assert np.array_equal(_rgba(out, background["pixels"], w, h), original)
    if key == "controlnet":
        control = next(row for row in top if row["name"] == "control")
        sketch = np.asarray(Image.open(gimp_modes["out"].parent / "sketch.png").convert("RGBA"))
        assert np.array_equal(_rgba(out, control["pixels"], w, h), sketch)
        return  # the control layer covers the picture in the composite
    composite = _rgba(out, image["composite"], w, h)
    outside = selection == 0
    assert np.array_equal(composite[outside], original[outside])
    inside = selection == 255
    assert (composite[inside][:, :3] != original[inside][:, :3]).any(), "nothing was painted"


def test_gimp_grayscale_image(gimp_modes: dict[str, Any]) -> None:
    """A grayscale image gets a grayscale result layer, the rest of the picture untouched."""
    out, entry = gimp_modes["out"], gimp_modes["calls"]["inpaint-gray"]
    assert entry["success"], f"{entry['error']}\n{gimp_modes['log']}"
    h, w = _original().shape[:2]
    layers = {row["name"]: row for row in entry["image"]["layers"]}
    assert list(layers) == ["Underpaint", "Inpaint seed 7", "Background"]
    selection = _gray(out, "inpaint-gray-selection.y", w, h)
    crop = _expected_region(selection, PADDING)
    row = layers["Inpaint seed 7"]
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
    assert row["name"] == "Upscale seed 7" and (row["x"], row["y"]) == (0, 0)
    stored = json.loads(row["parasites"]["underpaint-params"])
    assert stored["op"] == "upscale" and stored["params"]["factor"] == 4


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
    assert "UNDERPAINT-SF Underpaint/Inpaint seed 5 top=2" in run.output, where


def test_gimp_dialogs(gimp: GimpEnv, daemon) -> None:
    """Interactive mode: the procedure dialog opens; OK runs the job, Cancel adds nothing."""
    base = {"endpoint": daemon.endpoint, "steps": STEPS, "seed": 7}
    calls = [
        {"name": "dialog-ok", "procedure": "plug-in-underpaint-inpaint", "selection": SELECTION,
         "interactive": True, "args": {**base, "prompt": "a fox"}},
        {"name": "dialog-cancel", "procedure": "plug-in-underpaint-refine", "selection": SELECTION,
         "interactive": True, "args": {**base, "prompt": "a fox"}},
        {"name": "dialog-upscale", "procedure": "plug-in-underpaint-upscale", "returns_image": True,
         "selection": ["rect", *UPSCALE_RECT, 0], "interactive": True, "args": {**base, "prompt": "a cat"}},
    ]  # fmt: skip
    answers = {"Underpaint Inpaint": "Return", "Underpaint Refine": "alt+c", "Underpaint Upscale": "Return"}
    result = gimp.batch("dialogs", calls, dialogs=answers)
    answered = (result["out"] / "dialogs.txt").read_text().splitlines()
    assert answered == [f"{title}\t{key}" for title, key in answers.items()], result["log"]
    ok, cancel, upscale = (result["calls"][c["name"]] for c in calls)
    assert ok["success"], f"{ok['error']}\n{result['log']}"
    assert [row["name"] for row in ok["image"]["layers"]] == ["Underpaint", "Inpaint seed 7", "Background"]
    assert cancel["status"] == "cancel", cancel
    assert [row["name"] for row in cancel["image"]["layers"]] == ["Background"]
    assert upscale["success"], f"{upscale['error']}\n{result['log']}"
    assert (upscale["new_image"]["width"], upscale["new_image"]["height"]) == (160, 120)
