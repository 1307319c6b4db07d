"""Main scenario, run inside real Krita: a painter's session with every image mode of the docker.

Opens the real picture, adds a hidden sketch layer, makes a soft elliptical selection (from the test's
mask), then through the docker's own widgets: Inpaint (2 variations), Refine, ControlNet (sketch layer +
canny on the photo), Instruct, Generate; Cancel mid-job; undo of an inserted result; save .kra + PNG;
Upscale into a new document; a 16-bit document's refusal. Assertions on the saved files are in pytest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from krita import InfoObject, Krita, Selection
from scenario_lib import (
    all_names,
    configure,
    connect,
    generate,
    group_layers,
    open_picture,
    preview_layers,
    select_mask_file,
    set_combo,
    swap_red_blue,
    wait_for_docker,
)


def layer_info(node: Any) -> dict[str, Any]:
    return {
        "name": node.name(),
        "uuid": node.uniqueId().toString(),
        "visible": node.visible(),
        "locked": node.locked(),
        "bounds": list(node.bounds().getRect()),
    }


def scenario(ctx: Any):
    cfg = ctx.config
    res = ctx.results
    docker = yield from wait_for_docker(ctx)
    yield from connect(ctx, docker, cfg["endpoint"])

    doc = yield from open_picture(ctx, cfg["picture"])
    background = doc.rootNode().childNodes()[0]
    width, height = doc.width(), doc.height()
    sketch = doc.createNode("Sketch", "paintlayer")
    doc.rootNode().addChildNode(sketch, background)
    sketch.setPixelData(swap_red_blue(Path(cfg["sketch"]).read_bytes()), 0, 0, width, height)
    sketch.setVisible(False)
    doc.refreshProjection()
    yield 0.3  # Krita activates a new layer from its event loop: let that happen, then pick the photo
    doc.setActiveNode(background)
    yield ctx.wait(lambda: doc.activeNode().name() == "Background", 10, "the photo layer to be active")
    yield from select_mask_file(ctx, doc, cfg["mask"])
    res["originals"] = {"Background": layer_info(background), "Sketch": layer_info(sketch)}
    yield 0.3  # ready to generate: the status line shows the daemon
    res["status"] = docker.status_label.full_text()

    common = {"source": "visible", "padding": 32, "resolution": 0}
    sketch_id, photo_id = sketch.uniqueId().toString(), background.uniqueId().toString()
    units = [
        {"layer": sketch_id, "preprocessor": "none", "model": "scribble", "weight": 1.0, "invert": True},
        {"layer": photo_id, "preprocessor": "canny", "model": "canny", "weight": 0.5},
    ]

    # What the docker sends for a ControlNet job, read with the plugin's own capture code before any
    # result exists, for pytest to compare with the picture, the mask and the sketch.
    from underpaint_krita.document import capture

    configure(docker, "controlnet", units=units, **common)
    captured = capture(doc, docker.form.values(), 64)
    res["capture"] = {"region": captured.region.as_list(), "keys": sorted(captured.images)}
    for key, image in captured.images.items():
        (ctx.out / f"capture_{key}.raw").write_bytes(bytes(image["data"]))

    jobs = res["jobs"] = {}
    jobs["inpaint"] = yield from generate(
        ctx, docker, "inpaint", prompt="a red fox", steps=6, seed=1234, variations=2, **common
    )
    jobs["refine"] = yield from generate(
        ctx, docker, "refine", prompt="an oil painting", strength=0.5, steps=8, seed=7, variations=1, **common
    )
    jobs["controlnet"] = yield from generate(
        ctx, docker, "controlnet", prompt="a cat", strength=0.75, steps=6, seed=21, units=units, **common
    )
    jobs["instruct"] = yield from generate(  # reads the active layer instead of the visible image
        ctx,
        docker,
        "instruct",
        instruction="make it winter",
        image_guidance=1.5,
        steps=6,
        seed=5,
        **{**common, "source": "layer"},
    )
    jobs["generate"] = yield from generate(ctx, docker, "generate", prompt="a blue bird", steps=4, seed=99)
    res["active_after_jobs"] = doc.activeNode().name()
    res["previews_after_jobs"] = preview_layers(doc)

    # Cancel mid-job: a long job (200 steps at 512 px), cancelled once its preview layer shows.
    before = [n.name() for n in group_layers(doc)]
    docker.form.units[0].setChecked(False)
    configure(docker, "inpaint", steps=200, resolution=512, seed=3, prompt="cancel me")
    docker.generate_button.click()
    assert docker.is_busy(), f"the long job did not start: {docker.message_label.full_text()}"
    yield ctx.wait(
        lambda: bool(preview_layers(doc)) and docker.job.step >= 2,
        60,
        f"the long job's preview layer (docker: {docker.message_label.full_text()!r})",
    )
    preview = next(n for n in group_layers(doc) if n.name() == "Underpaint preview")
    res["cancel_preview"] = {**layer_info(preview), "step": docker.job.step, "total": docker.job.total}
    res["cancel_progress"] = [docker.progress_bar.value(), docker.progress_bar.maximum()]
    count = len(docker.history)
    docker.cancel_button.click()
    yield ctx.wait(lambda: len(docker.history) > count, 30, "the cancelled job to end")
    jobs["cancel"] = docker.history[-1]
    res["cancel_message"] = docker.message_label.full_text()
    res["after_cancel"] = {
        "group": [n.name() for n in group_layers(doc)],
        "before": before,
        "previews": preview_layers(doc),
    }

    # Undo: an inserted result is one undo step.
    docker.form.resolution_spin.setValue(0)
    jobs["undo"] = yield from generate(ctx, docker, "inpaint", prompt="undo me", steps=2, seed=11)
    res["undo_before"] = [n.name() for n in group_layers(doc)]
    Krita.instance().action("edit_undo").trigger()
    yield ctx.wait(
        lambda: not any("undo me" in name for name in all_names(doc)),
        10,
        "edit_undo to remove the inserted layer",
    )
    res["undo_after"] = [n.name() for n in group_layers(doc)]

    # Keep it: save the document and export the composite.
    res["group"] = [layer_info(n) for n in group_layers(doc)]
    res["annotation"] = (
        bytes(doc.annotation("underpaint")).decode() if "underpaint" in doc.annotationTypes() else ""
    )
    doc.waitForDone()
    res["saved"] = doc.saveAs(cfg["kra"])
    doc.waitForDone()
    doc.setBatchmode(True)  # no PNG options dialog
    res["exported"] = doc.exportImage(cfg["png"], InfoObject())
    doc.setBatchmode(False)
    doc.waitForDone()
    ctx.log(f"saved {cfg['kra']} ({res['saved']}) and {cfg['png']} ({res['exported']})")

    # Upscale a small rectangle (x4 of 80x60): the result opens as a new document.
    small = Selection()
    small.select(150, 60, 80, 60, 255)
    doc.setSelection(small)
    docs_before = len(Krita.instance().documents())
    jobs["upscale"] = yield from generate(ctx, docker, "upscale", prompt="a cat", steps=4, seed=8, factor=4)
    new_docs = [d for d in Krita.instance().documents() if d != doc]
    res["upscale_docs"] = [
        {
            "name": d.name(),
            "width": d.width(),
            "height": d.height(),
            "layers": [n.name() for n in d.rootNode().childNodes()],
        }
        for d in new_docs
    ]
    res["documents_after_upscale"] = [len(Krita.instance().documents()), docs_before]

    # A 16-bit document is refused with a clear message and no job.
    deep = Krita.instance().createDocument(64, 64, "deep", "RGBA", "U16", "", 72.0)
    Krita.instance().activeWindow().addView(deep)
    yield ctx.wait(lambda: docker.document() == deep, 10, "the 16-bit document to become current")
    set_combo(docker.form.mode_combo, "refine")
    yield ctx.wait(lambda: "RGBA 8-bit" in docker.status_label.full_text(), 5, "the refusal to show")
    docker.generate_button.click()  # off: nothing happens
    res["deep_message"] = docker.status_label.full_text()
    res["deep_busy"] = docker.is_busy()
    res["history"] = docker.history
