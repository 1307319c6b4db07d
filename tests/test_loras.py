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
    lines += [
        '[presets.tiny-live]\nbuiltin = "tiny"\n[presets.tiny-live.loras]',
        f'style = "{folder / "sd15-style.safetensors"}"',
        "[presets.tiny-live.defaults]\nsteps = 3\n[presets.tiny-live.live]\nsteps = 2\nguidance_scale = 1.5",
        'scheduler = "lcm"\nloras = [{ name = "style", weight = 0.5 }]\n',
    ]
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


def test_a_presets_defaults_and_live_setting_reach_clients_and_jobs(lora_client: Client) -> None:
    """`[presets.NAME.defaults]` change the op specs clients see and what a job gets; the `live` map
    is listed (weights filled in) and, merged into a request as the editors do, runs as it says."""
    entry = _entry(lora_client, "tiny-live")
    assert entry["op_specs"]["txt2img"]["params"]["steps"]["default"] == 3
    assert entry["op_specs"]["sdedit"]["params"]["steps"]["default"] == 3
    live = entry["live"]
    assert live == {
        "steps": 2,
        "guidance_scale": 1.5,
        "scheduler": "lcm",
        "loras": [{"name": "style", "weight": 0.5}],
    }
    assert _entry(lora_client, "tiny")["live"] == {"steps": 2, "guidance_scale": 1.0, "scheduler": "lcm"}
    params = {k: v for k, v in T2I.items() if k != "steps"}
    plain = lora_client.run("txt2img", params, model="tiny-live")
    assert plain["params"]["steps"] == 3
    quick = lora_client.run("txt2img", {**params, **live}, model="tiny-live")
    assert {k: quick["params"][k] for k in live} == live
    same = lora_client.run("txt2img", {**params, **live, "loras": []}, model="tiny-live")
    assert not np.array_equal(pixels(quick["images"][0]), pixels(same["images"][0])), "the live LoRA is used"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[presets.mine.live]\nsteps = 2\ndenoise = 1\n", "live takes"),
        ("[presets.mine.live]\nsteps = 0\n", "live.steps"),
        ('[presets.mine.live]\nloras = [{ name = "ink" }]\n', "ink"),
        ("[presets.mine.defaults]\nguidance_scale = 99.0\n", "defaults.guidance_scale"),
        ("[presets.mine.defaults]\nwobble = 1\n", "wobble"),
    ],
)
def test_a_live_or_defaults_table_the_ops_refuse_is_a_clear_config_error(
    tmp_path: Path, table: str, message: str
) -> None:
    from underpaint.daemon.params import Limits
    from underpaint.daemon.schedulers import SCHEDULER_NAMES
    from underpaint.daemon.serving.catalog import Catalog

    config = tmp_path / "presets.toml"
    config.write_text('[presets.mine]\nbuiltin = "tiny"\n' + table)
    with pytest.raises(ConfigError, match=message) as info:
        Catalog(load_config(config), Limits(), SCHEDULER_NAMES)
    assert "mine" in str(info.value)


def test_builtin_live_settings_and_turbo_presets_fit_their_models() -> None:
    """Every built-in preset's live setting is made of params its ops take; the turbo presets default
    to their few steps without guidance, and SD 1.5 / SDXL paint live through their LCM-LoRAs."""
    from underpaint.daemon.params import Limits
    from underpaint.daemon.schedulers import SCHEDULER_NAMES
    from underpaint.daemon.serving.catalog import Catalog

    catalog = Catalog(load_config(), Limits(), SCHEDULER_NAMES)
    for name, live in catalog.live.items():
        taken = {p for spec in catalog.specs[name].values() for p in spec.params}
        assert live and set(live) <= taken, name
    for name in ("sd-turbo", "sdxl-turbo"):
        for op in ("txt2img", "sdedit"):
            params = catalog.specs[name][op].params
            assert (params["steps"].default, params["guidance_scale"].default) == (2, 0.0), (name, op)
    for name in ("sd15", "sdxl"):
        assert catalog.live[name]["scheduler"] == "lcm"
        assert catalog.live[name]["loras"] == [{"name": "lcm", "weight": 1.0}]
        assert catalog.config.presets[name].loras["lcm"].startswith("latent-consistency/")


def test_relative_paths_in_a_users_config_are_read_from_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`loras/ink.safetensors` written beside the config file means that file, whatever folder the
    daemon starts in; hub ids and paths that do not exist there stay as written."""
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "ink.safetensors").write_bytes(b"")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine.safetensors").write_bytes(b"")
    config = tmp_path / "presets.toml"
    config.write_text(
        '[presets.mine]\nfamily = "sd15"\nbase = "models/mine.safetensors"\nconfig = "org/sd15-configs"\n'
        '[presets.mine.loras]\nink = "loras/ink.safetensors"\nhub = "org/lora"\n'
    )
    monkeypatch.chdir(tmp_path.parent)
    preset = load_config(config).presets["mine"]
    assert preset.loras == {"ink": str(tmp_path / "loras" / "ink.safetensors"), "hub": "org/lora"}
    assert preset.sources["base"] == str(tmp_path / "models" / "mine.safetensors")
    assert preset.single_file_config == "org/sd15-configs"
