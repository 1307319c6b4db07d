"""`rank` (daemon/ranking.py) through a real daemon on the tiny presets: pictures come back best first by
the `score` each reports, that score is the CLIP similarity of the picture and what was asked for
(checked against transformers' CLIP in-process), it does not depend on the other pictures of the job,
families with a CLIP of their own rank with it, and requests that cannot be ranked are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import ellipse_mask, obj, picture, pixels
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

from underpaint.daemon.builders.tiny import ensure_tiny
from underpaint.protocol import DaemonError

PROMPT = "a red fox in the snow"
T2I = {"prompt": PROMPT, "seed": 21, "steps": 3, "width": 64, "height": 64, "variations": 4}


def _scores(result: dict[str, Any]) -> list[float]:
    return [image["score"] for image in result["images"]]


def _by_seed(result: dict[str, Any]) -> dict[int, np.ndarray]:
    return {image["seed"]: pixels(image) for image in result["images"]}


def test_rank_orders_the_pictures_by_their_reported_scores(client: Any) -> None:
    plain = client.run("txt2img", T2I, model="tiny")
    ranked = client.run("txt2img", {**T2I, "rank": True}, model="tiny")
    scores = _scores(ranked)
    assert all(isinstance(s, float) and -1.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores, reverse=True), "best first"
    assert len(set(scores)) == len(scores), "the pictures differ, so do their scores"
    seeds = [image["seed"] for image in ranked["images"]]
    assert sorted(seeds) == [21, 22, 23, 24] and seeds != [21, 22, 23, 24], "the order is the scores'"
    unranked = _by_seed(plain)
    assert all(np.array_equal(unranked[seed], px) for seed, px in _by_seed(ranked).items())
    assert "score" not in plain["images"][0], "only ranked jobs are scored"
    assert ranked["params"]["rank"] is True


def test_a_pictures_score_does_not_depend_on_its_company(client: Any) -> None:
    ranked = client.run("txt2img", {**T2I, "rank": True}, model="tiny")
    last = ranked["images"][-1]
    alone = client.run("txt2img", {**T2I, "seed": last["seed"], "variations": 1, "rank": True}, model="tiny")
    assert alone["images"][0]["score"] == pytest.approx(last["score"], abs=1e-6)
    other = client.run("txt2img", {**T2I, "prompt": "a blue robot at night", "rank": True}, model="tiny")
    assert _scores(other) != _scores(ranked), "the prompt is what pictures are compared with"


@pytest.fixture(scope="module")
def clip(underpaint_home: Path) -> tuple[CLIPModel, CLIPTokenizer, CLIPImageProcessor]:
    folder = ensure_tiny(underpaint_home / "models", "sd15") / "clip"
    return (
        CLIPModel.from_pretrained(folder).eval(),
        CLIPTokenizer.from_pretrained(folder),
        CLIPImageProcessor.from_pretrained(folder),
    )


def test_scores_are_clip_similarities_of_picture_and_prompt(client: Any, clip: Any) -> None:
    """The preset's `clip` role, read with transformers directly, gives the reported scores."""
    model, tokenizer, processor = clip
    ranked = client.run("txt2img", {**T2I, "variations": 2, "rank": True}, model="tiny")
    with torch.no_grad():
        text = model.text_projection(
            model.text_model(**tokenizer([PROMPT], return_tensors="pt")).pooler_output
        )
        for image in ranked["images"]:
            rgb = Image.fromarray(pixels(image)[..., :3])
            pixel_values = processor(images=[rgb], return_tensors="pt").pixel_values
            seen = model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)
            expected = torch.nn.functional.cosine_similarity(seen, text).item()
            assert image["score"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-sd2"])
def test_every_stable_diffusion_family_ranks_with_its_clip_role(client: Any, model: str) -> None:
    ranked = client.run("txt2img", {**T2I, "variations": 2, "rank": True}, model=model)
    assert _scores(ranked) == sorted(_scores(ranked), reverse=True)


def test_reword_ranks_by_the_edited_prompt(client: Any) -> None:
    params = {**T2I, "new_prompt": "a red cat in the snow", "variations": 3, "rank": True}
    ranked = client.run("reword", params, model="tiny")
    assert _scores(ranked) == sorted(_scores(ranked), reverse=True)
    by_old = client.run("reword", {**params, "new_prompt": PROMPT}, model="tiny")
    assert _scores(ranked) != _scores(by_old)


def test_families_with_their_own_clip_rank_with_it(client: Any) -> None:
    """Kandinsky 2.2's prior and unCLIP's text and image-variation encoders are CLIPs."""
    params = {"prompt": PROMPT, "seed": 4, "variations": 2, "rank": True}
    kandinsky = client.run("txt2img", {**params, "steps": 2, "prior_steps": 2}, model="tiny-kandinsky22")
    karlo = client.run(
        "txt2img", {**params, "steps": 2, "prior_steps": 2, "super_res_steps": 2}, model="tiny-unclip"
    )
    for result in (kandinsky, karlo):
        assert _scores(result) == sorted(_scores(result), reverse=True)
        assert len(set(_scores(result))) == 2


def test_ops_without_a_prompt_rank_by_their_input(client: Any) -> None:
    """variation compares with the input picture; mix with the blend of its items; an image op with
    an empty prompt with its input picture."""
    images = {"image": obj(picture((64, 64)))}
    variation = client.run(
        "variation", {"seed": 1, "steps": 2, "variations": 2, "rank": True}, images, model="tiny-kandinsky22"
    )
    assert _scores(variation) == sorted(_scores(variation), reverse=True)
    mix = client.run(
        "mix",
        {
            "seed": 1,
            "steps": 2,
            "prior_steps": 2,
            "variations": 2,
            "rank": True,
            "items": [{"prompt": "a castle"}, {"image": "image", "weight": 0.5}],
        },
        images,
        model="tiny-kandinsky22",
    )
    assert _scores(mix) == sorted(_scores(mix), reverse=True)
    masked = {**images, "mask": obj(ellipse_mask((64, 64), (16, 16, 48, 48)))}
    sdedit = client.run(
        "sdedit", {"seed": 1, "steps": 4, "variations": 2, "rank": True}, masked, model="tiny"
    )
    assert _scores(sdedit) == sorted(_scores(sdedit), reverse=True)


def test_rank_is_refused_where_it_cannot_run(client: Any) -> None:
    with pytest.raises(DaemonError) as err:
        client.submit("txt2img", {**T2I, "prompt": "", "rank": True}, model="tiny")
    assert (err.value.code, err.value.field) == ("invalid_value", "params.rank")
    # no CLIP with an image tower (DDPM reads no prompt at all)
    for model, params in (("tiny-ddpm", {}), ("tiny-if", {"prompt": PROMPT})):
        with pytest.raises(DaemonError) as err:
            client.submit("txt2img", {**params, "variations": 2, "rank": True}, model=model)
        assert (err.value.code, err.value.field) == ("invalid_value", "params.rank"), model
    models = {p["name"]: p for p in client.models()["presets"]}
    assert "rank" in models["tiny"]["op_specs"]["txt2img"]["params"]
    assert "rank" not in models["tiny-ddpm"]["op_specs"]["txt2img"]["params"]


def _loaded(client: Any, model: str) -> tuple[list[str], int]:
    reply = client.models()
    entry = next(p for p in reply["presets"] if p["name"] == model)
    return sorted(entry["loaded"]), reply["memory"]["used_bytes"]


def test_ranking_loads_each_clip_once_and_own_clips_not_at_all(client: Any) -> None:
    """A `clip` role is one more cached component (loaded on the first ranked job, then shared);
    Kandinsky ranks with the prior it already holds, so nothing new is loaded."""
    client.run("txt2img", {**T2I, "variations": 2, "rank": True}, model="tiny")
    roles, used = _loaded(client, "tiny")
    assert "clip" in roles
    client.run("txt2img", {**T2I, "variations": 2, "rank": True, "seed": 99}, model="tiny")
    assert _loaded(client, "tiny") == (roles, used)
    params = {"prompt": PROMPT, "seed": 4, "steps": 2, "prior_steps": 2, "variations": 2}
    client.run("txt2img", params, model="tiny-kandinsky22")
    before = _loaded(client, "tiny-kandinsky22")
    client.run("txt2img", {**params, "rank": True}, model="tiny-kandinsky22")
    assert _loaded(client, "tiny-kandinsky22") == before
