"""`underpaint pull PRESET...`: a built-in preset is built ahead of time (a daemon started afterwards
builds nothing), a hub preset offline fails fast and clearly per repo while the other sources go on, a
repo already in the Hugging Face cache is found offline, and an unknown preset is a clear error.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from underpaint.daemon.builders.tiny import TINY_VERSION, ensure_tiny
from underpaint.daemon.cli import build_parser
from underpaint.daemon.commands.launch import running_daemon
from underpaint.daemon.commands.pull import Fetch, _choose, plan
from underpaint.daemon.config import load_config
from underpaint.protocol import Client

CLI = [sys.executable, "-m", "underpaint.daemon.cli"]


def pull(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "pull", *args], capture_output=True, text=True, timeout=600, env={**os.environ, **env}
    )


def test_pull_builds_a_tiny_preset_and_the_daemon_then_builds_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = pull("tiny-sdxl", env={"UNDERPAINT_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout and "tiny sdxl models built" in done.stdout, done.stdout
    folder = home / "models" / f"tiny-v{TINY_VERSION}" / "sdxl"
    marker = (folder / "README.md").stat().st_mtime_ns
    with running_daemon(preset="tiny-sdxl", env={"UNDERPAINT_HOME": str(home)}) as daemon:
        with Client(daemon.endpoint, timeout=120) as client:
            client.hello("test")
            seen: list[dict] = []
            result = client.run("txt2img", {"steps": 2}, model="tiny-sdxl", on_event=seen.append, timeout=300)
    loading = [e["what"] for e in seen if e["type"] == "loading"]
    assert loading and all("building" not in what for what in loading), loading
    assert "tiny-sdxl base (loading the tiny sdxl models)" in loading
    assert result["timings"]["load"] > 0
    assert (folder / "README.md").stat().st_mtime_ns == marker, "the daemon rebuilt what pull built"


def test_pull_offline_fails_fast_naming_every_repo(tmp_path: Path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "UNDERPAINT_HOME": str(tmp_path)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    done = pull("sd15", env=env)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 1, done.stdout + done.stderr
    # Fast: no source waits for the network (each says its own seconds), and the whole command costs
    # less than 10 s of CPU (its start reads the presets, which imports diffusers: ~5 s on an idle
    # 2-core machine; the wall clock is also bounded, loosely, for machines busy with other tests).
    waited = sum(float(m) for m in re.findall(r"\((\d+\.\d) s\)$", done.stdout, re.M))
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert waited < 1.0 and cpu < 10 and wall < 60, (waited, cpu, wall)
    assert "Traceback" not in done.stderr + done.stdout
    preset = load_config().presets["sd15"]
    repos = [*preset.sources.values(), *preset.controlnets.values(), *preset.loras.values()]
    for repo in repos:
        line = next((ln for ln in done.stdout.splitlines() if f": {repo}:" in ln), "")
        assert line.startswith("FAILED") and "offline" in line and "not in the Hugging Face cache" in line, (
            repo,
            done.stdout,
        )
    assert f"{len(repos)} of {len(repos)} sources failed" in done.stderr


def test_pull_finds_a_cached_repo_offline_and_says_what_is_missing(tmp_path: Path) -> None:
    """A hub repo in the cache (laid out as huggingface_hub keeps it) is ready offline; a missing local
    file of the same preset fails with its path while the other sources are still processed."""
    tiny = ensure_tiny(tmp_path / "models", "sd15")
    repo = tmp_path / "hub" / "models--underpaint-test--tiny-sd15"
    revision = "0" * 40
    shutil.copytree(tiny / "base", repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    missing = tmp_path / "nowhere" / "scribble.safetensors"
    config = tmp_path / "mine.toml"
    config.write_text(
        f'[presets.mine]\nfamily = "sd15"\nbase = "underpaint-test/tiny-sd15"\n'
        f'[presets.mine.controlnets]\nscribble = "{missing}"\n'
        f'canny = "{tiny / "controlnet-canny"}"\n'
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "UNDERPAINT_HOME": str(tmp_path)}
    done = pull("mine", "--config", str(config), env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    base = next(ln for ln in lines if "mine base" in ln)
    assert base.startswith("ok") and "in the cache" in base, done.stdout
    scribble = next(ln for ln in lines if "controlnet scribble" in ln)
    assert scribble.startswith("FAILED") and str(missing) in scribble, done.stdout
    canny = next(ln for ln in lines if "controlnet canny" in ln)
    assert canny.startswith("ok") and "local folder" in canny, done.stdout
    assert "1 of 3 sources failed" in done.stderr


def test_pull_unknown_preset_lists_the_presets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = pull("tiny", "no-such-preset", env={"UNDERPAINT_HOME": str(tmp_path)})
    assert done.returncode == 2
    assert "unknown preset 'no-such-preset'" in done.stderr
    assert "tiny-sdxl" in done.stderr and "sd15" in done.stderr
    assert not (tmp_path / "models").exists(), "nothing is built when a name is wrong"
    with pytest.raises(SystemExit) as helped:
        build_parser().parse_args(["pull", "--help"])
    text = capsys.readouterr().out
    assert helped.value.code == 0 and "--config" in text and "--build-dir" in text and "hub" in text


def test_plans_fetch_what_the_families_load() -> None:
    presets = load_config().presets
    sdxl = {f.role: f for f in plan(presets["sdxl"])}
    assert sdxl["base"].how == "pipeline" and sdxl["base"].skip == ("vae",), "base loads the fp16-fix VAE"
    assert sdxl["refiner"].folders == ("unet",) and sdxl["inpaint"].folders == ("unet",)
    assert sdxl["clip"].how == "folders" and sdxl["clip"].variant is None
    assert "controlnet canny" in sdxl and "LoRA lcm" in sdxl
    sd15 = {f.role: f for f in plan(presets["sd15"])}
    assert "safety_checker" in sd15["base"].skip and sd15["inpaint"].folders == ("unet",)
    assert [f.how for f in plan(presets["tiny"])] == ["builtin"]


def test_weight_files_are_chosen_as_loading_reads_them() -> None:
    controlnet = [
        "config.json",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.fp16.bin",
        "README.md",
    ]
    assert _choose(controlnet, "", None, "folders") == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert _choose(controlnet, "", "fp16", "folders") == [
        "config.json",
        "diffusion_pytorch_model.fp16.safetensors",
    ]
    clip = [
        "config.json",
        "flax_model.msgpack",
        "tf_model.h5",
        "pytorch_model.bin",
        "merges.txt",
        "vocab.json",
    ]
    assert _choose(clip, "", None, "folders") == [
        "config.json",
        "merges.txt",
        "pytorch_model.bin",
        "vocab.json",
    ]
    sharded = [
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert len(_choose(sharded, "unet", "fp16", "folders")) == 4, "no fp16 files: the plain shards"
    assert _choose(sharded, "text_encoder", None, "folders") == []
    assert Fetch("p", "r", "s", "configs").how == "configs"
    assert _choose(sharded, "unet", None, "configs") == [
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors.index.json",
    ]
    # a single file's configs repo: every folder's configs, no weights
    assert _choose(sharded, "", None, "configs") == _choose(sharded, "unet", None, "configs")
