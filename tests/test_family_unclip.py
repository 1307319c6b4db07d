"""unclip (Karlo) through a real daemon: txt2img through prior, decoder and super resolution (prompts
matter, progress spans the three stages, cancel stops it mid-way), `variation` on the whole image and on
a selection, loading both model_index.json forms, and proof that the variation view shares base."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import composite, ellipse_mask, obj, picture, pixels
from PIL import Image

from underpaint.daemon.builders.tiny import ensure_tiny
from underpaint.daemon.config import Preset, load_config
from underpaint.daemon.families import family
from underpaint.daemon.serving.models import ModelManager, module_bytes
from underpaint.protocol import DaemonError, JobCancelled

MODEL = "tiny-unclip"
STAGES = {"prior_steps": 2, "steps": 3, "super_res_steps": 2}
FAST = {**STAGES, "seed": 5}


@pytest.fixture
def manager(underpaint_home: Path) -> ModelManager:
    return ModelManager(
        load_config(), torch.device("cpu"), torch.float32, tiny_root=underpaint_home / "models"
    )


def test_preset_offers_txt2img_and_variation_with_stage_parameters(client) -> None:
    entry = next(m for m in client.models()["presets"] if m["name"] == MODEL)
    assert entry["family"] == "unclip" and entry["ops"] == ["txt2img", "variation"]
    t2i = entry["op_specs"]["txt2img"]["params"]
    assert {k: t2i[k]["default"] for k in ("steps", "prior_steps", "super_res_steps")} == {
        "steps": 25,
        "prior_steps": 25,
        "super_res_steps": 7,
    }
    assert t2i["guidance_scale"]["default"] == 8.0 and t2i["prior_guidance_scale"]["default"] == 4.0
    assert t2i["steps"]["min"] == 2, "UnCLIPScheduler cannot run a single step"
    assert not {"negative_prompt", "width", "height", "scheduler"} & set(t2i)
    assert "prior_steps" not in entry["op_specs"]["variation"]["params"], "variations skip the prior"
    with pytest.raises(DaemonError) as err:
        client.run("txt2img", {"prompt": "a cat", "width": 128, **FAST}, model=MODEL)
    assert err.value.code == "invalid_value" and "width" in str(err.value)
    with pytest.raises(DaemonError) as err:
        client.run("inpaint", {"prompt": "a cat", **FAST}, model=MODEL)
    assert err.value.code == "unsupported_op"


def test_txt2img_prompts_and_seeds_change_the_picture(client) -> None:
    fox = client.run("txt2img", {"prompt": "a red fox", "variations": 2, **FAST}, model=MODEL)
    first, second = (pixels(i) for i in fox["images"])
    assert first.shape == (64, 64, 4), "the super-resolution size"
    assert first[..., :3].std() > 1
    assert not np.array_equal(first, second), "different seeds, different pictures"
    castle = client.run("txt2img", {"prompt": "a blue castle at night", **FAST}, model=MODEL)
    diff = np.abs(pixels(castle["images"][0]).astype(int) - first.astype(int)).mean()
    assert diff > 1, "another prompt gives another picture (a degenerate prior would not)"
    again = client.run("txt2img", {"prompt": "a red fox", **FAST}, model=MODEL)
    assert np.array_equal(pixels(again["images"][0]), first), "same seed, same pixels"


def test_progress_spans_prior_decoder_and_super_resolution(client) -> None:
    events: list[dict] = []
    client.run(
        "txt2img", {"prompt": "a cat", "variations": 2, **FAST}, model=MODEL, on_progress=events.append
    )
    total = 2 * sum(STAGES.values())
    assert [e["step"] for e in events] == list(range(1, total + 1))
    assert all(e["total"] == total for e in events), "the plan knows every stage from the first step"


def test_cancel_stops_the_job_inside_the_decoder(client) -> None:
    job = client.submit(
        "txt2img",
        {"prompt": "a cat", "prior_steps": 3, "steps": 200, "super_res_steps": 2, "seed": 1},
        model=MODEL,
    )
    for event in client.events(job, timeout=120):
        if event["type"] == "loading":  # the preset's first load (when this test runs alone)
            continue
        assert event["type"] == "progress", event
        if event["step"] >= 5:  # past the prior's 3 steps: in the decoder's loop
            break
    assert event["total"] == 205
    client.cancel(job)
    after: list[dict] = []
    with pytest.raises(JobCancelled):
        client.wait(job, on_progress=after.append, timeout=120)
    assert len(after) <= 1, f"cancel took effect within one step, not {len(after)}"
    assert client.run("txt2img", {"prompt": "a cat", **FAST}, model=MODEL)["images"], "still works"


def test_whole_image_variations_follow_seeds(client) -> None:
    base = picture((96, 64))
    params = {"steps": 3, "super_res_steps": 2, "seed": 21}
    batch = client.run("variation", params | {"variations": 2}, {"image": obj(base)}, model=MODEL)
    first, second = (pixels(i) for i in batch["images"])
    assert [i["seed"] for i in batch["images"]] == [21, 22]
    assert first.shape == (64, 96, 4) and (first[..., 3] == 255).all()
    assert not np.array_equal(first, second)
    again = client.run("variation", params, {"image": obj(base)}, model=MODEL)
    assert np.array_equal(pixels(again["images"][0]), first), "same seed, same pixels"
    alone = client.run("variation", params | {"seed": 22}, {"image": obj(base)}, model=MODEL)
    assert np.array_equal(pixels(alone["images"][0]), second), "image i of a batch = a lone run with seed+i"
    other = client.run(
        "variation", params, {"image": obj(base.transpose(Image.FLIP_TOP_BOTTOM))}, model=MODEL
    )
    assert np.abs(pixels(other["images"][0]).astype(int) - first.astype(int)).mean() > 1, "the picture steers"


def test_masked_variation_leaves_the_rest_untouched(client) -> None:
    base = picture((128, 96))
    mask = ellipse_mask(base.size, (20, 30, 110, 70), soften=2)  # wide: the square output is cropped
    result = client.run(
        "variation",
        {"steps": 2, "super_res_steps": 2, "seed": 3, "padding": 4},
        {"image": obj(base), "mask": obj(mask)},
        model=MODEL,
    )
    patch = result["images"][0]
    bbox = mask.getbbox()
    assert (patch["width"], patch["height"]) == (bbox[2] - bbox[0] + 8, bbox[3] - bbox[1] + 8)
    out = np.asarray(composite(base, result))
    before = np.asarray(base)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], before[outside]), "a pixel outside the mask changed"
    inside = np.asarray(mask) == 255
    assert (np.abs(out[inside].astype(int) - before[inside].astype(int)).sum(axis=1) > 0).mean() > 0.9


def test_variation_view_loads_only_the_image_encoder(manager: ModelManager) -> None:
    preset = manager.preset(MODEL)
    t2i = manager.view(preset, "txt2img")
    base_bytes = manager.used_bytes()
    assert manager.loads == 1 and base_bytes == module_bytes(t2i)
    variation = manager.view(preset, "variation")
    for name in ("decoder", "text_encoder", "tokenizer", "text_proj", "super_res_first", "super_res_last"):
        assert getattr(variation, name) is getattr(t2i, name), name
    assert manager.loads == 2
    assert manager.used_bytes() - base_bytes == module_bytes(variation.image_encoder), "only the encoder"
    assert set(manager.component_objects(MODEL)) == {"base", "variation"}


@pytest.mark.parametrize("library", ["diffusers", "unclip"])
def test_both_model_index_forms_load(underpaint_home: Path, tmp_path: Path, library: str) -> None:
    """What save_pretrained writes (["diffusers", ...]) and what the hub has (["unclip", ...])."""
    from diffusers.pipelines.deprecated.unclip import UnCLIPPipeline

    folder = tmp_path / "karlo"
    shutil.copytree(ensure_tiny(underpaint_home / "models", "unclip") / "base", folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["text_proj"] = [library, "UnCLIPTextProjModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises((AttributeError, ValueError)):
        UnCLIPPipeline.from_pretrained(folder)  # why the family loads component by component
    preset = Preset("local-karlo", "unclip", 64, {"base": str(folder)})
    pipe = family("unclip").load_base(preset, str(folder), torch.float32)
    image = pipe(
        "a cat",
        prior_num_inference_steps=2,
        decoder_num_inference_steps=2,
        super_res_num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (64, 64)


def hub_cache(cache: Path, repo: str, folder: Path) -> Path:
    """Lay `folder` out as the Hugging Face cache holds a downloaded `repo` (branch main)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return root / "snapshots" / commit


def test_karlo_preset_loads_hub_folders_from_the_cache(
    underpaint_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real `karlo` preset by its hub ids, offline, with the hub's model_index.json form."""
    import huggingface_hub.constants

    tiny = ensure_tiny(underpaint_home / "models", "unclip")
    karlo = load_config().presets["karlo"]
    base = hub_cache(tmp_path, karlo.sources["base"], tiny / "base")
    index = json.loads((base / "model_index.json").read_text())
    (base / "model_index.json").write_text(
        json.dumps(index | {"text_proj": ["unclip", "UnCLIPTextProjModel"]})
    )
    hub_cache(tmp_path, karlo.sources["variation"], tiny / "variation")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    manager = ModelManager(load_config(), torch.device("cpu"), torch.float32)
    preset = manager.preset("karlo")
    assert family("unclip").ops(preset) == ["txt2img", "variation"]
    variation = manager.view(preset, "variation")
    assert manager.loads == 2 and variation.decoder is manager.view(preset, "txt2img").decoder
    out = variation(
        image=picture((64, 64)).convert("RGB"),
        decoder_num_inference_steps=2,
        super_res_num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert out.size == (64, 64)
