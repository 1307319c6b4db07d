"""Prompts as painters write them (issue 13): `(text:w)` weights, long prompts in several CLIP windows,
the same syntax through the protocol for every family, refused clearly where a family cannot honour it.

The parser is tested on its own; everything else through a real daemon and the tiny presets."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import ellipse_mask, obj, picture, pixels
from transformers import AutoTokenizer

from underpaint.daemon.builders.tiny import ensure_tiny
from underpaint.daemon.errors import RequestError
from underpaint.daemon.prompts import MAX_TOKENS, PromptSyntaxError, encode, parse
from underpaint.protocol import DaemonError

#: Presets whose CLIP encoders take weights and long prompts, and those that read plain text only.
WEIGHTED = ["tiny", "tiny-sd2", "tiny-sdxl"]
PLAIN = ["tiny-if", "tiny-unclip", "tiny-kandinsky22"]
#: Where each preset's (first) tokenizer is: tiny family and folder.
TOKENIZER = {
    "tiny": ("sd15", "base"),
    "tiny-sd2": ("sd2", "base"),
    "tiny-sdxl": ("sdxl", "base"),
    "tiny-if": ("if", "stage-1"),
    "tiny-unclip": ("unclip", "base"),
    "tiny-kandinsky22": ("kandinsky22", "prior"),
}
T2I = {"steps": 3, "seed": 5, "width": 64, "height": 64}


# -- the parser (pure) --------------------------------------------------------------------------------
def _runs(text: str) -> list[tuple[str, float]]:
    return [(run.text, round(run.weight, 6)) for run in parse(text).runs]


@pytest.mark.parametrize(
    ("text", "runs"),
    [
        ("a red fox", [("a red fox", 1.0)]),
        ("a (red:1.0) fox", [("a red fox", 1.0)]),
        ("a (red) fox", [("a ", 1.0), ("red", 1.1), (" fox", 1.0)]),
        ("a (red:1.3) fox", [("a ", 1.0), ("red", 1.3), (" fox", 1.0)]),
        ("a ((red:1.2):1.5) fox", [("a ", 1.0), ("red", 1.8), (" fox", 1.0)]),
        ("((red))", [("red", 1.21)]),
        ("(red:0)", [("red", 0.0)]),
        ("(red:3)", [("red", 3.0)]),
        ("(red: .5 )", [("red", 0.5)]),
        ("(a:b:1.2)", [("a:b", 1.2)]),
        ("(style: ink) art", [("style: ink", 1.1), (" art", 1.0)]),
        ("(at 12:30 pm)", [("at 12:30 pm", 1.1)]),
        (r"a \(red\) fox", [("a (red) fox", 1.0)]),
        (r"back\\slash (x:2)", [("back\\slash ", 1.0), ("x", 2.0)]),
        (r"C:\path", [("C:\\path", 1.0)]),
        ("", []),
    ],
)
def test_parse_weights_nesting_and_escapes(text: str, runs: list[tuple[str, float]]) -> None:
    assert _runs(text) == runs


def test_plain_text_drops_only_the_syntax() -> None:
    prompt = parse(r"a ((red:1.2) fox:0.8) in \(deep\) snow")
    assert prompt.plain == "a red fox in (deep) snow"
    assert prompt.weighted and prompt.groups == (2, 3)
    assert not parse("a (red:1.0) fox").weighted


@pytest.mark.parametrize(
    ("text", "position", "says"),
    [
        ("a (red fox", 2, "never closed"),
        ("a red) fox", 5, "closes no '('"),
        ("a (b (c) d", 2, "never closed"),
        ("(red:)", 5, "expected a weight"),
        ("(red:1.2.3)", 5, "not a number"),
        ("(red:1,3)", 5, "not a number"),
        ("(red: 3.5)", 6, "out of range"),
        ("(red:-1)", 5, "out of range"),
        ("a () fox", 2, "empty"),
        ("(:1.2) fox", 0, "empty"),
        ("a (( ):2) fox", 3, "empty"),
        ("(" * 4000, 32, "nests more than 32"),  # refused, not a RecursionError (found by the fuzz)
    ],
)
def test_malformed_syntax_names_the_position(text: str, position: int, says: str) -> None:
    with pytest.raises(PromptSyntaxError) as caught:
        parse(text, "params.negative_prompt")
    error = caught.value.to_message()
    assert error["code"] == "invalid_value" and error["field"] == "params.negative_prompt"
    assert error["position"] == position
    assert says in error["message"] and f"character {position}" in error["message"]


# -- through the daemon ---------------------------------------------------------------------------------
@functools.cache
def _tokenizer(model: str) -> Any:
    """The tiny preset's own tokenizer, as the daemon reads it (to build prompts of known length)."""
    family, folder = TOKENIZER[model]
    path = ensure_tiny(Path(os.environ["UNDERPAINT_HOME"]) / "models", family) / folder
    return AutoTokenizer.from_pretrained(path, subfolder="tokenizer")


def _tokens(model: str, text: str) -> int:
    return len(_tokenizer(model)(text, add_special_tokens=False).input_ids)


def _long(model: str, tokens: int) -> str:
    """A comma-separated prompt of more than `tokens` tokens of `model`'s tokenizer."""
    phrases = ["a quiet harbour at dawn", "fishing boats", "gulls over the water", "soft mist", "old stone"]
    text, i = "", 0
    while _tokens(model, text) <= tokens:
        text, i = text + phrases[i % len(phrases)] + ", ", i + 1
    return text


def _rgb(result: dict[str, Any], index: int = 0) -> np.ndarray:
    return pixels(result["images"][index])[..., :3].astype(np.float64)


def _t2i(client: Any, model: str, prompt: str, **extra: Any) -> np.ndarray:
    return _rgb(client.run("txt2img", {**T2I, "prompt": prompt, **extra}, model=model))


@pytest.mark.parametrize("model", WEIGHTED)
def test_weight_one_is_the_plain_prompt_bit_for_bit(client: Any, model: str) -> None:
    plain = _t2i(client, model, "a red fox in the snow", negative_prompt="blurry")
    same = _t2i(client, model, "a (red fox:1.0) in the snow", negative_prompt="(blurry:1)")
    assert np.array_equal(plain, same)


@pytest.mark.parametrize("model", WEIGHTED)
def test_more_weight_moves_the_picture_further(client: Any, model: str) -> None:
    plain = _t2i(client, model, "a red fox in the snow")
    distance = [
        np.abs(_t2i(client, model, f"a (red fox:{w}) in the snow") - plain).mean() for w in (1.3, 1.8, 2.5)
    ]
    assert 0 < distance[0] < distance[1] < distance[2], distance
    softer = np.abs(_t2i(client, model, "a (red fox:0.5) in the snow") - plain).mean()
    assert softer > 0


@pytest.mark.parametrize("model", WEIGHTED)
def test_words_after_the_first_window_change_the_picture(client: Any, model: str) -> None:
    """Truncated at 77 tokens (as diffusers does on its own), both prompts would give the same pixels."""
    shared = _long(model, 80)
    assert _tokens(model, shared) > 77
    fox = _t2i(client, model, shared + "a red fox")
    whale = _t2i(client, model, shared + "a blue whale")
    assert not np.array_equal(fox, whale)
    # ... and in the negative prompt too, padded to the prompt's length (one window here).
    a = _t2i(client, model, "a red fox", negative_prompt=shared + "blurry")
    b = _t2i(client, model, "a red fox", negative_prompt=shared + "grainy")
    assert not np.array_equal(a, b)


def _ops_of(client: Any, model: str) -> dict[str, Any]:
    return next(p for p in client.hello("test_prompts")["models"] if p["name"] == model)["op_specs"]


def _op_request(op: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Small params and the images `op` takes, on 64 px pictures."""
    image = picture((64, 64))
    params: dict[str, Any] = {"steps": 3, "seed": 3}
    images: dict[str, Any] = {"image": obj(image)}
    if op == "inpaint":
        images["mask"] = obj(ellipse_mask((64, 64), (16, 16, 48, 48)))
    if op == "controlnet":
        params["units"] = [{"model": "canny", "image": "control", "preprocessor": "canny"}]
        images = {"control": obj(image)}
    if op == "upscale":
        params["factor"] = 4
        images = {"image": obj(picture((32, 32)))}
    if op == "txt2img":
        params |= {"width": 64, "height": 64}
        images = {}
    return params, images


@pytest.mark.parametrize("model", WEIGHTED)
def test_every_op_takes_weights_and_long_prompts(client: Any, model: str) -> None:
    """Each pipeline of the family gets compel's embeddings (x4 upscaler, InstructPix2Pix, depth,
    ControlNet and the SDXL refiner included) and answers to them."""
    long = _long(model, 90)
    for op in _ops_of(client, model):
        field = "instruction" if op == "instruct" else "prompt"
        params, images = _op_request(op)
        plain = client.run(op, {**params, field: long + "a red fox"}, images, model=model)
        weighted = client.run(op, {**params, field: long + "a (red fox:1.6)"}, images, model=model)
        assert not np.array_equal(_rgb(plain), _rgb(weighted)), op


@pytest.mark.parametrize("model", WEIGHTED)
def test_op_specs_say_weighted_and_the_limit(client: Any, model: str) -> None:
    for op, spec in _ops_of(client, model).items():
        for name in ("prompt", "negative_prompt", "instruction"):
            if name in spec["params"]:
                param = spec["params"][name]
                assert (param["syntax"], param["max_tokens"]) == ("weighted", MAX_TOKENS), (op, name)


@pytest.mark.parametrize("model", PLAIN)
def test_plain_families_say_so_and_refuse_weights(client: Any, model: str) -> None:
    specs = _ops_of(client, model)
    assert specs["txt2img"]["params"]["prompt"]["syntax"] == "plain"
    assert specs["txt2img"]["params"]["prompt"]["max_tokens"] <= 76
    with pytest.raises(DaemonError) as caught:
        client.submit("txt2img", {"prompt": "a (red:1.3) fox", "steps": 2}, model=model)
    assert caught.value.code == "invalid_value" and caught.value.field == "params.prompt"
    assert caught.value.reply["position"] == 2
    assert "cannot weigh phrases" in str(caught.value) and repr(model) in str(caught.value)
    # Escaped parentheses are text, which every family reads.
    params = {"prompt": r"a \(red\) fox", "seed": 1}
    params |= {name: 2 for name in specs["txt2img"]["params"] if name.endswith("steps")}
    assert client.run("txt2img", params, model=model)["images"]


def test_mix_items_and_negative_prompts_are_checked_too(client: Any) -> None:
    items = [{"prompt": "a castle"}, {"prompt": "a (tower:1.5)"}]
    with pytest.raises(DaemonError) as caught:
        client.submit("mix", {"items": items, "steps": 2}, model="tiny-kandinsky22")
    assert caught.value.field == "params.items.1.prompt" and caught.value.reply["position"] == 2
    with pytest.raises(DaemonError) as caught:
        client.submit("txt2img", {"prompt": "a fox", "negative_prompt": "blur)"}, model="tiny-sdxl")
    assert caught.value.field == "params.negative_prompt" and caught.value.reply["position"] == 4


def test_malformed_syntax_is_refused_before_accepted_and_the_daemon_serves_on(client: Any) -> None:
    cases = [("a (red fox", 2), ("a red) fox", 5), ("(red:9)", 5), ("(red:1..1)", 5), ("()", 0)]
    for text, position in cases:
        for model in ("tiny", "tiny-if"):
            with pytest.raises(DaemonError) as caught:
                client.submit("txt2img", {**T2I, "prompt": text}, model=model)
            assert caught.value.code == "invalid_value", text
            assert caught.value.reply["position"] == position, text
            assert f"character {position}" in str(caught.value), text
    assert client.run("txt2img", {**T2I, "prompt": "a (red:1.2) fox"})["images"]


def test_compare_refuses_weights_for_the_preset_that_cannot_take_them(client: Any) -> None:
    with pytest.raises(DaemonError) as caught:
        client.submit(
            "compare", {"op": "txt2img", "models": ["tiny", "tiny-if"], "prompt": "(red:1.2) fox", "steps": 2}
        )
    assert "tiny-if" in str(caught.value) and caught.value.reply["position"] == 0


@pytest.mark.parametrize("model", WEIGHTED)
def test_a_prompt_beyond_the_windows_is_refused(client: Any, model: str) -> None:
    too_long = _long(model, MAX_TOKENS + 10)
    with pytest.raises(DaemonError) as caught:
        client.submit("txt2img", {**T2I, "prompt": too_long}, model=model)
    assert caught.value.code == "out_of_range" and caught.value.field == "params.prompt"
    assert "3 (225 tokens)" in str(caught.value)
    with pytest.raises(DaemonError) as caught:
        client.submit("txt2img", {**T2I, "prompt": "a fox", "negative_prompt": too_long}, model=model)
    assert caught.value.field == "params.negative_prompt"


@pytest.mark.parametrize("model", PLAIN)
def test_plain_families_refuse_what_their_encoder_would_cut(client: Any, model: str) -> None:
    too_long = _long(model, 80)
    with pytest.raises(DaemonError) as caught:
        client.submit("txt2img", {"prompt": too_long, "steps": 2}, model=model)
    assert caught.value.code == "out_of_range" and caught.value.field == "params.prompt"
    assert "nothing is cut silently" in str(caught.value)


def test_the_x2_upscaler_reads_plain_prompts(client: Any) -> None:
    args = {"factor": 2, "steps": 2, "prompt": "(sharp:1.4)"}
    with pytest.raises(DaemonError) as caught:
        client.submit("upscale", args, {"image": obj(picture((128, 128)))})
    assert caught.value.code == "invalid_value" and "x2" in str(caught.value)
    assert caught.value.reply["position"] == 0


@pytest.mark.parametrize("model", WEIGHTED)
def test_resubmitting_result_params_reproduces_the_pixels(client: Any, model: str) -> None:
    prompt = _long(model, 80) + "a ((red:1.3) fox:1.2)"
    first = client.run("txt2img", {**T2I, "prompt": prompt, "variations": 2}, model=model)
    assert first["params"]["prompt"] == prompt  # echoed as sent
    again = client.run("txt2img", first["params"], model=model)
    for i in range(2):
        assert np.array_equal(_rgb(first, i), _rgb(again, i))
    # Embeddings are read once per job and reused by every variation: picture 1 alone is the same.
    alone = client.run(
        "txt2img", {**first["params"], "seed": first["params"]["seed"] + 1, "variations": 1}, model=model
    )
    assert np.array_equal(_rgb(first, 1), _rgb(alone))


# -- the encoding, in process ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd15_pipe() -> Any:
    from diffusers import StableDiffusionPipeline

    base = ensure_tiny(Path(os.environ["UNDERPAINT_HOME"]) / "models", "sd15") / "base"
    return StableDiffusionPipeline.from_pretrained(base, safety_checker=None)


def test_compel_reads_unweighted_text_as_diffusers_does(sd15_pipe: Any) -> None:
    """No jump at weight 1: compel's reading of text left at weight 1 is diffusers' own, bit for bit,
    and a weight changes the embedding of its own tokens only."""
    own, own_negative = sd15_pipe.encode_prompt("a red fox in snow", "cpu", 1, True, "blurry")
    ours = encode(sd15_pipe, "a red fox in (snow:1.5)", "blurry")
    assert torch.equal(ours["negative_prompt_embeds"], own_negative)
    changed = (ours["prompt_embeds"] != own).any(dim=-1)[0].nonzero().flatten().tolist()
    before, snow = (
        len(sd15_pipe.tokenizer(t, add_special_tokens=False).input_ids) for t in ("a red fox in", "snow")
    )
    assert changed == list(range(1 + before, 1 + before + snow))  # after the start marker


def test_a_window_count_the_check_missed_fails_the_job_naming_the_field(sd15_pipe: Any) -> None:
    too_long = _long("tiny", MAX_TOKENS + 10)
    with pytest.raises(RequestError) as caught:
        encode(sd15_pipe, "a fox", too_long)
    assert caught.value.code == "out_of_range" and caught.value.field == "params.negative_prompt"


def test_counting_never_builds_the_full_size_models(client: Any) -> None:
    """Counting tokens before `accepted` reads tokenizer files only: for the full-size random models
    (gigabytes, built on first use) that are not built yet, the job counts when it runs instead."""
    job = client.submit("txt2img", {"prompt": "a (red:1.2) fox", "steps": 1}, model="fullsize")
    try:
        client.cancel(job)  # accepted without building anything: nothing left to wait for
    except DaemonError as gone:
        # Where the full-size build cannot even start (no CLIP vocabulary installed), the job has
        # already ended with its error by now: it was still accepted first, which is the point.
        assert gone.code == "unknown_job", gone
