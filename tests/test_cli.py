"""The `underpaint` command as a person uses it: help, edit, status, models, Ctrl-C, demo."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import PICTURE, ellipse_mask, picture
from PIL import Image

from underpaint.protocol import Client

CLI = [sys.executable, "-m", "underpaint.daemon.cli"]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "command", ["serve", "edit", "compare", "models", "status", "demo", "install-plugin", "keygen", "pull"]
)
def test_every_subcommand_explains_itself(command: str) -> None:
    top = run_cli("--help")
    assert top.returncode == 0 and command in top.stdout
    sub = run_cli(command, "--help")
    assert sub.returncode == 0, sub.stderr
    assert len(sub.stdout.splitlines()) > 5 and "--" in sub.stdout


def test_serve_help_names_every_option() -> None:
    text = run_cli("serve", "--help").stdout
    for option in (
        "--endpoint",
        "--config",
        "--preset",
        "--device",
        "--dtype",
        "--memory-budget-gb",
        "--keys",
        "--insecure",
        "--results-ttl",
        "--results-mb",
        "--session-grace",
        "--shutdown-grace",
        "--max-job-cost",
        "--max-queued-per-client",
    ):
        assert option in text
    assert "TESTING ONLY" in text, "the test-only step delay says what it is"


def test_edit_inpaint_writes_the_finished_picture(daemon, tmp_path: Path) -> None:
    mask = ellipse_mask(picture().size, (150, 60, 300, 200))
    mask_path = tmp_path / "mask.png"
    mask.save(mask_path)
    out = tmp_path / "out.png"
    done = run_cli(
        "edit",
        "inpaint",
        "--endpoint",
        daemon.endpoint,
        "--image",
        str(PICTURE),
        "--mask",
        str(mask_path),
        "--prompt",
        "a fox",
        "--steps",
        "4",
        "--seed",
        "5",
        "--out",
        str(out),
        "--save-patches",
    )
    assert done.returncode == 0, done.stderr
    assert "seed 5" in done.stdout and str(out) in done.stdout
    result = np.asarray(Image.open(out).convert("RGBA"))
    before = np.asarray(picture())
    outside = np.asarray(mask) == 0
    assert np.array_equal(result[outside], before[outside])
    assert not np.array_equal(result[~outside], before[~outside])
    assert out.with_suffix(".patch.png").exists()


def test_status_and_models(daemon) -> None:
    status = run_cli("status", "--endpoint", daemon.endpoint)
    assert status.returncode == 0 and "protocol 1" in status.stdout and "cpu" in status.stdout
    models = run_cli("models", "--endpoint", daemon.endpoint)
    assert models.returncode == 0 and "tiny" in models.stdout and "sd15" in models.stdout


def test_daemon_down_is_a_clear_error() -> None:
    done = run_cli("status", "--endpoint", "tcp://127.0.0.1:9", "--timeout", "1")
    assert done.returncode == 1 and "is `underpaint serve` running" in done.stderr


def test_bad_arguments_are_explained(daemon) -> None:
    done = run_cli(
        "edit", "sdedit", "--endpoint", daemon.endpoint, "--image", str(PICTURE), "--strength", "3"
    )
    assert done.returncode == 1 and "out_of_range" in done.stderr and "params.strength" in done.stderr


def test_ctrl_c_cancels_the_job(daemon, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            *CLI,
            "edit",
            "txt2img",
            "--endpoint",
            daemon.endpoint,
            "--steps",
            "200",
            "--width",
            "512",
            "--height",
            "512",
            "--out",
            str(tmp_path / "never.png"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with Client(daemon.endpoint, timeout=10) as watcher:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = [j for j in watcher.status()["jobs"] if j["state"] == "running" and j["step"] >= 1]
            if running:
                break
            time.sleep(0.1)
        else:
            proc.kill()
            pytest.fail("the job never started")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "cancelled" in err
        assert not (tmp_path / "never.png").exists()
        assert watcher.status()["running"] is None


def test_demo_runs_every_op(tmp_path: Path) -> None:
    done = run_cli("demo", "--out", str(tmp_path / "demo"), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    names = {p.stem for p in (tmp_path / "demo").glob("*.png")}
    for op in (
        "txt2img",
        "sdedit",
        "inpaint",
        "controlnet-canny",
        "controlnet-sketch",
        "instruct",
        "upscale-x4",
        "upscale-x2",
    ):
        assert op in names
        assert op in done.stdout
    inpainted = np.asarray(Image.open(tmp_path / "demo" / "inpaint.png"))
    assert inpainted.shape[:2] == (300, 451)
