"""Reword scenario (issue 11), run inside real Krita: Generate a result on a soft selection, pick that
layer in the Layers docker, open the Reword section (its stored prompt is shown), try word weights
that are not valid (refused before anything is sent), then edit the prompt, set a weight and press
Reword: the new layer goes right above its source in the group, shaped like it, and the source and
the picture stay as they were. Picking the picture layer turns Reword off, saying why.
"""

from __future__ import annotations

from typing import Any

from scenario_lib import (
    connect,
    fully_visible,
    generate,
    group_layers,
    node_pixels,
    open_picture,
    preview_layers,
    select_mask_file,
    untipped,
    wait_for_docker,
)


def scenario(ctx: Any):
    cfg, res = ctx.config, ctx.results
    docker = yield from wait_for_docker(ctx)
    yield from connect(ctx, docker, cfg["endpoint"])
    doc = yield from open_picture(ctx, cfg["picture"])
    yield from select_mask_file(ctx, doc, cfg["mask"])
    background = doc.activeNode()
    res["generated"] = yield from generate(ctx, docker, "generate", prompt=cfg["prompt"], steps=4, seed=5)
    [source] = group_layers(doc)
    source_pixels = node_pixels(source, doc)
    panel = docker.reword_panel

    # The picture layer: Reword is off and says why.
    yield 0.3
    res["off_tip"] = panel.button.toolTip()
    res["off_enabled"] = panel.button.isEnabled()

    # The result layer: its stored prompt is shown; the section fits the docker's default size.
    doc.setActiveNode(source)
    yield ctx.wait(lambda: panel.record is not None, 10, "the Reword section to load the layer's record")
    yield ctx.wait(lambda: panel.button.isEnabled(), 10, f"Reword to be on ({panel.button.toolTip()!r})")
    res["shown_prompt"] = panel.prompt_edit.toPlainText()
    res["source_label"] = panel.source_label.full_text()
    panel.section.set_open(True)
    yield 0.3  # the layout grows the scrolling part first
    docker.scroll.ensureWidgetVisible(panel.button)
    yield 0.3
    docker.grab().save(str(ctx.out / "reword.png"))
    docker.form.body.grab().save(str(ctx.out / "reword-all.png"))
    res["layout"] = {
        "hscroll": docker.scroll.horizontalScrollBar().maximum(),
        "body_width": docker.form.body.minimumSizeHint().width(),
        "viewport_width": docker.scroll.viewport().width(),
        "button_shown": fully_visible(panel.button),
        "untipped": untipped(docker),
        "docker": [docker.width(), docker.height()],
    }

    # Weights that are not valid: refused in the section, nothing is sent.
    panel.weights_edit.setText("snow: lots")
    before = len(docker.history)
    panel.button.click()
    yield 0.3
    res["bad_weights"] = {
        "error": panel.error_label.text() if panel.error_label.isVisible() else "",
        "busy": docker.is_busy(),
        "jobs": len(docker.history) - before,
    }

    # The edit: the new prompt, a word weight, Reword.
    panel.prompt_edit.setPlainText(cfg["new_prompt"])
    panel.weights_edit.setText("snow: 2")
    panel.button.click()
    res["started"] = docker.is_busy()
    yield ctx.wait(
        lambda: len(docker.history) > before,
        120,
        f"the Reword job to end (docker: {docker.message_label.full_text()!r})",
    )
    yield 0.5
    res["entry"] = docker.history[-1]
    res["message"] = docker.message_label.full_text()
    res["layers"] = [node.name() for node in group_layers(doc)]
    res["previews"] = preview_layers(doc)
    res["source_unchanged"] = node_pixels(source, doc) == source_pixels
    res["active"] = doc.activeNode().name()
    res["background_active_before"] = background.name()
    res["saved"] = doc.saveAs(cfg["kra"])
