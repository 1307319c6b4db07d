"""The models a painter already has: `serve --models-dir DIR` scans an A1111/Forge or ComfyUI tree
and makes a preset per checkpoint, family read from its header, with the LoRAs and ControlNets of its
width; files it cannot use are listed with the reason, in the log and in `models`/`welcome`.

The trees are built here from real files: single-file checkpoints converted from the tiny sd15, sd2
and sdxl models (tests/single_file.py), tiny LoRAs (tests/lora_files.py), the tiny ControlNet and
diffusers folders, plus what real folders also hold (a cut-off download, a VAE, a pickle, a Flux
file, notes). A real daemon then paints with a scanned preset and its LoRA and ControlNet.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import ellipse_mask, obj, pixels
from lora_files import build_lora
from safetensors.torch import save_file
from single_file import original_checkpoint, save_checkpoint

from underpaint.daemon import model_folders
from underpaint.daemon.builders.tiny import ensure_tiny
from underpaint.daemon.cli import main as cli_main
from underpaint.daemon.commands.launch import DaemonProcess, running_daemon
from underpaint.daemon.config import Config, load_config
from underpaint.daemon.errors import ConfigError
from underpaint.protocol import Client

FAMILIES = ("sd15", "sd2", "sdxl")
T2I = {"prompt": "a red fox in the snow", "seed": 4, "steps": 2, "width": 64, "height": 64}
SD15 = "Dream-Mix-v1"  # the preset made from "Dream Mix v1.safetensors"
LCM = "lcm-lora-sdv1-5"  # a LoRA folder's name: its file has diffusers' generic name
LIVE = {"steps": 4, "guidance_scale": 1.0, "scheduler": "lcm", "loras": [{"name": LCM, "weight": 1.0}]}
CANNY = "control_v11p_sd15_canny"  # a diffusers ControlNet folder, named as lllyasviel names them


@pytest.fixture(scope="module")
def trees(underpaint_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An A1111 tree and a ComfyUI tree of real files, and a config naming the tiny configs."""
    built = underpaint_home / "models"
    tiny = {fam: ensure_tiny(built, fam) for fam in FAMILIES}
    root = tmp_path_factory.mktemp("painter")
    webui, comfy = root / "stable-diffusion-webui", root / "ComfyUI"
    ckpts = webui / "models" / "Stable-diffusion"
    (ckpts / "XL").mkdir(parents=True)
    sd15 = original_checkpoint(tiny["sd15"] / "base", "sd15")
    save_checkpoint(sd15, ckpts / "Dream Mix v1.safetensors")
    save_checkpoint(
        original_checkpoint(tiny["sd15"] / "inpaint", "sd15"), ckpts / "Dream Mix v1-inpainting.safetensors"
    )
    shutil.copy(ckpts / "Dream Mix v1-inpainting.safetensors", ckpts / "lonely_inpainting.safetensors")
    save_checkpoint(
        original_checkpoint(tiny["sdxl"] / "base", "sdxl"), ckpts / "XL" / "juggernautXL.safetensors"
    )
    # What else lies in real folders: a cut-off download, a VAE, a pickle, a Flux file, notes.
    whole = (ckpts / "Dream Mix v1.safetensors").read_bytes()
    (ckpts / "half-downloaded.safetensors").write_bytes(whole[: len(whole) // 2])
    vae = {
        k.removeprefix("first_stage_model."): v for k, v in sd15.items() if k.startswith("first_stage_model.")
    }
    save_file({k: v.contiguous() for k, v in vae.items()}, str(ckpts / "vae-ft-mse.safetensors"))
    save_checkpoint(sd15, ckpts / "old-model.ckpt")
    flux = "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"
    save_file(
        {flux: torch.zeros(8), "model.diffusion_model.img_in.weight": torch.zeros(8, 4)},
        str(ckpts / "flux1-schnell.safetensors"),
    )
    (ckpts / "Dream Mix v1.txt").write_text("trigger words: dreamy")
    loras = webui / "models" / "Lora"
    build_lora(built, "sd15", loras / "styles" / "watercolor.safetensors")
    build_lora(built, "sdxl", loras / "xl-detail.safetensors", text_encoders=False)
    build_lora(built, "sd2", loras / "sd2-style.safetensors")  # no SD 2 checkpoint in this tree
    lcm = loras / "lcm-lora-sdv1-5" / "pytorch_lora_weights.safetensors"  # as diffusers saves LoRAs
    build_lora(built, "sd15", lcm, seed=9)
    shutil.copytree(tiny["sd15"] / "controlnet-canny", webui / "models" / "ControlNet" / CANNY)
    shutil.copytree(
        tiny["sdxl"] / "controlnet-canny", webui / "models" / "ControlNet" / "diffusers_xl_canny_mid"
    )
    # ComfyUI: lower-case folders, a sub-folder, a diffusers folder linked in, the SD 2 LoRA shared.
    models = comfy / "models"
    (models / "checkpoints" / "SD2").mkdir(parents=True)
    save_checkpoint(
        original_checkpoint(tiny["sd2"] / "base", "sd2"),
        models / "checkpoints" / "SD2" / "v2 base.safetensors",
    )
    (models / "diffusers").mkdir()
    os.symlink(tiny["sd15"] / "base", models / "diffusers" / "my-sd15-folder")
    os.link(
        models / "checkpoints" / "SD2" / "v2 base.safetensors",
        models / "checkpoints" / "tiny-sd2.safetensors",
    )
    (models / "loras").mkdir()
    shutil.copy(loras / "sd2-style.safetensors", models / "loras" / "sd2-style.safetensors")
    config = root / "underpaint.toml"
    config.write_text(_config(tiny, ckpts, loras, webui))
    return {"webui": webui, "comfy": comfy, "config": config, "tiny-sd15": tiny["sd15"]}


def _config(tiny: dict[str, Path], ckpts: Path, loras: Path, webui: Path) -> str:
    """The tiny folders as each family's configs, and the sd15 checkpoint as an explicit preset."""
    configs = ", ".join(f'{fam} = "{tiny[fam] / "base"}"' for fam in FAMILIES)
    return "\n".join(
        [
            f"[models_dir]\nconfigs = {{ {configs} }}",
            "[presets.explicit]",
            f'base = "{ckpts / "Dream Mix v1.safetensors"}"',
            f'config = "{tiny["sd15"] / "base"}"',
            "resolution = 64",
            f'[presets.explicit.loras]\nwatercolor = "{loras / "styles" / "watercolor.safetensors"}"',
            f'[presets.explicit.controlnets]\ncanny = "{webui / "models" / "ControlNet" / CANNY}"',
        ]
    )


def _scanned(config: Config, root: Path) -> dict[str, Any]:
    """The presets made from files under `root` (not the config's own)."""
    made = {n: p for n, p in config.presets.items() if p.sources.get("base", "").startswith(str(root))}
    return {n: p for n, p in made.items() if n != "explicit"}


def _reasons(config: Config) -> dict[str, str]:
    return {Path(item["path"]).name: item["reason"] for item in config.unusable}


def test_an_a1111_tree_makes_a_preset_per_checkpoint_with_what_fits_it(trees: dict[str, Path]) -> None:
    webui = trees["webui"]
    config = load_config(trees["config"], webui)
    presets = _scanned(config, webui)
    assert sorted(presets) == [SD15, "juggernautXL"]
    assert config.default == SD15, "the first scanned checkpoint is the default when the file names none"
    dream, xl = presets[SD15], presets["juggernautXL"]
    assert (dream.family, xl.family) == ("sd15", "sdxl"), "read from the headers"
    assert dream.resolution == xl.resolution == 64, "the native size of the configs folder"
    assert dream.single_file_config == str(trees["tiny-sd15"] / "base")
    assert Path(dream.sources["inpaint"]).name == "Dream Mix v1-inpainting.safetensors"
    assert "inpaint" not in xl.sources
    assert sorted(dream.loras) == [LCM, "watercolor"] and sorted(xl.loras) == ["xl-detail"], "by width"
    assert dream.live == LIVE and xl.live == {}, "an LCM-LoRA of its own makes its live setting"
    assert Path(dream.controlnets["canny"]).name == CANNY
    assert Path(xl.controlnets["canny"]).name == "diffusers_xl_canny_mid"
    reasons = _reasons(config)
    expected = {
        "half-downloaded.safetensors": "truncated",
        "vae-ft-mse.safetensors": "a VAE on its own",
        "old-model.ckpt": "trust_pickle = true",
        "flux1-schnell.safetensors": "flux",
        "sd2-style.safetensors": "fits none of the checkpoints",
        "lonely_inpainting.safetensors": "no base checkpoint of the same name",
    }
    assert sorted(reasons) == sorted(expected), "model files only: notes and previews are not listed"
    for name, says in expected.items():
        assert says in reasons[name], f"{name}: {reasons[name]}"
    assert "width 64" in reasons["sd2-style.safetensors"] and "sd15 (32)" in reasons["sd2-style.safetensors"]


def test_a_comfyui_tree_with_a_diffusers_folder_and_a_quick_rescan(trees: dict[str, Path]) -> None:
    comfy = trees["comfy"]
    config = load_config(trees["config"], comfy)
    presets = _scanned(config, comfy)
    assert sorted(presets) == ["my-sd15-folder", "tiny-sd2-2", "v2-base"], "built-in tiny-sd2 keeps its name"
    assert presets["v2-base"].family == "sd2" and sorted(presets["v2-base"].loras) == ["sd2-style"]
    assert presets["tiny-sd2-2"].loras == presets["v2-base"].loras
    folder = presets["my-sd15-folder"]
    assert folder.family == "sd15" and folder.single_file_config is None and folder.resolution == 64
    assert config.unusable == (), config.unusable
    started = time.monotonic()  # headers only: a second scan (imports done) takes no time
    found = model_folders.scan(model_folders.settings(str(trees["webui"]), None), set())
    assert len(found.presets) == 2 and time.monotonic() - started < 1.5


def test_a_relative_model_folder_is_read_from_the_config_files_folder(
    trees: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = trees["config"].parent
    where = trees["webui"].relative_to(root)
    config_file = root / "relative.toml"
    config_file.write_text(
        trees["config"].read_text().replace("[models_dir]\n", f'[models_dir]\npath = "{where}"\n')
    )
    monkeypatch.chdir(tmp_path)  # the daemon started from another folder
    assert sorted(_scanned(load_config(config_file), trees["webui"])) == [SD15, "juggernautXL"]


def test_trusted_pickles_become_presets_and_bad_folders_are_refused(
    trees: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    where = model_folders.FolderSettings(trees["webui"], trust_pickle=True)
    found = model_folders.scan(where, set())
    assert found.presets["old-model"].family == "sd15" and found.presets["old-model"].trust_pickle
    missing = tmp_path / "no-such-folder"
    with pytest.raises(ConfigError, match="no-such-folder.*does not exist"):
        load_config(None, missing)
    assert cli_main(["serve", "--models-dir", str(missing), "--endpoint", "tcp://127.0.0.1:0"]) == 2
    assert f"models dir {str(missing)!r} does not exist" in capsys.readouterr().err
    (tmp_path / "empty" / "models" / "loras").mkdir(parents=True)
    caplog.set_level(logging.INFO, "underpaint.model_folders")
    assert model_folders.scan(model_folders.FolderSettings(tmp_path / "empty"), set()).presets == {}
    assert "found no usable checkpoint (looked in " in caplog.text and "loras" in caplog.text
    with pytest.raises(ConfigError, match=r"\[models_dir\] takes path, configs and trust_pickle"):
        model_folders.settings({"path": str(tmp_path), "config": {}}, None)


def test_a_plain_folder_is_searched_as_it_is_and_other_formats_are_told_apart(
    trees: dict[str, Path], tmp_path: Path
) -> None:
    """No known layout: the folder itself. Kohya names, text-encoder-only LoRAs, LyCORIS, embeddings,
    SD3, GGUF and pickles, as real files with the key names those tools write."""
    ckpts = trees["webui"] / "models" / "Stable-diffusion"
    os.link(ckpts / "Dream Mix v1.safetensors", tmp_path / "dream.safetensors")
    os.link(ckpts / "XL" / "juggernautXL.safetensors", tmp_path / "xl.safetensors")
    block = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    te = "text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight"
    sd3 = "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"
    files = {
        "kohya.safetensors": {f"{block}.lora_down.weight": (4, 32), f"{block}.lora_up.weight": (32, 4)},
        "xl-text-only.safetensors": {f"lora_te1_{te}": (4, 32), f"lora_te2_{te}": (4, 48)},
        "loha.safetensors": {f"{block}.hada_w1_a": (32, 4), f"{block}.hada_w1_b": (4, 32)},
        "easynegative.safetensors": {"emb_params": (2, 32)},
        "sd3-medium.safetensors": {sd3: (9216,), "model.diffusion_model.pos_embed": (1, 36864, 1)},
    }
    for name, shapes in files.items():
        save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, str(tmp_path / name))
    (tmp_path / "q4.gguf").write_bytes(b"GGUF")
    (tmp_path / "old-lora.pt").write_bytes(b"not even read")
    found = model_folders.scan(model_folders.FolderSettings(tmp_path), set())
    assert sorted(found.presets) == ["dream", "xl"]
    assert found.presets["dream"].loras == {"kohya": str(tmp_path / "kohya.safetensors")}
    assert found.presets["xl"].loras == {"xl-text-only": str(tmp_path / "xl-text-only.safetensors")}
    reasons = {Path(u["path"]).name: u["reason"] for u in found.unusable}
    expected = {
        "loha.safetensors": "LyCORIS",
        "easynegative.safetensors": "textual-inversion embedding",
        "sd3-medium.safetensors": "a sd3 model",
        "q4.gguf": "GGUF",
        "old-lora.pt": "pickled",
    }
    assert sorted(reasons) == sorted(expected)
    for name, says in expected.items():
        assert says in reasons[name], f"{name}: {reasons[name]}"


@pytest.fixture(scope="module")
def served(trees: dict[str, Path]) -> Iterator[tuple[Client, DaemonProcess]]:
    args = ("--config", str(trees["config"]), "--models-dir", str(trees["webui"]))
    with running_daemon(*args, preset=SD15) as proc:
        with Client(proc.endpoint, timeout=120) as client:
            yield client, proc


def test_models_and_welcome_list_scanned_presets_and_unusable_files(
    served: tuple[Client, DaemonProcess], trees: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    client, proc = served
    log = proc.log()
    reply = client.models()
    entry = next(p for p in reply["presets"] if p["name"] == SD15)
    watercolor = str(trees["webui"] / "models" / "Lora" / "styles" / "watercolor.safetensors")
    assert entry["family"] == "sd15" and entry["controlnets"] == ["canny"]
    assert entry["loras"][1] == {"name": "watercolor", "source": watercolor}
    assert entry["live"] == LIVE and [lora["name"] for lora in entry["loras"]] == [LCM, "watercolor"]
    assert "controlnet" in entry["ops"] and "loras" in entry["op_specs"]["txt2img"]["params"]
    unusable = {Path(u["path"]).name: u["reason"] for u in reply["unusable"]}
    assert "truncated" in unusable["half-downloaded.safetensors"]
    assert client.hello("test")["unusable"] == reply["unusable"]
    assert f"preset {SD15} (sd15, 64 px)" in log, "one log line per preset"
    assert "cannot use" in log and "vae-ft-mse.safetensors: a VAE on its own" in log
    assert cli_main(["models", "--endpoint", proc.endpoint]) == 0
    printed = capsys.readouterr().out
    assert f"  {SD15} " in printed and f"loras: {LCM}, watercolor" in printed
    assert "half-downloaded.safetensors: truncated" in printed


def test_a_scanned_preset_paints_like_the_explicit_one(served: tuple[Client, DaemonProcess]) -> None:
    client, _ = served

    def rgb(model: str, weight: float | None, op: str = "txt2img", **more: Any) -> np.ndarray:
        loras = {} if weight is None else {"loras": [{"name": "watercolor", "weight": weight}]}
        result = client.run(
            op, {**T2I, **loras, **more.pop("params", {})}, more.pop("images", None), model=model
        )
        return pixels(result["images"][0])[..., :3]

    plain = rgb(SD15, 0.0)
    styled = rgb(SD15, 1.0)
    assert plain.std() > 0 and not np.array_equal(styled, plain), "the attached LoRA changes the picture"
    assert np.array_equal(styled, rgb("explicit", 1.0)), "same file, LoRA and configs: same pixels"
    assert np.array_equal(plain, rgb("explicit", None))
    sketch = {"sketch": obj(ellipse_mask((64, 64), (10, 10, 54, 54)).convert("RGB"))}
    unit = {"units": [{"model": "canny", "image": "sketch", "preprocessor": "none"}]}
    scanned = rgb(SD15, None, "controlnet", params=unit, images=sketch)
    assert np.array_equal(scanned, rgb("explicit", None, "controlnet", params=unit, images=sketch))
    assert not np.array_equal(scanned, plain), "the ControlNet steered it"
    live = rgb(SD15, None, params=LIVE)  # what an editor's Live setting sends: the LCM-LoRA, 4 LCM steps
    assert live.std() > 0 and not np.array_equal(live, plain)
