"""`reword` (Prompt-to-Prompt, daemon/p2p.py) through a real daemon on the tiny presets: the edit keeps
the source's composition, edits that change nothing give the source or the plain re-run bit for bit,
the local blend changes only the words' region, ordinary jobs run exactly as before (also after a
cancelled reword), inpaint results can be reworded, and presets without a cross-attention UNet refuse.
The attention processors' installation and the token alignment are tested in-process too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from helpers import composite, ellipse_mask, obj, picture, pixels

from underpaint.daemon import p2p
from underpaint.daemon.builders.tiny import ensure_tiny
from underpaint.protocol import DaemonError, JobCancelled

SOURCE = "a red fox in the snow"
SWAPPED = "a red cat in the snow"  # as many tokens: replace
LONGER = "a red fox sitting in the deep snow"  # words added: refine
T2I = {"prompt": SOURCE, "seed": 5, "steps": 4, "width": 64, "height": 64}
CROSS_ATTENTION = ("tiny", "tiny-sd2", "tiny-sdxl")
OTHERS = ("tiny-kandinsky22", "tiny-unclip", "tiny-if", "tiny-ddpm", "tiny-sd-variation")

SIZE = (96, 64)
MASK_BOX = (24, 8, 72, 56)


def _rgba(result: dict[str, Any], i: int = 0) -> np.ndarray:
    return pixels(result["images"][i])


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a[..., :3].astype(int) - b[..., :3].astype(int)).mean())


def _source_and_plain(client: Any, model: str, new: str) -> tuple[np.ndarray, np.ndarray]:
    """The source picture and the plain re-run of the edited prompt with the same seed."""
    source = _rgba(client.run("txt2img", T2I, model=model))
    plain = _rgba(client.run("txt2img", {**T2I, "prompt": new}, model=model))
    assert not np.array_equal(source, plain), "the prompts must give different pictures to edit"
    return source, plain


# -- the edit keeps the composition -------------------------------------------------------------------
@pytest.mark.parametrize("model", CROSS_ATTENTION)
def test_replace_keeps_more_of_the_source_than_a_plain_rerun(client: Any, model: str) -> None:
    source, plain = _source_and_plain(client, model, SWAPPED)
    result = client.run("reword", {**T2I, "new_prompt": SWAPPED}, model=model)
    assert result["params"]["edit"] == "replace" and result["params"]["op"] == "txt2img"
    edited = _rgba(result)
    assert edited.shape == (64, 64, 4) and (edited[..., 3] == 255).all()
    assert [(i["x"], i["y"], i["seed"]) for i in result["images"]] == [(0, 0, 5)]
    assert _distance(edited, source) < _distance(plain, source)
    assert not np.array_equal(edited, source), "the edited prompt reaches the picture"


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_refine_aligns_added_words_and_keeps_more_of_the_source(client: Any, model: str) -> None:
    source, plain = _source_and_plain(client, model, LONGER)
    result = client.run("reword", {**T2I, "new_prompt": LONGER}, model=model)
    assert result["params"]["edit"] == "refine"
    edited = _rgba(result)
    assert _distance(edited, source) < _distance(plain, source)
    assert not np.array_equal(edited, plain) and not np.array_equal(edited, source)


@pytest.mark.parametrize("model", CROSS_ATTENTION)
def test_injecting_for_no_step_is_the_plain_rerun_bit_for_bit(client: Any, model: str) -> None:
    _, plain = _source_and_plain(client, model, SWAPPED)
    params = {**T2I, "new_prompt": SWAPPED, "inject_cross": 0.0, "inject_self": 0.0}
    assert np.array_equal(_rgba(client.run("reword", params, model=model)), plain)
    # the injection is what keeps the source: with it the pixels differ from the plain re-run
    assert not np.array_equal(
        _rgba(client.run("reword", {**params, "inject_cross": 1.0}, model=model)), plain
    )


@pytest.mark.parametrize("model", CROSS_ATTENTION)
def test_reweight_with_weight_one_is_the_source_bit_for_bit(client: Any, model: str) -> None:
    source = _rgba(client.run("txt2img", T2I, model=model))
    same = client.run("reword", {**T2I, "weights": {"snow": 1.0}}, model=model)
    assert same["params"]["edit"] == "reweight" and same["params"]["new_prompt"] == SOURCE
    assert np.array_equal(_rgba(same), source)
    more = _rgba(client.run("reword", {**T2I, "weights": {"snow": 4.0}}, model=model))
    less = _rgba(client.run("reword", {**T2I, "weights": {"snow": 0.0}}, model=model))
    assert not np.array_equal(more, source) and not np.array_equal(less, source)
    assert not np.array_equal(more, less)


def test_variations_reword_each_seed_like_the_source_job(client: Any) -> None:
    """Image i of a reword is the reword of the source's image i (seed + i), alone or together."""
    params = {**T2I, "new_prompt": SWAPPED, "variations": 2}
    both = client.run("reword", params, model="tiny")
    assert [i["seed"] for i in both["images"]] == [5, 6]
    alone = client.run("reword", {**params, "seed": 6, "variations": 1}, model="tiny")
    assert np.array_equal(_rgba(both, 1), _rgba(alone))
    again = client.run("reword", both["params"], model="tiny")
    assert all(np.array_equal(_rgba(both, i), _rgba(again, i)) for i in range(2))


# -- local blend ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_local_blend_changes_only_the_words_region(client: Any, model: str) -> None:
    size = {"width": 128, "height": 128}
    source = _rgba(client.run("txt2img", {**T2I, **size}, model=model))
    params = {**T2I, **size, "new_prompt": SWAPPED, "blend": ["fox", "cat"], "feather": 0}
    blended = _rgba(client.run("reword", params, model=model))
    region = blended[..., 3] > 0
    assert 0.05 < region.mean() < 0.95, f"the words mark part of the picture, not {region.mean():.0%}"
    outside = ~region
    assert np.array_equal(blended[outside][:, :3], source[outside][:, :3]), "a pixel outside changed"
    over = np.asarray(composite(_image(source), {"images": [_as_result(blended)]}))
    assert np.array_equal(over[outside], source[outside])
    assert not np.array_equal(blended[region][:, :3], source[region][:, :3]), "the region is edited"
    everywhere = _rgba(client.run("reword", {**params, "blend": []}, model=model))
    assert not np.array_equal(everywhere[outside], source[outside]), "without blend the rest changes too"


def _image(rgba: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(rgba, "RGBA")


def _as_result(rgba: np.ndarray) -> dict[str, Any]:
    return {**obj(_image(rgba)), "x": 0, "y": 0}


# -- inpaint results ----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_inpaint_results_can_be_reworded(client: Any, model: str) -> None:
    base = picture(SIZE)
    mask = ellipse_mask(SIZE, MASK_BOX, soften=2)
    images = {"image": obj(base), "mask": obj(mask)}
    params = {"prompt": SOURCE, "seed": 3, "steps": 4}
    source = client.run("inpaint", params, images, model=model)
    plain = client.run("inpaint", {**params, "prompt": SWAPPED}, images, model=model)

    same = client.run("reword", {**params, "weights": {"snow": 1.0}}, images, model=model)
    assert same["params"]["op"] == "inpaint", "a mask makes the source an inpaint job"
    got, want = same["images"][0], source["images"][0]
    assert (got["x"], got["y"]) == (want["x"], want["y"]), "the patch lands where the source's did"
    assert np.array_equal(pixels(got), pixels(want))

    edited = client.run("reword", {**params, "new_prompt": SWAPPED}, images, model=model)
    outside = np.asarray(mask) == 0
    over = np.asarray(composite(base, edited))
    assert np.array_equal(over[outside], np.asarray(base)[outside]), "a pixel outside the mask changed"
    assert not np.array_equal(_rgba(edited), _rgba(source)) and not np.array_equal(
        _rgba(edited), _rgba(plain)
    )
    zero = {**params, "new_prompt": SWAPPED, "inject_cross": 0.0, "inject_self": 0.0}
    assert np.array_equal(_rgba(client.run("reword", zero, images, model=model)), _rgba(plain))


# -- ordinary jobs are untouched ------------------------------------------------------------------------
def test_ordinary_jobs_are_unchanged_by_a_reword_even_a_cancelled_one(client: Any) -> None:
    before = _rgba(client.run("txt2img", T2I, model="tiny"))
    client.run("reword", {**T2I, "new_prompt": SWAPPED, "blend": ["fox"]}, model="tiny")
    assert np.array_equal(_rgba(client.run("txt2img", T2I, model="tiny")), before)

    job = client.submit("reword", {**T2I, "new_prompt": SWAPPED, "steps": 150}, model="tiny")
    first = next(e for e in client.events(job, timeout=120) if e["type"] == "progress")
    client.cancel(job)
    with pytest.raises(JobCancelled):
        client.wait(job, timeout=120)
    assert first["step"] < first["total"], "the reword was stopped while it ran"
    assert np.array_equal(_rgba(client.run("txt2img", T2I, model="tiny")), before)
    inpaint = {"prompt": SOURCE, "seed": 3, "steps": 4}
    images = {"image": obj(picture(SIZE)), "mask": obj(ellipse_mask(SIZE, MASK_BOX))}
    first = _rgba(client.run("inpaint", inpaint, images, model="tiny"))
    client.run("reword", {**inpaint, "new_prompt": SWAPPED}, images, model="tiny")
    assert np.array_equal(_rgba(client.run("inpaint", inpaint, images, model="tiny")), first)


# -- refusals ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", OTHERS)
def test_presets_without_a_cross_attention_unet_refuse(client: Any, model: str) -> None:
    with pytest.raises(DaemonError) as err:
        client.submit("reword", {**T2I, "new_prompt": SWAPPED}, model=model)
    assert err.value.code == "unsupported_op" and err.value.field == "op"
    assert all(name in str(err.value) for name in CROSS_ATTENTION)


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"new_prompt": LONGER, "edit": "replace"}, "invalid_value", "params.edit"),
        ({"new_prompt": SWAPPED, "edit": "reweight"}, "invalid_value", "params.edit"),
        ({"weights": {"moon": 2.0}}, "invalid_value", "params.weights"),
        ({"weights": {"snow": 11.0}}, "out_of_range", "params.weights.snow"),
        ({"new_prompt": SWAPPED, "blend": ["moon"]}, "invalid_value", "params.blend"),
        ({"new_prompt": " ".join(["snow"] * 25)}, "invalid_value", "params.new_prompt"),
        ({"new_prompt": " ".join(["snow"] * 300)}, "out_of_range", "params.new_prompt"),
        ({"new_prompt": "a (red cat"}, "invalid_value", "params.new_prompt"),
        ({"op": "sdedit"}, "invalid_value", "params.op"),
        ({"op": "inpaint"}, "missing_field", "images.image"),
    ],
)
def test_edits_the_prompts_do_not_allow_are_refused_before_they_run(
    client: Any, change: dict[str, Any], code: str, field: str
) -> None:
    with pytest.raises(DaemonError) as err:
        client.submit("reword", {**T2I, **change}, model="tiny")
    assert (err.value.code, err.value.field) == (code, field), str(err.value)


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_weighted_and_long_prompts_are_read_as_the_source_job_read_them(client: Any, model: str) -> None:
    long = ", ".join(["a quiet birch forest at dawn with frost on the branches"] * 4)  # 2 windows
    for text in ("a red fox in the (snow:1.4)", f"{long}, a red fox in the snow", f"{long}, a (red fox:1.3)"):
        source = _rgba(client.run("txt2img", {**T2I, "prompt": text}, model=model))
        same = client.run("reword", {**T2I, "prompt": text, "weights": {"fox": 1.0}}, model=model)
        assert np.array_equal(_rgba(same), source), text
    swapped = client.run(
        "reword", {**T2I, "prompt": f"{long}, a red fox", "new_prompt": f"{long}, a red cat"}, model=model
    )
    assert swapped["params"]["edit"] == "replace"
    with pytest.raises(DaemonError) as err:
        client.submit(
            "reword", {**T2I, "prompt": f"{long}, a red fox", "new_prompt": "a red cat"}, model=model
        )
    assert (err.value.code, err.value.field) == ("invalid_value", "params.new_prompt")
    assert "windows" in str(err.value)
    weighted = {**T2I, "prompt": "a red fox in the (snow:1.4)", "new_prompt": "a red cat in the (snow:1.4)"}
    assert client.run("reword", weighted, model=model)["params"]["edit"] == "replace"


# -- in-process: installation and alignment ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_pipe(underpaint_home: Path) -> StableDiffusionPipeline:
    folder = ensure_tiny(underpaint_home / "models", "sd15") / "base"
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_processors_are_removed_after_a_failing_run(tiny_pipe: StableDiffusionPipeline) -> None:
    unet, vae = tiny_pipe.unet, tiny_pipe.vae
    before = dict(unet.attn_processors)
    edit = p2p.Edit(SOURCE, SWAPPED, "", "auto", 0.8, 0.4)
    controller = p2p.Controller(edit, p2p.plan(tiny_pipe.tokenizer, edit), tiny_pipe, True)
    with pytest.raises(RuntimeError), p2p.installed(tiny_pipe, controller):
        assert all(isinstance(p, p2p.RewordProcessor) for p in unet.attn_processors.values())
        assert "forward" in unet.__dict__ and vae.use_slicing
        raise RuntimeError("a job failing inside its run")
    after = unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert "forward" not in unet.__dict__ and not vae.use_slicing


def test_refine_alignment_pairs_kept_tokens_and_marks_new_ones() -> None:
    # ids: 0 = start, 9 = end and padding; "a red fox" -> "a big red fox"
    mapper, aligned = p2p.align([0, 1, 2, 3, 9, 9, 9], [0, 1, 7, 2, 3, 9, 9])
    assert aligned.tolist() == [1, 1, 0, 1, 1, 1, 1]
    assert [int(mapper[j]) for j in range(7) if aligned[j]] == [0, 1, 2, 3, 4, 5]


def test_edits_resolve_against_the_tokens(tiny_pipe: StableDiffusionPipeline) -> None:
    tokenizer = tiny_pipe.tokenizer
    kind = {
        new: p2p.plan(tokenizer, p2p.Edit(SOURCE, new, "", "auto", 0.8, 0.4)).kind
        for new in (SOURCE, SWAPPED, LONGER)
    }
    assert kind == {SOURCE: "reweight", SWAPPED: "replace", LONGER: "refine"}
    tokens = p2p.plan(tokenizer, p2p.Edit(SOURCE, SOURCE, "", "auto", 0.8, 0.4, {"the snow": 2.0}, ("fox",)))
    snow = p2p.positions(tokenizer, tokens.edited, "the snow")
    assert snow and all(tokens.weights[i] == 2.0 for i in snow)
    assert float(tokens.weights.sum()) == len(tokens.edited) + len(snow)
    assert tokens.blend[0] == tokens.blend[1] == p2p.positions(tokenizer, tokens.source, "fox")
    assert torch.equal(tokens.aligned, torch.ones(len(tokens.edited)))
