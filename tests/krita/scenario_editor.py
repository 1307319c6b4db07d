"""Editor scenario, run inside real Krita: the docker as a painter meets it (GitHub issues #10, #13).

Advanced folded away at Krita's default size (screenshots), Generate off with the reason and back on
when the cause is gone, progress in the painter's steps, the job's document named while another one
is shown, one job = one undo step (read from Krita's own Undo History docker), the history strip
(thumbnails; a click puts a result's settings and seed back, and Generate then repeats it), the
weight keys Ctrl+Up / Ctrl+Down pressed in the prompt boxes, and prompt syntax errors shown at the
prompt. Saves a .kra for pytest to check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from krita import Krita
from PyQt5.QtCore import Qt
from PyQt5.QtTest import QTest
from PyQt5.QtWidgets import QListView
from scenario_lib import (
    configure,
    connect,
    generate,
    group_layers,
    layout_report,
    open_picture,
    pick_model,
    preview_layers,
    select_mask,
    set_combo,
    swap_red_blue,
    wait_for_docker,
)


def gen_state(docker: Any) -> dict[str, Any]:
    return {
        "enabled": docker.generate_button.isEnabled(),
        "tip": docker.generate_button.toolTip(),
        "status": docker.status_label.full_text(),
        "message": docker.message_label.full_text() if docker.message_label.isVisible() else "",
    }


def undo_rows() -> list[str]:
    """The commands listed by Krita's Undo History docker (first row: '<empty>')."""
    box = next(d for d in Krita.instance().dockers() if d.objectName() == "History")
    model = box.findChild(QListView).model()
    return [str(model.index(r, 0).data()) for r in range(model.rowCount())]


def watched(ctx: Any, docker: Any, seen: list[Any], timeout: float = 120.0) -> Any:
    """Wait for the running job to end, noting every progress bar text and value on the way."""

    def ended() -> bool:
        job = docker.job
        if docker.is_busy() and job is not None and job.total:
            item = [docker.progress_bar.format(), docker.progress_bar.value(), job.step, job.total]
            if not seen or seen[-1] != item:
                seen.append(item)
        return not docker.is_busy()

    return ctx.wait(ended, timeout, f"the job to end (docker: {docker.message_label.full_text()!r})")


def press(box: Any, key: int, times: int = 1) -> None:
    """Ctrl+key typed into the main window with `box` focused: through Qt's shortcut handling, as a
    painter's key press goes (Krita's own shortcuts get their chance first)."""
    window = Krita.instance().activeWindow().qwindow()
    window.activateWindow()
    box.setFocus(Qt.OtherFocusReason)
    for _ in range(times):
        QTest.keyClick(window.windowHandle(), key, Qt.ControlModifier)


def scenario(ctx: Any):
    cfg, res = ctx.config, ctx.results
    docker = yield from wait_for_docker(ctx)
    form = docker.form
    res["advanced_open_at_start"] = form.advanced.is_open()
    yield from connect(ctx, docker, cfg["endpoint"])
    pick_model(docker, "tiny")
    yield 0.3
    res["no_document"] = gen_state(docker)

    doc = yield from open_picture(ctx, cfg["picture"])
    background = doc.rootNode().childNodes()[0]
    set_combo(form.mode_combo, "inpaint")
    yield 0.3
    # -- the layout at Krita's default size: Advanced folded, then open -------------------------------
    res["layout"] = {"folded": layout_report(ctx, docker, "editor-folded")}
    advanced = (form.steps_spin, form.scheduler_combo, docker.endpoint_edit)
    res["folded_hidden"] = [w.isVisible() for w in advanced]
    form.advanced.set_open(True)
    yield 0.2
    docker.scroll.ensureWidgetVisible(form.feather_spin)
    res["layout"]["advanced"] = layout_report(ctx, docker, "editor-advanced")
    res["open_shown"] = [w.isVisibleTo(docker) for w in advanced]
    form.advanced.set_open(False)

    ctx.log("phase: # -- Generate off, saying why")
    # -- Generate off, saying why; on again once the cause is gone -----------------------------------
    yield ctx.wait(
        lambda: "Select a region first" in docker.status_label.full_text(), 5, "the no-selection hint"
    )
    res["no_selection"] = gen_state(docker)
    select_mask(doc, Path(cfg["mask"]).read_bytes())
    yield ctx.wait(lambda: docker.generate_button.isEnabled(), 5, "Generate on with a selection")
    res["with_selection"] = gen_state(docker)
    configure(docker, "instruct", instruction="")
    yield ctx.wait(lambda: not docker.generate_button.isEnabled(), 5, "Generate off without instruction")
    res["no_instruction"] = gen_state(docker)
    form.instruction_edit.setText("make it winter")
    yield ctx.wait(lambda: docker.generate_button.isEnabled(), 5, "Generate on with an instruction")
    res["with_instruction"] = gen_state(docker)

    ctx.log("phase: # A plugin-side error")
    # A plugin-side error (a ControlNet layer deleted after it was picked) clears once the form changes.
    sketch = doc.createNode("Sketch", "paintlayer")
    doc.rootNode().addChildNode(sketch, background)
    sketch.setPixelData(swap_red_blue(Path(cfg["sketch"]).read_bytes()), 0, 0, doc.width(), doc.height())
    yield 0.3
    doc.setActiveNode(background)
    unit = {"layer": sketch.uniqueId().toString(), "preprocessor": "none", "model": "scribble"}
    configure(docker, "controlnet", prompt="a cat", steps=2, seed=1, units=[unit])
    sketch.remove()
    yield ctx.wait(lambda: docker.generate_button.isEnabled(), 5, "Generate on for ControlNet")
    docker.generate_button.click()
    res["gone_layer"] = gen_state(docker) | {"busy": docker.is_busy()}
    form.units[0].layer_combo.select_layer(background.uniqueId().toString())
    yield 0.4
    res["gone_layer_after"] = gen_state(docker)
    form.units[0].setChecked(False)
    yield ctx.wait(lambda: doc.activeNode().name() == "Background", 10, "the photo to be active")

    ctx.log("phase: # -- jobs: undo steps")
    # -- jobs: undo steps, progress, the document named while another is shown -------------------------
    jobs = res["jobs"] = {}
    progress = res["progress"] = {}
    undo = res["undo"] = {}
    rows = undo_rows()
    # The photo layer as source: the same input again later, whatever results are shown above it.
    common = {"source": "layer", "padding": 32, "resolution": 0}
    configure(docker, "inpaint", prompt="a red fox", steps=4, seed=11, variations=1, strength=1.0, **common)
    yield ctx.wait(lambda: docker.generate_button.isEnabled(), 10, "Generate on for inpaint")
    docker.generate_button.click()
    progress["inpaint"] = []
    yield watched(ctx, docker, progress["inpaint"])
    jobs["inpaint"] = docker.history[-1]
    ctx.log(f"inpaint: {jobs['inpaint']['state']} in {jobs['inpaint']['seconds']} s")
    undo["inpaint"] = undo_rows()[len(rows) :]
    res["after_inpaint"] = [n.name() for n in group_layers(doc)]
    Krita.instance().action("edit_undo").trigger()  # the job's one step: the group goes, layer and all
    yield ctx.wait(lambda: not group_layers(doc), 10, "undo to take the new group out")
    ctx.log("undone")
    res["undone_top"] = [n.name() for n in doc.rootNode().childNodes() if n.type() != "selectionmask"]
    Krita.instance().action("edit_redo").trigger()
    yield ctx.wait(lambda: bool(group_layers(doc)), 10, "redo to put it back")
    res["redone"] = [n.name() for n in group_layers(doc)]
    yield 0.3
    doc.setActiveNode(background)  # redo made the group active; the painter picks the photo again
    yield ctx.wait(lambda: doc.activeNode().name() == "Background", 5, "the photo to be active")

    ctx.log("phase: rows = undo_rows()")
    rows = undo_rows()
    configure(docker, "refine", prompt="an oil painting", strength=0.5, steps=8, seed=12, variations=2)
    docker.generate_button.click()
    progress["refine"] = []
    yield watched(ctx, docker, progress["refine"])
    jobs["refine"] = docker.history[-1]
    ctx.log(f"refine: {jobs['refine']['state']} in {jobs['refine']['seconds']} s")
    undo["refine"] = undo_rows()[len(rows) :]

    ctx.log("phase: # A long job;")
    # A long job; while it runs another document is shown: the docker names the job's document.
    yield ctx.wait(
        lambda: doc.activeNode().name() == "Background",
        5,
        f"the photo to be active again (active: {doc.activeNode().name()!r})",
    )
    rows = undo_rows()
    configure(
        docker, "inpaint", prompt="cancel me", steps=200, resolution=256, seed=3, strength=1.0, variations=1
    )
    docker.generate_button.click()
    yield ctx.wait(
        lambda: bool(preview_layers(doc)) and docker.job.step >= 2, 60, "the long job's preview layer"
    )
    other = Krita.instance().createDocument(64, 64, "other", "RGBA", "U8", "", 72.0)
    Krita.instance().activeWindow().addView(other)
    yield ctx.wait(lambda: docker.document() == other, 10, "the other document to be shown")
    yield ctx.wait(
        lambda: " in " in docker.message_label.full_text(), 5, "the message to name the job's document"
    )
    res["other_shown_message"] = docker.message_label.full_text()
    docker.grab().save(str(ctx.out / "screens" / "editor-running.png"))
    res["job_doc_name"] = Path(doc.fileName()).name
    docker.cancel_button.click()
    yield ctx.wait(lambda: not docker.is_busy(), 30, "the cancel")
    jobs["cancel"] = docker.history[-1]
    other.setModified(False)
    other.close()
    yield ctx.wait(lambda: docker.document() == doc, 10, "the picture to be shown again")
    undo["cancel"] = undo_rows()[len(rows) :]
    yield 0.3  # Krita activates a neighbour of the removed preview layer; the docker gives it back
    res["active_after_cancel"] = doc.activeNode().name()
    docker.form.resolution_spin.setValue(0)

    ctx.log("phase: # -- the history strip")
    # -- the history strip: newest first; a click puts a result's settings and seed back --------------
    strip = docker.strip
    yield ctx.wait(lambda: strip.count() == 3, 10, "the strip to list the three results")
    res["strip"] = [strip.item(i).text() for i in range(strip.count())]
    res["strip_icons"] = [not strip.item(i).icon().isNull() for i in range(strip.count())]
    res["strip_title"] = form.history_section.button.text()
    docker.scroll.ensureWidgetVisible(strip)
    yield 0.2
    docker.grab().save(str(ctx.out / "screens" / "editor-history.png"))
    configure(docker, "generate", prompt="something else", steps=9, seed=None, variations=3)
    item = strip.item(2)  # the inpaint result
    strip.scrollToItem(item)
    yield 0.1
    QTest.mouseClick(strip.viewport(), Qt.LeftButton, Qt.NoModifier, strip.visualItemRect(item).center())
    values = form.values()
    res["restored"] = {
        "mode": values.mode,
        "model": values.model,
        "prompt": values.prompt,
        "steps": values.steps,
        "seed": values.seed,
        "variations": values.variations,
        "strength": values.strength,
        "random": form.random_seed_check.isChecked(),
        "message": docker.message_label.full_text(),
    }
    jobs["again"] = yield from generate(ctx, docker, "inpaint")

    ctx.log("phase: # -- weights:")
    # -- weights: Ctrl+Up / Ctrl+Down in the prompt boxes -----------------------------------------------
    prompt, negative = form.prompt_edit, form.negative_edit
    weights = res["weights"] = []
    prompt.setPlainText("a red fox in snow")
    cursor = prompt.textCursor()
    cursor.setPosition(8)  # in "fox"
    prompt.setTextCursor(cursor)
    press(prompt, Qt.Key_Up)
    weights.append(prompt.toPlainText())
    press(prompt, Qt.Key_Up)
    weights.append(prompt.toPlainText())
    press(prompt, Qt.Key_Down, 2)
    weights.append(prompt.toPlainText())
    cursor = prompt.textCursor()
    cursor.setPosition(2)
    cursor.setPosition(9, cursor.KeepAnchor)  # "red fox" selected
    prompt.setTextCursor(cursor)
    press(prompt, Qt.Key_Down)
    weights.append(prompt.toPlainText())
    press(prompt, Qt.Key_Up)
    press(prompt, Qt.Key_Z)  # Ctrl+Z in the box: the press is undone there, not in the picture
    weights.append(prompt.toPlainText())
    negative.setText("blurry, ugly")
    negative.setCursorPosition(10)
    press(negative, Qt.Key_Up)
    press(negative, Qt.Key_Z)
    weights.append(negative.text())
    press(negative, Qt.Key_Up)
    weights.append(negative.text())
    jobs["weighted"] = yield from generate(ctx, docker, "inpaint", steps=2, seed=5, variations=1)

    ctx.log("phase: # -- a prompt the daemon")
    # -- a prompt the daemon cannot read: the error at the prompt, the cursor there -------------------
    configure(docker, "inpaint", prompt="a (red fox in snow", negative="", steps=2, seed=6)
    jobs["malformed"] = yield from generate(ctx, docker, "inpaint")
    error = form.text_error
    res["syntax_error"] = {
        "shown": error.isVisible(),
        "text": error.text(),
        "cursor": prompt.textCursor().position(),
        "focus": prompt.hasFocus(),
        "message": docker.message_label.full_text(),
    }
    prompt.textCursor().insertText("\\")  # a literal '(' where the cursor is: the error goes away
    yield 0.4
    res["syntax_error_after"] = {
        "shown": error.isVisible(),
        "prompt": prompt.toPlainText(),
        "status": docker.status_label.full_text(),
        "message": docker.message_label.full_text() if docker.message_label.isVisible() else "",
    }
    # The same for the negative prompt (in the scrolling part): the cursor goes into that box.
    jobs["malformed_negative"] = yield from generate(ctx, docker, "inpaint", negative="blurry, (ugly:9)")
    res["negative_error"] = {
        "shown": error.isVisible(),
        "text": error.text(),
        "focus": negative.hasFocus(),
        "cursor": negative.cursorPosition(),
    }
    negative.setText("blurry, (ugly:1.5)")
    yield 0.1
    res["negative_error_after"] = error.isVisible()

    res["history"] = docker.history
    doc.waitForDone()
    res["saved"] = doc.saveAs(cfg["kra"])
    doc.waitForDone()
