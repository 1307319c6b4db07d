"""`protocol/regions.py`: the rectangle math both editor plugins use to send only what a job needs
(PROTOCOL.md section 7) and to put the daemon's patches back where they belong."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from underpaint.protocol.regions import Rect, job_region, placement

IMAGE = Rect(0, 0, 451, 300)


def test_rect_edges_and_emptiness() -> None:
    r = Rect(10, 20, 30, 40)
    assert (r.right, r.bottom) == (40, 60)  # exclusive
    assert r.as_list() == [10, 20, 30, 40]
    assert not r.empty
    assert Rect(5, 5, 0, 10).empty and Rect(5, 5, 10, 0).empty and Rect(5, 5, -3, 4).empty
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.x = 0  # type: ignore[misc]
    assert r == Rect(10, 20, 30, 40) and len({r, Rect(10, 20, 30, 40)}) == 1  # a value, hashable


def test_from_corners() -> None:
    assert Rect.from_corners(104, 4, 346, 216) == Rect(104, 4, 242, 212)
    assert Rect.from_corners(10, 10, 10, 30).empty
    assert Rect.from_corners(50, 50, 10, 10) == Rect(50, 50, 0, 0)  # inverted corners: empty, not negative


def test_grown_translated_contains() -> None:
    r = Rect(10, 20, 30, 40)
    assert r.grown(5) == Rect(5, 15, 40, 50)
    assert r.grown(0) == r
    assert r.translated(-10, 5) == Rect(0, 25, 30, 40)
    assert r.translated(3, 4).translated(-3, -4) == r
    assert IMAGE.contains(IMAGE) and IMAGE.contains(Rect(0, 0, 1, 1)) and IMAGE.contains(Rect(450, 299, 1, 1))
    assert not IMAGE.contains(Rect(450, 299, 2, 1)) and not IMAGE.contains(Rect(-1, 0, 10, 10))


def test_intersected() -> None:
    assert Rect(-10, 50, 100, 100).intersected(IMAGE) == Rect(0, 50, 90, 100)
    assert IMAGE.intersected(Rect(400, 250, 100, 100)) == Rect(400, 250, 51, 50)  # symmetric
    assert Rect(400, 250, 100, 100).intersected(IMAGE) == Rect(400, 250, 51, 50)
    disjoint = Rect(500, 0, 10, 10).intersected(IMAGE)
    assert disjoint == Rect(500, 0, 0, 10) and disjoint.empty  # never a negative size
    assert Rect(451, 0, 10, 10).intersected(IMAGE).empty  # touching edges do not overlap


def test_job_region_grows_the_selection_by_padding() -> None:
    assert job_region(Rect(100, 50, 150, 100), IMAGE, 32) == Rect(68, 18, 214, 164)


def test_job_region_clamps_at_the_image_border() -> None:
    assert job_region(Rect(0, 280, 20, 20), IMAGE, 32) == Rect(0, 248, 52, 52)  # left and bottom
    assert job_region(Rect(400, 250, 100, 100), IMAGE, 8) == Rect.from_corners(392, 242, 451, 300)
    assert job_region(Rect(10, 10, 431, 280), IMAGE, 64) == IMAGE  # padding past every side
    assert job_region(Rect(600, 400, 10, 10), IMAGE, 32).empty  # selection off the image


def test_job_region_without_a_selection_is_the_whole_bounds() -> None:
    assert job_region(None, IMAGE, 32) == IMAGE
    assert job_region(Rect(5, 5, 0, 0), IMAGE, 32) == IMAGE  # an empty selection is no selection
    layer = Rect(-10, 50, 100, 100)
    assert job_region(None, layer, 0) == layer  # the caller decides what "whole" is


def test_job_region_padding_zero_and_negative() -> None:
    selection = Rect(100, 50, 150, 100)
    assert job_region(selection, IMAGE, 0) == selection  # exactly the selection's bounds
    assert job_region(selection, IMAGE, -20) == selection  # negative padding never shrinks it


def test_placement_adds_the_crop_origin() -> None:
    crop = job_region(Rect(100, 50, 150, 100), IMAGE, 32)
    assert placement(crop, 0, 0) == (68, 18)
    assert placement(crop, 32, 32) == (100, 50)  # the daemon's patch at the padding = the selection
    assert placement(Rect(72, 0, 10, 10), 5, 7) == (77, 7)
    x, y = placement(Rect(3, 4, 1, 1), 2.0, 6.0)  # type: ignore[arg-type]  whatever number comes back
    assert (x, y) == (5, 10) and isinstance(x, int) and isinstance(y, int)


def test_stdlib_only_and_importable_without_pyzmq(tmp_path: Path) -> None:
    """Plugins import regions even where pyzmq/msgpack are missing (then they say what to install)."""
    root = Path(__file__).resolve().parents[1] / "protocol"
    tree = ast.parse((root / "regions.py").read_text())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert all(m.split(".")[0] in sys.stdlib_module_names | {"__future__"} for m in modules), modules

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ("zmq", "msgpack"):
        (blocked / f"{name}.py").write_text(f"raise ImportError('{name} hidden by the test')\n")
    vendored = tmp_path / "vendor" / "underpaint_protocol"  # as the GIMP plug-in ships it
    vendored.mkdir(parents=True)
    for name in ("__init__.py", "client.py", "messages.py", "regions.py"):
        (vendored / name).write_bytes((root / name).read_bytes())
    code = (
        "import underpaint_protocol.regions as r\n"
        "assert r.job_region(None, r.Rect(0, 0, 4, 4), 1).as_list() == [0, 0, 4, 4]\n"
        "try:\n"
        "    import underpaint_protocol.client\n"
        "except ImportError as exc:\n"
        "    print('client:', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": f"{blocked}:{vendored.parent}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "client: zmq hidden by the test" in done.stdout  # the client still needs pyzmq
