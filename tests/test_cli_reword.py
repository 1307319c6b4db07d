"""`underpaint edit` records every result next to its PNG, and `underpaint edit reword --from
RESULT.json` edits such a result later (issue 11), through the real command and a real tiny daemon.
The CLI's pictures are checked against the same requests sent with the Python client: what the
command sends is exactly the recorded job with the edit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import ellipse_mask, obj, picture, pixels
from PIL import Image

from underpaint.protocol import Client

CLI = [sys.executable, "-m", "underpaint.daemon.cli"]
SOURCE = "a red fox in the snow"
SWAPPED = "a red cat in the snow"
SIZE = (96, 64)
MASK_BOX = (24, 8, 72, 56)


def cli(daemon: Any, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*CLI, "edit", *args[:1], "--endpoint", daemon.endpoint, *args[1:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"))


def record(path: Path) -> dict[str, Any]:
    return json.loads(path.with_suffix(".json").read_text())


@pytest.fixture
def client(daemon: Any) -> Any:
    with Client(daemon.endpoint, timeout=120) as c:
        yield c


def test_results_are_recorded_and_a_txt2img_result_is_reworded(
    daemon: Any, client: Any, tmp_path: Path
) -> None:
    out = tmp_path / "fox.png"
    common = ["--steps", "4", "--width", "64", "--height", "64", "--seed", "5", "--model", "tiny"]
    printed = ok(cli(daemon, "txt2img", "--prompt", SOURCE, *common, "--variations", "2", "--out", str(out)))
    first, second = tmp_path / "fox-1.png", tmp_path / "fox-2.png"
    assert f"wrote {second} (seed 6)" in printed
    rec = record(second)
    assert (rec["op"], rec["model"], rec["seed"]) == ("txt2img", "tiny", 6)
    assert rec["params"]["seed"] == 6 and rec["params"]["variations"] == 1
    assert rec["params"]["prompt"] == SOURCE and rec["params"]["steps"] == 4
    assert (rec["x"], rec["y"], rec["width"], rec["height"]) == (0, 0, 64, 64)
    assert rec["inputs"] == {} and rec["picture"] == str(second) and "score" not in rec
    assert record(first)["seed"] == 5
    # the record reproduces its picture alone
    again = client.run(rec["op"], rec["params"], model=rec["model"])
    assert np.array_equal(pixels(again["images"][0]), png(second))

    cat = tmp_path / "cat.png"
    ok(
        cli(
            daemon,
            "reword",
            "--from",
            str(second.with_suffix(".json")),
            "--prompt",
            SWAPPED,
            "--out",
            str(cat),
        )
    )
    expected = client.run("reword", {**rec["params"], "new_prompt": SWAPPED}, model="tiny")
    assert np.array_equal(png(cat), pixels(expected["images"][0]))
    assert not np.array_equal(png(cat), png(second)), "the edited prompt reaches the picture"
    rewording = record(cat)
    assert rewording["op"] == "reword" and rewording["params"]["op"] == "txt2img"
    assert rewording["params"]["prompt"] == SOURCE and rewording["params"]["new_prompt"] == SWAPPED
    assert rewording["params"]["edit"] == "replace" and rewording["seed"] == 6

    # weight 1 on the same words is the source picture, bit for bit
    same = tmp_path / "same.png"
    ok(
        cli(
            daemon,
            "reword",
            "--from",
            str(second.with_suffix(".json")),
            "--weight",
            "snow=1",
            "--out",
            str(same),
        )
    )
    assert np.array_equal(png(same), png(second))

    # a reworded result's record edits its source job again, with every reword option
    more = tmp_path / "more.png"
    ok(
        cli(
            daemon,
            "reword",
            "--from",
            str(cat.with_suffix(".json")),
            "--weight",
            "cat=3",
            "--edit-kind",
            "replace",
            "--inject-cross",
            "0.6",
            "--inject-self",
            "0.2",
            "--blend",
            "fox",
            "--blend",
            "cat",
            "--blend-threshold",
            "0.4",
            "--out",
            str(more),
        )
    )
    params = record(more)["params"]
    assert (
        params["prompt"] == SOURCE and params["new_prompt"] == SWAPPED and params["weights"] == {"cat": 3.0}
    )
    assert (params["inject_cross"], params["inject_self"], params["blend_threshold"]) == (0.6, 0.2, 0.4)
    assert params["blend"] == ["fox", "cat"]
    expected = client.run("reword", params, model="tiny")
    assert np.array_equal(png(more), pixels(expected["images"][0]))


def test_an_inpaint_result_is_reworded_with_its_own_input_files(
    daemon: Any, client: Any, tmp_path: Path
) -> None:
    image, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    picture(SIZE).save(image)
    ellipse_mask(SIZE, MASK_BOX, soften=2).save(mask)
    out = tmp_path / "fox.png"
    job = ["--image", str(image), "--mask", str(mask), "--prompt", SOURCE, "--steps", "4", "--seed", "3"]
    ok(cli(daemon, "inpaint", *job, "--model", "tiny", "--out", str(out)))
    rec = record(out)
    assert rec["inputs"] == {"image": str(image.resolve()), "mask": str(mask.resolve())}
    assert rec["op"] == "inpaint" and rec["params"]["seed"] == 3

    cat = tmp_path / "cat.png"
    ok(cli(daemon, "reword", "--from", str(out.with_suffix(".json")), "--prompt", SWAPPED, "--out", str(cat)))
    inputs = {"image": obj(Image.open(image)), "mask": obj(Image.open(mask).convert("L"))}
    expected = client.run("reword", {**rec["params"], "new_prompt": SWAPPED}, inputs, model="tiny")
    assert expected["images"][0]["x"] == rec["x"] and expected["images"][0]["y"] == rec["y"]
    base = Image.open(image).convert("RGBA")
    base.alpha_composite(Image.fromarray(pixels(expected["images"][0]), "RGBA"), (rec["x"], rec["y"]))
    assert np.array_equal(png(cat), np.asarray(base)), "the patch is pasted onto the source's input"
    outside = np.asarray(Image.open(mask)) == 0
    assert np.array_equal(png(cat)[outside], png(image)[outside])
    assert not np.array_equal(png(cat), png(out))
    assert record(cat)["inputs"] == rec["inputs"] and record(cat)["params"]["op"] == "inpaint"


def test_ranked_results_record_their_scores_best_first(daemon: Any, tmp_path: Path) -> None:
    out = tmp_path / "ranked.png"
    job = ["--prompt", SOURCE, "--steps", "3", "--width", "64", "--height", "64", "--seed", "21"]
    printed = ok(cli(daemon, "txt2img", *job, "--variations", "3", "--param", "rank=true", "--out", str(out)))
    records = [record(tmp_path / f"ranked-{i}.png") for i in (1, 2, 3)]
    scores = [r["score"] for r in records]
    assert all(isinstance(s, float) for s in scores) and scores == sorted(scores, reverse=True)
    assert sorted(r["seed"] for r in records) == [21, 22, 23]
    assert all(r["params"]["seed"] == r["seed"] for r in records)
    assert f"score {scores[0]:.4f}" in printed


def test_what_cannot_be_reworded_is_explained(daemon: Any, tmp_path: Path) -> None:
    done = cli(daemon, "reword", "--prompt", SWAPPED)
    assert done.returncode == 2 and "--from" in done.stderr
    sdedit = tmp_path / "sdedit.json"
    sdedit.write_text(json.dumps({"op": "sdedit", "model": "tiny", "params": {"prompt": SOURCE}}))
    done = cli(daemon, "reword", "--from", str(sdedit), "--prompt", SWAPPED)
    assert done.returncode == 2 and "sdedit result" in done.stderr and "txt2img and inpaint" in done.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    done = cli(daemon, "reword", "--from", str(broken))
    assert done.returncode == 2 and "not a result record" in done.stderr
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"op": "txt2img", "model": "tiny", "params": {"prompt": SOURCE, "steps": 2}}))
    done = cli(daemon, "reword", "--from", str(good), "--weight", "snow")
    assert done.returncode == 2 and "WORD=NUMBER" in done.stderr
    done = cli(daemon, "reword", "--from", str(good), "--weight", "moon=2")
    assert done.returncode == 1 and "params.weights" in done.stderr, "the daemon's refusal is shown"
