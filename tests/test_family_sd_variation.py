"""sd-variation (Stable Diffusion image variations): the `variation` op through a real daemon on the whole
image and on a selection, seeds, proof that the view loads nothing beyond the base checkpoint, and what
the real checkpoint needs (its v2.0 hub branch, the model card's encoder preprocessing)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import composite, ellipse_mask, obj, picture, pixels
from PIL import Image

from underpaint.daemon.builders.tiny import ensure_tiny
from underpaint.daemon.config import load_config
from underpaint.daemon.serving.models import ModelManager, module_bytes
from underpaint.protocol import DaemonError

MODEL = "tiny-sd-variation"
FAST = {"steps": 3, "seed": 11}


def vary(client, params: dict, images: dict) -> dict:
    return client.run("variation", FAST | params, images, model=MODEL)


def test_preset_offers_only_variation_without_prompt(client) -> None:
    entry = next(m for m in client.models()["presets"] if m["name"] == MODEL)
    assert entry["family"] == "sd-variation" and entry["ops"] == ["variation"]
    params = entry["op_specs"]["variation"]["params"]
    assert params["guidance_scale"]["default"] == 3.0, "the model card's guidance"
    assert not {"prompt", "negative_prompt"} & set(params)
    with pytest.raises(DaemonError) as err:
        client.run("txt2img", {"prompt": "a cat", **FAST}, model=MODEL)
    assert err.value.code == "unsupported_op"
    with pytest.raises(DaemonError) as err:  # unCLIP's variation takes it; this family has no such stage
        vary(client, {"super_res_steps": 3}, {"image": obj(picture((64, 64)))})
    assert err.value.code == "invalid_value" and "super_res_steps" in str(err.value)


def test_whole_image_variations_follow_seeds(client) -> None:
    base = picture((96, 64))
    batch = vary(client, {"variations": 2}, {"image": obj(base)})
    first, second = (pixels(i) for i in batch["images"])
    assert [i["seed"] for i in batch["images"]] == [11, 12]
    assert first.shape == (64, 96, 4) and (first[..., 3] == 255).all()
    assert first[..., :3].std() > 1, "a picture, not a flat colour"
    assert not np.array_equal(first, second), "different seeds, different pictures"
    again = vary(client, {}, {"image": obj(base)})
    assert np.array_equal(pixels(again["images"][0]), first), "same seed, same pixels"
    alone = vary(client, {"seed": 12}, {"image": obj(base)})
    assert np.array_equal(pixels(alone["images"][0]), second), "image i of a batch = a lone run with seed+i"


def test_the_picture_steers_the_variation(client) -> None:
    base = picture((64, 64))
    other = base.transpose(Image.FLIP_TOP_BOTTOM).convert("L").convert("RGBA")  # another embedding
    a = pixels(vary(client, {}, {"image": obj(base)})["images"][0])
    b = pixels(vary(client, {}, {"image": obj(other)})["images"][0])
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.05


def test_masked_variation_leaves_the_rest_untouched(client) -> None:
    base = picture((128, 96))
    mask = ellipse_mask(base.size, (30, 20, 100, 80), soften=2)
    result = vary(client, {"padding": 8, "feather": 4}, {"image": obj(base), "mask": obj(mask)})
    patch = result["images"][0]
    bbox = mask.getbbox()
    assert (patch["x"], patch["y"]) == (bbox[0] - 8, bbox[1] - 8)
    out = np.asarray(composite(base, result))
    before = np.asarray(base)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], before[outside]), "a pixel outside the mask changed"
    inside = np.asarray(mask) == 255
    changed = np.abs(out[inside].astype(int) - before[inside].astype(int)).sum(axis=1) > 0
    assert changed.mean() > 0.9, "the selection was repainted"


def test_variation_view_is_the_base_checkpoint_and_nothing_more(underpaint_home: Path) -> None:
    manager = ModelManager(
        load_config(), torch.device("cpu"), torch.float32, tiny_root=underpaint_home / "models"
    )
    preset = manager.preset(MODEL)
    view = manager.view(preset, "variation")
    base = manager.component_objects(MODEL)["base"]
    assert view is not base, "the view has its own scheduler slot"
    for name in ("image_encoder", "unet", "vae", "feature_extractor"):
        assert getattr(view, name) is getattr(base, name), name
    assert view.safety_checker is None
    assert manager.view(preset, "variation") is view and manager.loads == 1
    assert manager.used_bytes() == module_bytes(view.image_encoder, view.unet, view.vae)


def hub_cache(cache: Path, repo: str, folder: Path, revision: str = "main") -> Path:
    """Lay `folder` out as the Hugging Face cache holds a downloaded `repo` at `revision`."""
    root = cache / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    return root / "snapshots" / commit


def test_real_preset_prefers_the_v2_branch_from_the_hub_cache(
    underpaint_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The `sd-variation` preset by its hub id, offline: branch v2.0 when cached, else main with a warning."""
    import huggingface_hub.constants

    tiny = ensure_tiny(underpaint_home / "models", "sd-variation") / "base"
    repo = load_config().presets["sd-variation"].sources["base"]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))

    def loaded() -> Any:
        manager = ModelManager(load_config(), torch.device("cpu"), torch.float32)
        return manager.view(manager.preset("sd-variation"), "variation")

    hub_cache(tmp_path, repo, tiny)
    with caplog.at_level(logging.WARNING, "underpaint.families.sd_variation"):
        assert loaded().scheduler.config.steps_offset == 1
    assert "branch v2.0 unavailable" in caplog.text
    caplog.clear()
    v2 = hub_cache(tmp_path, repo, tiny, "v2.0")
    config = json.loads((v2 / "scheduler" / "scheduler_config.json").read_text())
    (v2 / "scheduler" / "scheduler_config.json").write_text(json.dumps(config | {"steps_offset": 0}))
    with caplog.at_level(logging.WARNING, "underpaint.families.sd_variation"):
        assert loaded().scheduler.config.steps_offset == 0, "the v2.0 snapshot was loaded"
    assert "unavailable" not in caplog.text


def test_encoder_sees_the_whole_picture_squashed_not_centre_cropped() -> None:
    """The model card's preprocessing: CLIP's centre crop would cut off the red left quarter."""
    from transformers import CLIPImageProcessor

    from underpaint.daemon.families.sd_variation import encoder_input

    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    image = Image.new("RGB", (128, 32), "blue")
    image.paste((255, 0, 0), (0, 0, 32, 32))
    pixels_in = encoder_input(image, processor)
    assert pixels_in.shape == (1, 3, 32, 32)
    red, blue = pixels_in[0, 0], pixels_in[0, 2]
    assert (red[:, :6] > 1.5).all() and (blue[:, :6] < -1).all(), "the left quarter is red"
    assert (red[:, 10:] < -1).all() and (blue[:, 10:] > 1.5).all()
    cropped = processor(images=image, return_tensors="pt").pixel_values
    assert (cropped[0, 0] < -1).all(), "what the pipeline's own processor would have shown the encoder"
