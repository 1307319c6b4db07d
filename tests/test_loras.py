"""LoRAs on a real daemon: presets list tiny seeded LoRA files (built here with PEFT and saved by
diffusers as `.safetensors`); a job's `loras` changes the pixels by its weight, weight 0 and no LoRA
give the untouched base pixels bit for bit, nothing leaks between jobs or presets sharing the modules,
and an adapter loads once (the daemon's memory accounting does not grow when weights change)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import ellipse_mask, obj, picture, pixels
from lora_files import build_lora

from underpaint.daemon.commands.launch import running_daemon
from underpaint.daemon.config import load_config
from underpaint.daemon.errors import ConfigError
from underpaint.protocol import Client, DaemonError

T2I = {"prompt": "a red fox in the snow", "steps": 2, "seed": 3, "width": 64, "height": 64}
PRESETS = {"sd15": ("tiny", "tiny-lora"), "sdxl": ("tiny-sdxl", "tiny-sdxl-lora")}


@pytest.fixture(scope="module")
def lora_client(underpaint_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A daemon whose config adds LoRA presets over the tiny sd15 and sdxl models."""
    folder = tmp_path_factory.mktemp("loras")
    lines = []
    for fam, (_, name) in PRESETS.items():
        path = build_lora(underpaint_home / "models", fam, folder / f"{fam}-style.safetensors")
        lines += [f'[presets.{name}]\nbuiltin = "tiny"\nfamily = "{fam}"\n', f"[presets.{name}.loras]"]
        lines += [f'style = "{path}"', f'missing = "{folder / "missing.safetensors"}"\n']
    other = build_lora(underpaint_home / "models", "sd15", folder / "other.safetensors", seed=11)
    lines += [f'[presets.tiny-lora2]\nbuiltin = "tiny"\n[presets.tiny-lora2.loras]\nstyle = "{other}"\n']
    config = folder / "presets.toml"
    config.write_text("\n".join(lines))
    with running_daemon("--config", str(config), preset="tiny") as proc:
        with Client(proc.endpoint, timeout=120) as client:
            yield client


def _rgb(
    client: Client, model: str, loras: list[dict[str, Any]] | None = None, op: str = "txt2img", **extra: Any
) -> np.ndarray:
    params = {**T2I, **({"loras": loras} if loras is not None else {}), **extra.pop("params", {})}
    return pixels(client.run(op, params, extra.pop("images", None), model=model)["images"][0])[..., :3]


def _entry(client: Client, model: str) -> dict[str, Any]:
    return next(p for p in client.models()["presets"] if p["name"] == model)


def _used(client: Client) -> int:
    return int(client.models()["memory"]["used_bytes"])


def _far(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


@pytest.mark.parametrize("fam", ["sd15", "sdxl"])
def test_lora_weights_move_pixels_and_zero_or_none_is_the_base(lora_client: Client, fam: str) -> None:
    plain, with_lora = PRESETS[fam]
    base = _rgb(lora_client, plain)  # before any adapter exists anywhere: the untouched weights
    assert np.array_equal(_rgb(lora_client, with_lora, []), base), "a LoRA preset without LoRAs is the base"
    before = _used(lora_client)
    one = _rgb(lora_client, with_lora, [{"name": "style", "weight": 1.0}])
    loaded = _used(lora_client)
    assert loaded > before, "the adapter's layers are counted once loaded"
    assert "lora:style" in _entry(lora_client, with_lora)["loaded"]
    two = _rgb(lora_client, with_lora, [{"name": "style", "weight": 2.0}])
    back = _rgb(lora_client, with_lora, [{"name": "style", "weight": -1.0}])
    assert _used(lora_client) == loaded, "changing weights loads nothing again"
    assert 0 < _far(one, base) < _far(two, base), "more weight moves further"
    assert _far(back, base) > 0 and not np.array_equal(back, one)
    # The adapter stays loaded in the shared modules; these must all be the base again, bit for bit.
    assert np.array_equal(_rgb(lora_client, with_lora, [{"name": "style", "weight": 0.0}]), base)
    assert np.array_equal(_rgb(lora_client, with_lora), base), "no leak into a job without LoRAs"
    assert np.array_equal(_rgb(lora_client, plain), base), "no leak into a preset sharing the modules"
    assert np.array_equal(_rgb(lora_client, with_lora, [{"name": "style", "weight": 1.0}]), one)
    assert _used(lora_client) == loaded


def test_presets_sharing_modules_keep_their_own_files_under_one_name(lora_client: Client) -> None:
    style = [{"name": "style", "weight": 1.0}]
    mine, theirs = _rgb(lora_client, "tiny-lora", style), _rgb(lora_client, "tiny-lora2", style)
    assert not np.array_equal(mine, theirs), "each preset's `style` is its own file"
    assert np.array_equal(_rgb(lora_client, "tiny-lora", style), mine), "and switching back is exact"


def test_models_list_loras_and_specs_offer_them(lora_client: Client) -> None:
    entry = _entry(lora_client, "tiny-lora")
    assert [lora["name"] for lora in entry["loras"]] == ["missing", "style"]
    assert entry["loras"][1]["source"].endswith("sd15-style.safetensors")
    spec = entry["op_specs"]["txt2img"]["params"]["loras"]
    assert spec["type"] == "loras" and spec["default"] == []
    assert "loras" in entry["op_specs"]["inpaint"]["params"]
    assert "loras" not in entry["op_specs"]["upscale"]["params"], "the upscalers take no LoRAs"
    assert _entry(lora_client, "tiny")["loras"] == []


def test_unknown_or_bad_loras_are_refused(lora_client: Client) -> None:
    with pytest.raises(DaemonError) as err:
        lora_client.run("txt2img", {**T2I, "loras": [{"name": "nope"}]}, model="tiny-lora")
    assert err.value.code == "invalid_value" and err.value.field == "params.loras.0.name"
    assert "'nope'" in str(err.value) and "style" in str(err.value)
    with pytest.raises(DaemonError) as err:  # a preset that lists none
        lora_client.run("txt2img", {**T2I, "loras": [{"name": "style"}]}, model="tiny")
    assert err.value.code == "invalid_value" and "'style'" in str(err.value)
    cases = [
        ([{"name": "style", "weight": 2.5}], "out_of_range", "params.loras.0.weight"),
        ([{"name": "style"}] * 2, "invalid_value", "params.loras"),
        ([{"weight": 1.0}], "missing_field", "params.loras.0.name"),
        ([{"name": "style"}] * 5, "out_of_range", "params.loras"),
    ]
    for loras, code, field in cases:
        with pytest.raises(DaemonError) as err:
            lora_client.run("txt2img", {**T2I, "loras": loras}, model="tiny-lora")
        assert (err.value.code, err.value.field) == (code, field)
    with pytest.raises(DaemonError) as err:  # listed, but its file is not there: the job says so
        lora_client.run("txt2img", {**T2I, "loras": [{"name": "missing"}]}, model="tiny-lora")
    assert err.value.code == "model_unavailable" and "missing.safetensors" in str(err.value)
    with pytest.raises(DaemonError) as err:  # an op whose models take no LoRAs
        lora_client.run(
            "upscale", {"steps": 2, "loras": []}, {"image": obj(picture((32, 32)))}, model="tiny-lora"
        )
    assert err.value.code == "invalid_value" and err.value.field == "params.loras"


def test_loras_on_inpaint_sdedit_and_reword(lora_client: Client) -> None:
    """Ops on other views and UNets (the inpainting checkpoint) take the LoRA too, and reword's
    attention processors run over the adapted layers."""
    image, mask = picture((64, 64)), ellipse_mask((64, 64), (16, 16, 48, 48))
    style = [{"name": "style", "weight": 1.5}]
    for op, images, params in (
        ("inpaint", {"image": obj(image), "mask": obj(mask)}, {"padding": 8}),
        ("sdedit", {"image": obj(image)}, {"strength": 0.8}),
    ):
        base = _rgb(lora_client, "tiny", op=op, images=images, params=params)
        styled = _rgb(lora_client, "tiny-lora", style, op=op, images=images, params=params)
        assert _far(styled, base) > 0, op
        assert np.array_equal(_rgb(lora_client, "tiny-lora", [], op=op, images=images, params=params), base)
    edit = {"new_prompt": "a red cat in the snow"}
    plain = _rgb(lora_client, "tiny-lora", op="reword", params=edit)
    styled = _rgb(lora_client, "tiny-lora", style, op="reword", params=edit)
    assert _far(styled, plain) > 0
    assert np.array_equal(_rgb(lora_client, "tiny-lora", op="reword", params=edit), plain)


def test_config_reads_loras_and_refuses_them_where_no_model_takes_them(tmp_path: Path) -> None:
    config = tmp_path / "presets.toml"
    config.write_text(
        '[presets.mine]\nbuiltin = "tiny"\n[presets.mine.loras]\nink = "/loras/ink.safetensors"\n'
    )
    assert load_config(config).presets["mine"].loras == {"ink": "/loras/ink.safetensors"}
    assert load_config().presets["tiny"].loras == {}
    config.write_text('[presets.mine]\nbuiltin = "tiny"\nfamily = "ddpm"\n[presets.mine.loras]\nink = "x"\n')
    with pytest.raises(ConfigError, match="does not take LoRAs"):
        load_config(config)
