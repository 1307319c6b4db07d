"""Settings scenario, run twice inside real Krita (GitHub issue #10: the editor's settings persist).

Phase "set": fill every field of the docker's form, pick a model and a mode, open Advanced and fold
History, then quit Krita (leaving a dead endpoint as the saved one). Phase "check" (a new Krita
process with the same home): report what the form holds before any daemon answers, then after the
daemon's welcome. pytest compares them with what was set.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from krita import Krita
from scenario_lib import configure, connect, pick_model, set_combo, wait_for_docker


def snapshot(docker: Any) -> dict[str, Any]:
    form = docker.form
    return {
        "values": asdict(form.values()),
        "seed_text": form.seed_edit.text(),
        "random": form.random_seed_check.isChecked(),
        "advanced_open": form.advanced.is_open(),
        "history_open": form.history_section.is_open(),
        "ticked": sorted(form.compare_panel.ticked),
        "extras": form.extras.values(),
    }


def other_choice(combo: Any) -> Any:
    """The data of an item that is not the current one (the last enabled one)."""
    model = combo.model()
    for i in reversed(range(combo.count())):
        if i != combo.currentIndex() and model.item(i).isEnabled():
            return combo.itemData(i)
    raise AssertionError(f"{combo.objectName()}: no other choice among {combo.count()} items")


def scenario(ctx: Any):
    cfg, res = ctx.config, ctx.results
    docker = yield from wait_for_docker(ctx)
    form = docker.form
    if cfg["phase"] == "check":  # the saved endpoint is a dead one: first, what the form holds alone
        res["state_before"] = docker.connection.state.name
        res["before_welcome"] = snapshot(docker)
        yield from connect(ctx, docker, cfg["endpoint"])
        yield 0.5
        res["after_welcome"] = snapshot(docker)
        res["model_setting"] = Krita.instance().readSetting("underpaint", "model", "")
        pick_model(docker, "tiny")  # leave the test home's saved choice as the other scenarios expect
        return

    yield from connect(ctx, docker, cfg["endpoint"])
    pick_model(docker, cfg["model"])
    set_combo(form.mode_combo, "compare")  # the compared models are ticked in Compare
    configure(docker, "compare", compare_mode="inpaint")
    form.compare_panel.tick(cfg["compare_models"])
    configure(
        docker,
        "refine",
        prompt="a misty (harbour:1.2) at dawn",
        negative="people, text",
        instruction="make it autumn",
        strength=0.55,
        steps=7,
        guidance=5.5,
        image_guidance=2.5,
        seed=4242,
        variations=3,
        resolution=256,
        padding=16,
        source="layer",
        factor=2,
    )
    form.feather_spin.setValue(4)
    set_combo(form.speed_combo, "live")
    form.live_delay_spin.setValue(650)
    set_combo(form.scheduler_combo, other_choice(form.scheduler_combo))
    form.extras.widgets["refine"].setValue(0.3)
    form.mix_panel.prompt_spin.setValue(1.5)
    first, second = form.units
    first.setChecked(False)
    second.setChecked(True)
    set_combo(second.preprocessor_combo, other_choice(second.preprocessor_combo))
    second.weight_spin.setValue(0.7)
    second.invert_check.setChecked(True)
    form.advanced.set_open(True)
    form.history_section.set_open(False)
    res["set"] = snapshot(docker)
    yield 1.5  # the docker saves changed settings once a second
    res["saved"] = Krita.instance().readSetting("underpaint", "form", "")
    Krita.instance().writeSetting("underpaint", "endpoint", cfg["dead_endpoint"])  # see phase "check"
