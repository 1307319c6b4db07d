"""Model-families scenario, run inside real Krita: the model picker and the modes it allows, the
docker's layout at Krita's default size (screenshots of every mode), and jobs on non-SD1.5 presets:
SDXL Inpaint (with its own Refine option), image Variation, Depth with a depth layer, Kandinsky Mix
of two layers selected in the Layers docker, and Compare (one layer per preset). Saves a .kra for
pytest to check.

`config["steps"]` lists which of these to run (pytest runs them all; a developer may run fewer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from krita import Krita
from PyQt5.QtCore import QItemSelectionModel, Qt
from PyQt5.QtWidgets import QApplication, QTreeView
from scenario_lib import (
    add_paint_layer,
    configure,
    connect,
    generate,
    group_layers,
    layout_report,
    open_picture,
    pick_model,
    select_mask_file,
    set_combo,
    swap_red_blue,
    wait_for_docker,
)


def check_layout(ctx: Any, docker: Any, models: list[str]) -> Any:
    """Every mode of these presets (and Compare with each base mode) at the default docker size."""
    report: dict[str, Any] = {}
    for model in models:
        pick_model(docker, model)
        for key in docker.form.offered_modes():
            set_combo(docker.form.mode_combo, key)
            yield 0.05  # let the layout settle
            report[f"{model}:{key}"] = layout_report(ctx, docker, f"{model}-{key}")
    return report


def select_layers(names: list[str]) -> None:
    """Select layers in the Layers docker like Ctrl+click does (the first becomes the current one)."""
    box = next(d for d in Krita.instance().dockers() if d.objectName() == "KisLayerBox")
    view = box.findChild(QTreeView)
    model, selection = view.model(), view.selectionModel()
    rows = {model.index(r, 0).data(): model.index(r, 0) for r in range(model.rowCount())}
    flags = QItemSelectionModel.Rows
    selection.setCurrentIndex(rows[names[0]], QItemSelectionModel.ClearAndSelect | flags)
    for name in names[1:]:
        selection.select(rows[name], QItemSelectionModel.Select | flags)


def scenario(ctx: Any):
    cfg, res = ctx.config, ctx.results
    steps = set(cfg["steps"])
    docker = yield from wait_for_docker(ctx)
    yield from connect(ctx, docker, cfg["endpoint"])
    form = docker.form
    doc = yield from open_picture(ctx, cfg["picture"])
    background = doc.rootNode().childNodes()[0]
    width, height = doc.width(), doc.height()
    sky = add_paint_layer(doc, "Sky", swap_red_blue(Path(cfg["sky"]).read_bytes()), background)
    sun = add_paint_layer(doc, "Sun", swap_red_blue(Path(cfg["sun"]).read_bytes()), sky)
    depth = add_paint_layer(doc, "Depth", swap_red_blue(Path(cfg["depth"]).read_bytes()), sun, visible=False)
    yield 0.3  # Krita activates new layers from its event loop: then give the painter's layer back
    doc.setActiveNode(background)
    yield ctx.wait(lambda: doc.activeNode().name() == "Background", 10, "the photo layer to be active")
    res["layers"] = {n.name(): n.uniqueId().toString() for n in (background, sky, sun, depth)}
    res["size"] = [width, height]
    win = Krita.instance().activeWindow().qwindow()
    res["window"] = [win.width(), win.height()]
    QApplication.primaryScreen().grabWindow(0).save(str(ctx.out / "screen.png"))

    # The picker: every preset, with its family's help; the modes follow the picked preset.
    res["models"] = [form.model_combo.itemData(i) for i in range(form.model_combo.count())]
    res["default_model"] = form.model_name()
    res["modes"], res["model_tips"], res["mode_tips"], res["guidance"], res["steps"] = {}, {}, {}, {}, {}
    for name in cfg["mode_models"]:
        pick_model(docker, name)
        res["modes"][name] = form.offered_modes()
        res["guidance"][name] = form.guidance_spin.value()  # untouched: the preset's default
        res["steps"][name] = form.steps_spin.value()
        res["model_tips"][name] = form.model_combo.toolTip()
        combo = form.mode_combo
        res["mode_tips"][name] = {
            combo.itemData(i): combo.itemData(i, Qt.ToolTipRole) for i in range(combo.count())
        }
    form.guidance_spin.setValue(6.0)  # set by the painter: kept across presets
    pick_model(docker, "tiny-kandinsky22")
    res["guidance_kept"] = form.guidance_spin.value()
    res["steps_after_ddpm"] = form.steps_spin.value()  # DDPM's 1000 steps were a default, not a choice
    form.guidance_spin.setValue(7.5)
    if "layout" in steps:
        res["layout"] = yield from check_layout(ctx, docker, cfg["layout_models"])

    # The pick is remembered in Krita's settings and survives a reconnect (a new welcome).
    pick_model(docker, "tiny-sdxl")
    res["saved_model"] = Krita.instance().readSetting("underpaint", "model", "")
    seen = docker.connection.welcome
    docker.reconnect()
    yield ctx.wait(
        lambda: docker.connection.state.name == "CONNECTED" and docker.connection.welcome is not seen,
        30,
        "the docker to reconnect",
    )
    yield 0.1
    res["model_after_reconnect"] = form.model_name()

    yield from select_mask_file(ctx, doc, cfg["mask"])
    jobs = res["jobs"] = {}
    common = {"source": "visible", "padding": 32, "resolution": 0, "variations": 1}
    if "sdxl" in steps:  # SDXL inpaint, with the Refine option only SDXL has
        set_combo(form.mode_combo, "inpaint")
        res["sdxl_options"] = sorted(form.extras.widgets)
        form.extras.widgets["refine"].setValue(0.5)
        jobs["sdxl"] = yield from generate(
            ctx, docker, "inpaint", model="tiny-sdxl", prompt="a red fox", steps=4, seed=5, **common
        )
        pick_model(docker, "tiny")
        res["tiny_options"] = sorted(form.extras.widgets) if form.extras.isVisible() else []
    if "variation" in steps:
        jobs["variation"] = yield from generate(
            ctx, docker, "variation", model="tiny-sd-variation", steps=3, seed=3, **common
        )
        res["variation_prompt_shown"] = form.prompt_edit.isVisible()
    if "depth" in steps:
        jobs["depth"] = yield from generate(
            ctx,
            docker,
            "depth",
            model=cfg["depth_model"],
            prompt="a stone cat",
            steps=4,
            seed=4,
            strength=0.8,
            depth_layer=res["layers"]["Depth"],
            **common,
        )
    if "compare" in steps:
        configure(docker, "compare", model="tiny", compare_mode="refine")
        form.compare_panel.tick(cfg["compare_models"])
        yield 0.05
        res["compare_options"] = sorted(form.extras.widgets)
        if "refine" in form.extras.widgets:
            form.extras.widgets["refine"].setValue(0.5)
        jobs["compare"] = yield from generate(
            ctx,
            docker,
            "compare",
            prompt="an oil painting",
            strength=0.5,
            steps=4,
            seed=7,
            compare_mode="refine",
            compare_models=cfg["compare_models"],
            **common,
        )
        res["compare_message"] = docker.message_label.full_text()
    res["active_after_jobs"] = doc.activeNode().name()
    if "mix" in steps:  # no selection: the blend fills the canvas, from Sun and Sky and the prompt
        Krita.instance().action("deselect").trigger()
        yield ctx.wait(lambda: doc.selection() is None, 10, "the selection to be gone")
        select_layers(["Sun", "Sky"])
        pick_model(docker, "tiny-kandinsky22")
        set_combo(form.mode_combo, "mix")
        yield ctx.wait(lambda: len(form.mix_panel.layers) == 2, 10, "the Mix panel to list Sun and Sky")
        res["mix_panel"] = [name for _, name in form.mix_panel.layers]
        form.mix_panel.spins[res["layers"]["Sun"]].setValue(0.5)
        form.mix_panel.prompt_spin.setValue(2.0)
        jobs["mix"] = yield from generate(
            ctx, docker, "mix", prompt="a red fox", steps=3, seed=8, variations=1, resolution=0
        )
    res["group"] = [n.name() for n in group_layers(doc)]
    res["history"] = docker.history

    pick_model(docker, "tiny")  # leave the test home's saved choice as the other scenarios expect
    doc.waitForDone()
    res["saved"] = doc.saveAs(cfg["kra"])
    doc.waitForDone()
    ctx.log(f"saved {cfg['kra']} ({res['saved']})")
