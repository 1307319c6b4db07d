"""Single-file checkpoints, as painters download them: original-layout `.safetensors` files of the sd15,
sd2 and sdxl families load offline through a preset's configs folder (`config`) and paint exactly what
the diffusers folder they were converted from paints; a preset without `family` reads it from the
file's key names; pickled `.ckpt` files load only when the preset trusts them.

The files are made here from the tiny models (tests/single_file.py); one daemon serves every preset.
Its hub endpoint is a local trap that records requests, so "offline" means no request was even tried.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import ellipse_mask, obj, picture, pixels
from single_file import original_checkpoint, save_checkpoint

from underpaint.daemon.builders.tiny import ensure_tiny
from underpaint.daemon.commands.launch import DaemonProcess, running_daemon
from underpaint.protocol import Client, DaemonError

FAMILIES = ("sd15", "sd2", "sdxl")
#: keys of each family's text encoder(s) in the original layout (what family detection reads)
TEXT_KEYS = {
    "sd15": "cond_stage_model.transformer.text_model.",
    "sd2": "cond_stage_model.model.transformer.resblocks.",
    "sdxl": "conditioner.embedders.1.model.transformer.resblocks.",
}
TXT2IMG = {"prompt": "a red fox in the snow", "seed": 5, "steps": 2, "width": 64, "height": 64}


class _Trap(BaseHTTPRequestHandler):
    """Stands in for huggingface.co: records every request and refuses it."""

    seen: list[str] = []

    def _refuse(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.send_error(503)

    do_GET = do_HEAD = do_POST = _refuse

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def hub_requests() -> Iterator[tuple[str, list[str]]]:
    """(URL of the trap, requests it received)."""
    _Trap.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trap)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Trap.seen
    server.shutdown()
    thread.join()


def _toml(presets: dict[str, dict[str, Any]]) -> str:
    """Every preset at the tiny models' 64 px, so each op works at their native size."""
    lines = []
    for name, keys in presets.items():
        lines += [f"[presets.{name}]", "resolution = 64"]
        lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def _presets(folders: dict[str, Path], files: Path) -> dict[str, dict[str, Any]]:
    """Per family: the tiny folder, its checkpoint, the checkpoint without `family`; then pickles and
    SD 1.5 inpainting, from files and from folders."""
    presets: dict[str, dict[str, Any]] = {}
    for fam, root in folders.items():
        base, file = str(root / "base"), str(files / f"{fam}.safetensors")
        presets[f"folder-{fam}"] = {"family": fam, "base": base}
        presets[f"file-{fam}"] = {"family": fam, "base": file, "config": base}
        presets[f"detected-{fam}"] = {"base": file, "config": base}
    sd15 = folders["sd15"]
    pickle = {"family": "sd15", "base": str(files / "sd15.ckpt"), "config": str(sd15 / "base")}
    presets["pickle-sd15"] = pickle
    presets["trusted-pickle-sd15"] = {**pickle, "trust_pickle": True}
    presets["inpaint-folder-sd15"] = {
        "family": "sd15",
        "base": str(sd15 / "base"),
        "inpaint": str(sd15 / "inpaint"),
    }
    presets["inpaint-file-sd15"] = {
        "family": "sd15",
        "base": str(files / "sd15.safetensors"),
        "inpaint": str(files / "sd15-inpaint.safetensors"),
        "config": str(sd15 / "base"),  # the base model's configs, as users give them for both files
    }
    # Configs named by hub id are looked up online: what proves the trap catches requests.
    hub = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    presets["hub-config-sd15"] = {"family": "sd15", "base": str(files / "sd15.safetensors"), "config": hub}
    return presets


@pytest.fixture(scope="module")
def served(
    underpaint_home: Path, tmp_path_factory: pytest.TempPathFactory, hub_requests: tuple[str, list[str]]
) -> Iterator[DaemonProcess]:
    """The tiny folders, checkpoints converted from them, and one daemon serving both."""
    folders = {fam: ensure_tiny(underpaint_home / "models", fam) for fam in FAMILIES}
    files = tmp_path_factory.mktemp("checkpoints")
    states = {fam: original_checkpoint(root / "base", fam) for fam, root in folders.items()}
    for fam, state in states.items():
        assert any(k.startswith(TEXT_KEYS[fam]) for k in state), f"{fam}: not the original layout"
        save_checkpoint(state, files / f"{fam}.safetensors")
    save_checkpoint(states["sd15"], files / "sd15.ckpt")
    inpainting = original_checkpoint(folders["sd15"] / "inpaint", "sd15")
    save_checkpoint(inpainting, files / "sd15-inpaint.safetensors")
    config = files / "presets.toml"
    config.write_text(_toml(_presets(folders, files)))
    # Online mode, but the hub is the trap: a request would be recorded, not silently refused.
    env = {
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": hub_requests[0],
        "HF_HOME": str(files / "hf-home"),  # an empty cache: nothing found there either
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    with running_daemon("--config", str(config), preset="folder-sd15", env=env) as proc:
        yield proc


@pytest.fixture
def client(served: DaemonProcess) -> Iterator[Client]:
    with Client(served.endpoint, timeout=120) as c:
        yield c


def _same(a: np.ndarray, b: np.ndarray, fam: str) -> bool:
    """Bit for bit for sd15 and sd2. SDXL's weights load identical (torch.equal on every tensor), yet
    its pipeline from the file lands one float rounding apart: since the tiny UNets attend sharply
    (TINY_VERSION 4), that shows as one level on a handful of values. Allow exactly that, no more."""
    if fam != "sdxl":
        return np.array_equal(a, b)
    diff = np.abs(a.astype(int) - b.astype(int))
    return int(diff.max()) <= 1 and int((diff > 0).sum()) <= 8


def _txt2img(client: Client, model: str) -> tuple[np.ndarray, dict[str, Any]]:
    result = client.run("txt2img", TXT2IMG, model=model, timeout=120)
    return pixels(result["images"][0]), result


@pytest.mark.parametrize("fam", FAMILIES)
def test_a_checkpoint_paints_exactly_what_its_folder_paints(client: Client, fam: str) -> None:
    from_folder, _ = _txt2img(client, f"folder-{fam}")
    from_file, result = _txt2img(client, f"file-{fam}")
    assert result["timings"]["load"] > 0, "the file's own weights were loaded"
    assert from_file.std() > 0 and _same(from_file, from_folder, fam), "the round trip is exact"


@pytest.mark.parametrize("fam", FAMILIES)
def test_a_preset_without_family_reads_it_from_the_checkpoint(
    client: Client, served: DaemonProcess, fam: str
) -> None:
    presets = {p["name"]: p for p in client.models()["presets"]}
    assert presets[f"detected-{fam}"]["family"] == fam
    assert "; assuming sd15" not in served.log(), "read from the keys, not the fallback guess"
    detected, _ = _txt2img(client, f"detected-{fam}")
    assert _same(detected, _txt2img(client, f"folder-{fam}")[0], fam)


def test_pickled_checkpoints_load_only_when_trusted(client: Client) -> None:
    with pytest.raises(DaemonError) as refused:
        client.run("txt2img", TXT2IMG, model="pickle-sd15", timeout=120)
    message = str(refused.value)
    assert refused.value.code == "model_unavailable"
    for says in ("sd15.ckpt", "pickled", "run code", ".safetensors", "trust_pickle = true"):
        assert says in message, f"the refusal should say {says!r}: {message}"
    trusted, _ = _txt2img(client, "trusted-pickle-sd15")
    assert np.array_equal(trusted, _txt2img(client, "folder-sd15")[0])


def test_an_inpainting_checkpoint_loads_with_the_base_configs(client: Client) -> None:
    image = obj(picture((64, 64)))
    mask = obj(ellipse_mask((64, 64), (12, 12, 52, 52)))
    params = {"prompt": "a red fox", "seed": 3, "steps": 2, "padding": 0}

    def inpaint(model: str) -> np.ndarray:
        result = client.run("inpaint", params, {"image": image, "mask": mask}, model=model, timeout=120)
        return pixels(result["images"][0])

    from_files = inpaint("inpaint-file-sd15")
    assert np.array_equal(from_files, inpaint("inpaint-folder-sd15")), "the 9-channel UNet, exactly"
    assert not np.array_equal(from_files, inpaint("folder-sd15")), "not the base UNet's inpainting"


def test_nothing_is_fetched_and_loading_a_file_is_fast(
    client: Client, hub_requests: tuple[str, list[str]]
) -> None:
    seen = hub_requests[1]
    client.unload("file-sd15")
    _, result = _txt2img(client, "file-sd15")
    load = result["timings"]["load"]
    assert 0 < load < 10, f"loaded again from the file, with no download attempt or retry: {load:.1f} s"
    assert seen == [], "no load in this module tried the hub"
    client.unload("file-sd15")  # its file is hub-config-sd15's too
    with pytest.raises(DaemonError) as err:  # the trap works: a hub id as `config` does go online
        _txt2img(client, "hub-config-sd15")
    assert err.value.code == "model_unavailable" and seen, seen


def test_a_controlnet_file_without_configs_goes_to_diffusers_as_it_is(tmp_path: Path) -> None:
    """A single-file ControlNet in a preset without `config` (a scanned A1111 folder without
    `[models_dir] configs`) is handed to diffusers, which picks its own configs: offline here, it says
    which file it lacks; the preset's own code never fails on the missing `config`."""
    import dataclasses

    import torch
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    from underpaint.daemon.config import load_config
    from underpaint.daemon.families.base import load_model

    file = tmp_path / "control_canny.safetensors"
    save_file({"control_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, str(file))
    preset = dataclasses.replace(load_config(None).presets["tiny"], single_file_config=None)
    with pytest.raises(OSError, match="config.json"):
        load_model(ControlNetModel, preset, str(file), torch.float32)
