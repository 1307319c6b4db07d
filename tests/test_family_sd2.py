"""SD 2.x specifics: depth-to-image from the model's estimator or from a depth map the client paints,
v-prediction in the tiny 768-style base (while the depth and inpainting checkpoints keep their own
noise-predicting schedulers), what the depth and inpainting checkpoints share with base, and family
detection of SD 2 folders. The generic checks every family passes are in test_families.py."""

from __future__ import annotations

import filecmp
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from helpers import composite, ellipse_mask, obj, picture, pixels
from PIL import Image, ImageOps
from transformers import DPTForDepthEstimation, DPTImageProcessor

from underpaint.daemon.builders.tiny import ensure_tiny
from underpaint.daemon.config import load_config
from underpaint.daemon.families import detect_family
from underpaint.daemon.schedulers import fresh_scheduler
from underpaint.daemon.serving.models import ModelManager, module_bytes
from underpaint.protocol import DaemonError

MODEL = "tiny-sd2"
SIDE = 64  # the tiny preset's native size: the working picture is the sent one, unscaled
FAST = {"prompt": "a red fox in the snow", "steps": 4, "seed": 5}


@pytest.fixture(scope="module")
def tiny(underpaint_home: Path) -> Path:
    """The tiny SD 2 folders the daemon serves (built once, shared with it)."""
    return ensure_tiny(underpaint_home / "models", "sd2")


@pytest.fixture
def manager(underpaint_home: Path) -> ModelManager:
    return ModelManager(
        load_config(), torch.device("cpu"), torch.float32, tiny_root=underpaint_home / "models"
    )


def _estimated_depth(tiny: Path, image: Image.Image) -> Image.Image:
    """The tiny depth checkpoint's own estimate of `image`, painted as a client would send it: 8-bit,
    white = near."""
    processor = DPTImageProcessor.from_pretrained(tiny / "depth", subfolder="feature_extractor")
    estimator = DPTForDepthEstimation.from_pretrained(tiny / "depth", subfolder="depth_estimator").eval()
    with torch.no_grad():
        depth = estimator(processor(images=[image], return_tensors="pt").pixel_values).predicted_depth[0]
    depth = (depth - depth.min()) / (depth.max() - depth.min()) * 255
    return Image.fromarray(depth.numpy().astype(np.uint8)).resize(image.size, Image.BILINEAR)


def _depth(client: Any, image: Image.Image, depth: Image.Image | None = None, **params: Any) -> dict:
    images = {"image": obj(image)} | ({"depth": obj(depth)} if depth is not None else {})
    return client.run("depth", {**FAST, "strength": 0.8, **params}, images, model=MODEL)


def _distance(a: dict, b: dict) -> float:
    return float(np.abs(pixels(a["images"][0]).astype(int) - pixels(b["images"][0]).astype(int)).mean())


def test_depth_from_the_estimator_or_a_client_map_white_is_near(client: Any, tiny: Path) -> None:
    image = picture((SIDE, SIDE))
    estimated = _depth(client, image)
    own_map = _estimated_depth(tiny, image.convert("RGB"))
    as_map = _depth(client, image, own_map)
    inverted = _depth(client, image, ImageOps.invert(own_map))
    gradient = _depth(client, image, Image.linear_gradient("L").resize(image.size))
    for result in (estimated, as_map, inverted, gradient):
        assert pixels(result["images"][0]).shape == (SIDE, SIDE, 4)
    assert not np.array_equal(pixels(gradient["images"][0]), pixels(estimated["images"][0])), "map is used"
    # The estimator's own depth, sent as a map, steers like the estimator; upside down it does not.
    assert _distance(as_map, estimated) * 4 < _distance(inverted, estimated)
    assert _distance(as_map, estimated) * 4 < _distance(gradient, estimated)


def test_depth_with_a_mask_leaves_everything_outside_untouched(client: Any) -> None:
    base = picture((96, 64))
    mask = ellipse_mask(base.size, (30, 12, 70, 50), soften=2)
    depth = Image.radial_gradient("L").resize(base.size)
    images = {"image": obj(base), "mask": obj(mask), "depth": obj(depth)}
    result = client.run("depth", {**FAST, "padding": 8}, images, model=MODEL)
    out, before = np.asarray(composite(base, result)), np.asarray(base)
    outside, inside = np.asarray(mask) == 0, np.asarray(mask) == 255
    assert np.array_equal(out[outside], before[outside]), "a pixel outside the mask changed"
    assert (np.abs(out[inside].astype(int) - before[inside].astype(int)).sum(axis=1) > 0).mean() > 0.9


def test_a_flat_depth_map_is_refused_before_the_job_starts(client: Any) -> None:
    base = picture((96, 64))
    flat = Image.new("L", base.size, 128)
    with pytest.raises(DaemonError) as err:
        client.submit("depth", FAST, {"image": obj(base), "depth": obj(flat)}, model=MODEL)
    assert err.value.code == "invalid_value" and err.value.field == "images.depth"
    assert "flat" in str(err.value)
    # Flat where the job works (inside the selection) is just as meaningless.
    half = Image.new("L", base.size, 0)
    half.paste(255, (0, 0, 10, 64))
    mask = ellipse_mask(base.size, (50, 20, 80, 50))
    with pytest.raises(DaemonError) as err:
        images = {"image": obj(base), "mask": obj(mask), "depth": obj(half)}
        client.submit("depth", {**FAST, "padding": 4}, images, model=MODEL)
    assert err.value.code == "invalid_value"


def test_tiny_base_predicts_v_and_the_daemon_samples_with_it(client: Any, tiny: Path) -> None:
    result = client.run("txt2img", {**FAST, "width": SIDE, "height": SIDE}, model=MODEL)
    pipe = StableDiffusionPipeline.from_pretrained(tiny / "base")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"

    def direct(prediction: str) -> np.ndarray:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction)
        generator = [torch.Generator("cpu").manual_seed(FAST["seed"])]
        args = {"num_inference_steps": FAST["steps"], "width": SIDE, "height": SIDE, "output_type": "pil"}
        return np.asarray(pipe(FAST["prompt"], generator=generator, **args).images[0].convert("RGBA"))

    got = pixels(result["images"][0])
    assert np.array_equal(got, direct("v_prediction")), "the daemon ran the model's v-prediction schedule"
    assert not np.array_equal(got, direct("epsilon"))


def test_schedulers_follow_each_checkpoint_and_sd2_configs(manager: ModelManager) -> None:
    tiny = manager.preset(MODEL)
    base, depth, inpaint = (manager.view(tiny, kind) for kind in ("txt2img", "depth", "inpaint"))
    assert base.scheduler.config.prediction_type == "v_prediction"
    assert fresh_scheduler("euler", base.scheduler).config.prediction_type == "v_prediction", (
        "a named one too"
    )
    # The depth and inpainting checkpoints were trained to predict noise, whatever base does.
    assert depth.scheduler.config.prediction_type == inpaint.scheduler.config.prediction_type == "epsilon"
    assert base.text_encoder.config.hidden_act == "gelu" and base.tokenizer.pad_token == "!"
    assert base.unet.config.use_linear_projection and base.unet.config.upcast_attention
    assert base.unet.config.cross_attention_dim == base.text_encoder.config.hidden_size


def test_depth_and_inpaint_load_only_their_unet_and_estimator(manager: ModelManager) -> None:
    tiny = manager.preset(MODEL)
    base = manager.view(tiny, "txt2img")
    after_base = manager.used_bytes()
    depth = manager.view(tiny, "depth")
    assert depth.vae is base.vae and depth.text_encoder is base.text_encoder
    assert depth.tokenizer is base.tokenizer
    assert depth.unet is not base.unet and depth.unet.config.in_channels == 5
    assert manager.used_bytes() - after_base == module_bytes(depth.unet, depth.depth_estimator)
    loaded = manager.component_objects(MODEL)["depth"]
    assert loaded.vae is None and loaded.text_encoder is None, "never loaded, only base's are used"
    after_depth = manager.used_bytes()
    inpaint, sdedit = manager.view(tiny, "inpaint"), manager.view(tiny, "img2img")
    assert inpaint.vae is base.vae and inpaint.text_encoder is base.text_encoder
    assert inpaint.unet.config.in_channels == 9 and sdedit.unet is base.unet
    assert manager.used_bytes() - after_depth == module_bytes(inpaint.unet)
    assert manager.loads == 3
    assert manager.view(tiny, "depth") is depth and manager.loads == 3, "the view is kept warm"


def test_tiny_folders_are_detected_as_sd2_and_share_base_parts(underpaint_home: Path, tiny: Path) -> None:
    for folder in ("base", "inpaint", "depth"):
        assert detect_family(str(tiny / folder)) == "sd2", folder
    assert detect_family(str(ensure_tiny(underpaint_home / "models", "sd15") / "base")) == "sd15"
    for folder in ("inpaint", "depth"):
        for part in ("vae", "text_encoder", "tokenizer"):
            same = filecmp.dircmp(tiny / "base" / part, tiny / folder / part)
            assert not (same.diff_files or same.left_only or same.right_only), (folder, part)


def test_presets_offer_depth_and_what_they_have(client: Any) -> None:
    models = {p["name"]: p for p in client.hello("test_family_sd2")["models"]}
    assert models[MODEL]["ops"] == [
        "txt2img",
        "sdedit",
        "inpaint",
        "depth",
        "controlnet",
        "upscale",
        "reword",
    ]
    assert models["sd21"]["ops"] == ["txt2img", "sdedit", "inpaint", "depth", "upscale", "reword"]
    assert models["sd21"]["resolution"] == 768 and models["sd21-base"]["resolution"] == 512
    assert "upscale" not in models["sd21-base"]["ops"] and models["sd21"]["family"] == "sd2"
    depth = models[MODEL]["op_specs"]["depth"]
    assert (
        set(depth["images"]) == {"image", "mask", "depth"} and depth["params"]["strength"]["default"] == 0.8
    )
