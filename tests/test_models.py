"""Model management: ops of one preset share components; the LRU budget unloads what is stale."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from underpaint.daemon.config import load_config
from underpaint.daemon.errors import RequestError
from underpaint.daemon.families import family
from underpaint.daemon.serving.models import ModelManager, module_bytes


@pytest.fixture
def manager(underpaint_home: Path) -> ModelManager:
    return ModelManager(
        load_config(), torch.device("cpu"), torch.float32, tiny_root=underpaint_home / "models"
    )


def test_views_share_the_loaded_components(manager: ModelManager) -> None:
    tiny = manager.preset("tiny")
    base = manager.view(tiny, "txt2img")
    after_base = manager.used_bytes()
    img2img = manager.view(tiny, "img2img")
    controlnet = manager.view(tiny, "controlnet", ["canny"])
    assert manager.used_bytes() - after_base == module_bytes(controlnet.controlnet), "only the ControlNet"
    inpaint = manager.view(tiny, "inpaint")
    instruct = manager.view(tiny, "instruct")
    cn_inpaint = manager.view(tiny, "controlnet_inpaint", ["canny"])
    for view in (img2img, controlnet, inpaint, instruct, cn_inpaint):
        assert view.vae is base.vae and view.text_encoder is base.text_encoder
        assert view.tokenizer is base.tokenizer
    assert img2img.unet is base.unet and controlnet.unet is base.unet
    # The tiny preset has an inpainting checkpoint: its UNet (and only that) is loaded once.
    assert inpaint.unet is not base.unet and cn_inpaint.unet is inpaint.unet
    assert inpaint.unet.config.in_channels == 9 and instruct.unet.config.in_channels == 8
    assert cn_inpaint.controlnet is controlnet.controlnet
    assert set(manager.component_objects("tiny")) == {"base", "controlnet:canny", "inpaint", "instruct"}
    expected = sum(
        module_bytes(m)
        for m in (base.unet, base.vae, base.text_encoder, controlnet.controlnet, inpaint.unet, instruct.unet)
    )
    assert manager.used_bytes() == expected, "nothing is counted (or loaded) twice"


def test_lru_budget_unloads_the_least_recently_used(manager: ModelManager) -> None:
    tiny = manager.preset("tiny")
    manager.view(tiny, "txt2img")
    base_bytes = manager.used_bytes()
    manager.budget_bytes = base_bytes + 1  # room for the base and nothing else
    upscaler = manager.view(tiny, "upscale_x4")
    assert set(manager.component_objects("tiny")) == {"upscale_x4"}, "the stale base was unloaded"
    assert manager.used_bytes() == module_bytes(*upscaler.components.values())
    loads = manager.load_seconds
    manager.view(tiny, "txt2img")
    assert manager.load_seconds > loads, "the base was loaded again"
    assert set(manager.component_objects("tiny")) == {"base"}
    assert manager.view(tiny, "upscale_x4") is not upscaler, "a reloaded upscaler is a new object"


def test_unload_frees_and_unknown_or_missing_models_are_clear(manager: ModelManager, tmp_path: Path) -> None:
    tiny = manager.preset("tiny")
    manager.view(tiny, "txt2img")
    assert manager.unload("tiny") > 0 and manager.used_bytes() == 0
    with pytest.raises(RequestError) as err:
        manager.preset("nope")
    assert err.value.code == "unknown_model"
    config = tmp_path / "presets.toml"
    config.write_text(f'[presets.local]\nbase = "{tmp_path / "no-such-folder"}"\n')
    missing = ModelManager(load_config(config), torch.device("cpu"), torch.float32)
    with pytest.raises(RequestError) as err:
        missing.view(missing.preset("local"), "txt2img")
    assert err.value.code == "model_unavailable" and "no-such-folder" in err.value.message


def test_user_config_merges_over_the_builtin_presets(tmp_path: Path) -> None:
    config = tmp_path / "presets.toml"
    config.write_text(
        'default = "mine"\n[presets.mine]\nbase = "/models/sd15"\nresolution = 768\n'
        '[presets.mine.controlnets]\ncanny = "/models/cn.safetensors"\n'
    )
    loaded = load_config(config)
    assert loaded.default == "mine" and {"sd15", "tiny", "mine"} <= set(loaded.presets)
    mine = loaded.presets["mine"]
    assert mine.family == "sd15", "a family that cannot be detected (no weights here) is assumed sd15"
    assert mine.resolution == 768 and family("sd15").ops(mine) == [
        "txt2img",
        "sdedit",
        "inpaint",
        "controlnet",
        "reword",
    ]
    assert loaded.presets["sd15"].sources["inpaint"] == "stable-diffusion-v1-5/stable-diffusion-inpainting"


def test_device_and_precision_choice() -> None:
    from underpaint.daemon.device import pick_device, pick_dtype

    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.float16, "half precision on GPUs"
    assert pick_dtype(torch.device("mps")) == torch.float16
    assert pick_dtype(torch.device("cuda"), "float32") == torch.float32
