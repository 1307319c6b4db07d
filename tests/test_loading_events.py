"""`loading` events (PROTOCOL.md 6.10): a job that waits for a model to build, download or load tells its
client what it waits for and for how long, before its first step; a job on warm models says nothing
of the kind. Through the real daemon with one worker thread and with a pool of two worker processes,
each on a fresh UNDERPAINT_HOME so that the first job must build its tiny models; and the CLI shows
them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import obj, picture

from underpaint.daemon.commands.launch import running_daemon
from underpaint.daemon.serving.loading import LoadWatch, byte_counter
from underpaint.protocol import Client
from underpaint.protocol.client import loading_text

CLI = [sys.executable, "-m", "underpaint.daemon.cli"]


def _events(client: Client, job: str) -> list[dict[str, Any]]:
    return list(client.events(job, timeout=300))


def check_cold_then_warm(
    client: Client, model: str, op: str, params: dict[str, Any], images: dict | None = None
) -> list[dict[str, Any]]:
    """The first job on `model` (not built yet) gets `loading` events naming it, all before its first
    step; the same job again gets none. Returns the first job's loading events."""
    seen: list[dict[str, Any]] = []
    cold = client.run(
        op, params, images, model=model, on_progress=seen.append, on_event=seen.append, timeout=300
    )
    kinds = [e["type"] for e in seen]
    loading = [e for e in seen if e["type"] == "loading"]
    assert loading, f"no loading event for the first job on {model}: {kinds}"
    assert "progress" in kinds and "loading" not in kinds[kinds.index("progress") :], kinds
    assert all(e["job"] == cold["job"] for e in loading)
    assert model in loading[0]["what"] and "base" in loading[0]["what"], loading[0]
    assert "building" in loading[0]["what"], "the first job on a fresh home builds the tiny models"
    times = [e["elapsed_s"] for e in loading if e["what"] == loading[0]["what"]]
    assert times[0] == pytest.approx(0.0, abs=0.2) and times == sorted(times), times
    assert cold["timings"]["load"] > 0

    job = client.submit(op, params, images, model=model)
    events = _events(client, job)
    kinds = [e["type"] for e in events]
    assert "loading" not in kinds and kinds[-1] == "result", kinds
    assert events[-1]["timings"]["load"] == 0
    return loading


def _order(client: Client, model: str, op: str, params: dict[str, Any], images: dict | None) -> list[str]:
    job = client.submit(op, params, images, model=model)
    return [e["type"] for e in _events(client, job)]


def test_watch_reports_at_start_then_each_period_and_never_after() -> None:
    got: list[dict[str, Any]] = []
    with LoadWatch(got.append, "a slow model", every=0.2) as watch:
        assert len(got) == 1 and got[0]["elapsed_s"] == 0.0, "the first event is sent at once"
        time.sleep(0.75)
    count = len(got)
    time.sleep(0.5)
    assert len(got) == count == watch.sent, "nothing is sent once the load is over"
    assert count >= 3, got
    times = [e["elapsed_s"] for e in got]
    assert times == sorted(times) and times[-1] >= 0.35, times
    assert {e["what"] for e in got} == {"a slow model"}


def test_byte_counts_come_from_local_files_and_the_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 5000)
    (folder / "unet" / "config.json").write_text("{}")
    assert byte_counter(str(folder))() == {"total_bytes": 5000}

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    blobs = tmp_path / "hub" / "models--someone--a-model" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "old").write_bytes(b"\0" * 700)  # in the cache before the load: not this download
    count = byte_counter("someone/a-model")
    assert count() == {}
    (blobs / "abc.incomplete").write_bytes(b"\0" * 1234)
    assert count() == {"bytes": 1234}


def test_one_worker_thread_cold_then_warm_and_the_cli_shows_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running_daemon(preset="tiny-ddpm", env={"UNDERPAINT_HOME": str(home)}) as daemon:
        with Client(daemon.endpoint, timeout=120) as client:
            client.hello("test")
            loading = check_cold_then_warm(client, "tiny-ddpm", "txt2img", {"steps": 2})
            assert (home / "models").is_dir()
            assert loading_text(loading[0]).startswith("Loading tiny-ddpm base")
            # A cold load of a built preset (sd2's validation built it): loading, before any step.
            order = _order(client, "tiny-sd2", "txt2img", {"prompt": "a fox", "steps": 2}, None)
            assert order[0] == "loading" and "progress" in order and order[-1] == "result", order
            assert "loading" not in order[order.index("progress") :], order
        out = tmp_path / "out.png"
        done = subprocess.run(
            [
                *CLI,
                "edit",
                "variation",
                "--endpoint",
                daemon.endpoint,
                "--model",
                "tiny-sd-variation",
                "--image",
                str(_small_picture(tmp_path)),
                "--steps",
                "2",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "Loading tiny-sd-variation base (building the tiny sd-variation models)" in done.stderr
        assert out.is_file()


def test_two_worker_processes_send_loading_events_too(tmp_path: Path) -> None:
    home = tmp_path / "home"
    args = ("--workers", "2", "--threads", "1")
    with running_daemon(*args, preset="tiny-sd-variation", env={"UNDERPAINT_HOME": str(home)}) as daemon:
        with Client(daemon.endpoint, timeout=120) as client:
            client.hello("test")
            images = {"image": obj(picture((64, 64)))}
            check_cold_then_warm(client, "tiny-sd-variation", "variation", {"steps": 2}, images)


def _small_picture(folder: Path) -> Path:
    path = folder / "small.png"
    picture((64, 64)).save(path)
    return path
