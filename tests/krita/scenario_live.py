"""Live mode, LoRA rows and the live sampler setting (issue 10), run inside real Krita against a daemon
whose config adds a preset with a tiny LoRA.

1. Live on and off without painting: one live layer appears at the top with a result; off removes it,
   and every other layer (names, order, pixels) is as it was. A screenshot with Live on and the LoRA
   row shown, at Krita's default docker size.
2. Live while painting: rectangles filled on a paint layer faster than a job runs; the daemon
   supersedes older jobs of the lane; the live layer ends up showing the result for the final canvas
   (the test re-runs that job through the Python client), only one live layer exists, Keep adds a
   result layer with its record, and Live off changes nothing else.
   Undo History shows one step for the live layer, one for Keep, one for Live off.
3. LoRA rows: Generate with the LoRA ticked at 1, at 0 and unticked; a history click puts the LoRA
   back. The Speed setting "Live" sends the preset's live sampler setting.
4. Showing another document stops Live for the first (its live layer goes); closing the live
   document stops it without an error. In ControlNet mode a change of the hidden sketch layer alone
   sends a job with the unit's image.
5. The daemon out of reach while live: nothing is sent and nothing raises; once it is back, Live goes on.
"""

from __future__ import annotations

import json
import time
from typing import Any

from krita import Krita
from PyQt5.QtWidgets import QListView
from scenario_lib import (
    add_paint_layer,
    configure,
    connect,
    fully_visible,
    generate,
    group_layers,
    layout_report,
    node_pixels,
    open_picture,
    set_combo,
    wait_for_docker,
)

LIVE = "Underpaint live"


def every_node(doc: Any) -> dict[str, tuple[str, bytes]]:
    """uniqueId -> (name, pixels) of every node of the document, the live layer excepted."""
    out: dict[str, tuple[str, bytes]] = {}
    stack = list(doc.rootNode().childNodes())
    while stack:
        node = stack.pop()
        if node.name() != LIVE and node.type() != "selectionmask":
            out[node.uniqueId().toString()] = (node.name(), node_pixels(node, doc))
        stack.extend(node.childNodes())
    return out


def undo_rows() -> list[str]:
    """The commands listed by Krita's Undo History docker (first row: '<empty>')."""
    box = next(d for d in Krita.instance().dockers() if d.objectName() == "History")
    model = box.findChild(QListView).model()
    return [str(model.index(r, 0).data()) for r in range(model.rowCount())]


def live_layers(doc: Any) -> list[Any]:
    return [n for n in doc.rootNode().childNodes() if n.name() == LIVE]


def lora_check(docker: Any, name: str) -> Any:
    return docker.form.lora_panel.checks[name]


def fill_rect(doc: Any, node: Any, rect: tuple[int, int, int, int], bgra: tuple[int, int, int, int]) -> None:
    x, y, w, h = rect
    node.setPixelData(bytes(bgra) * (w * h), x, y, w, h)
    doc.refreshProjection()


def scenario(ctx: Any):
    cfg, res = ctx.config, ctx.results
    docker = yield from wait_for_docker(ctx)
    yield from connect(ctx, docker, cfg["endpoint"])
    doc = yield from open_picture(ctx, cfg["picture"])
    background = doc.activeNode()
    paint = add_paint_layer(doc, "Paint", bytes(doc.width() * doc.height() * 4), background)
    doc.setActiveNode(paint)
    yield 0.3
    configure(docker, "refine", model=cfg["model"], prompt="a red fox", steps=4, strength=0.6, seed=None)
    yield 0.3
    res["lora_rows"] = list(docker.form.lora_panel.names)
    res["lora_panel_shown"] = docker.form.lora_panel.isVisible()
    lora_check(docker, cfg["lora"]).setChecked(False)

    # 1. On and off, nothing painted: only the live layer comes and goes.
    before = every_node(doc)
    order = [n.name() for n in doc.rootNode().childNodes()]
    docker.live_button.click()
    res["live_checked"] = docker.live_button.isChecked()
    live = docker.live
    assert live is not None, docker.message_label.full_text()
    yield ctx.wait(
        lambda: live.counts["placed"] >= 1, 60, f"a live result ({docker.message_label.full_text()!r})"
    )
    yield 0.5
    res["phase1"] = {
        "stats": live.stats(),
        "sent": live.last_sent["params"],
        "top": doc.rootNode().childNodes()[-1].name(),
        "live_layers": len(live_layers(doc)),
        "active": doc.activeNode().name(),
        "keep_enabled": docker.keep_button.isEnabled(),
        "message": docker.message_label.full_text(),
        "loading_said": live.loading_said,
    }
    docker.form.advanced.set_open(False)
    yield 0.3
    docker.scroll.ensureWidgetVisible(docker.form.lora_panel)
    yield 0.3
    report = layout_report(ctx, docker, "live")
    report["live_shown"] = fully_visible(docker.live_button) and fully_visible(docker.keep_button)
    report["lora_row"] = fully_visible(lora_check(docker, cfg["lora"]))
    report["live_text"] = docker.live_button.text()
    res["layout"] = report
    docker.live_button.click()
    yield 0.5
    res["phase1"].update(
        off_checked=docker.live_button.isChecked(),
        off_live_layers=len(live_layers(doc)),
        unchanged=every_node(doc) == before,
        order_unchanged=[n.name() for n in doc.rootNode().childNodes()] == order,
        keep_after_off=docker.keep_button.isEnabled(),
    )

    # 2. Painting while Live is on: quality steps, so a job outlasts the strokes.
    set_combo(docker.form.speed_combo, "quality")
    configure(docker, "refine", steps=cfg["steps"], strength=0.6, seed=None)
    docker.form.live_delay_spin.setValue(100)
    rows = undo_rows()
    docker.live_button.click()
    live = docker.live
    yield ctx.wait(lambda: live.counts["placed"] >= 1, 90, "the first live result")
    seeds = {live.seed}
    colors = [(0, 0, 255, 255), (0, 255, 0, 255), (255, 0, 0, 255), (0, 200, 200, 255), (90, 30, 160, 255)]
    for i, color in enumerate(colors):
        fill_rect(doc, paint, (40 + 60 * i, 60 + 20 * i, 70, 50), color)
        yield 0.35
    fill_rect(doc, paint, (200, 120, 90, 90), (255, 255, 255, 255))  # the final change
    last_change = time.monotonic()

    def settled() -> bool:
        done = all(job.finished for job in live.jobs)
        return done and live.seen == live.sent and live.placed_seq == live.seq and live.counts["sent"] > 1

    yield ctx.wait(settled, 120, f"the live layer to show the final canvas ({live.stats()})")
    yield 0.5  # one more tick: nothing new may be sent
    seeds.add(live.seed)
    node = live.layer()
    shown = live.shown
    res["phase2"] = {
        "stats": live.stats(),
        "seeds": sorted(seeds),
        "live_layers": len(live_layers(doc)),
        "top": doc.rootNode().childNodes()[-1].name(),
        "rect": [shown.rect.x, shown.rect.y, shown.rect.width, shown.rect.height],
        "keep_enabled": docker.keep_button.isEnabled(),
        "latency_s": round(live.placed_at - last_change, 3),
        "errors": [m for m in [docker.message_label.full_text()] if "failed" in m.lower()],
    }
    sent = live.last_sent
    (ctx.out / "live-params.json").write_text(json.dumps({**sent["params"], "model": cfg["model"]}))
    (ctx.out / "live-input.raw").write_bytes(bytes(sent["image"]["data"]))
    r = shown.rect
    (ctx.out / "live-layer.raw").write_bytes(bytes(node.pixelData(r.x, r.y, r.width, r.height)))

    # Keep: a normal result layer in the Underpaint group, with its record.
    undo = {"live": undo_rows()[len(rows) :]}
    rows = undo_rows()
    docker.keep_button.click()
    # Read at once: the kept layer is a change of the canvas, so a new live picture follows soon.
    res["kept"] = [n.name() for n in group_layers(doc)]
    res["kept_message"] = docker.message_label.full_text()
    res["kept_equal"] = bool(group_layers(doc)) and bytes(
        group_layers(doc)[-1].pixelData(r.x, r.y, r.width, r.height)
    ) == bytes(node.pixelData(r.x, r.y, r.width, r.height))
    yield 0.5
    undo["keep"] = undo_rows()[len(rows) :]
    rows = undo_rows()
    before = every_node(doc)
    docker.live_button.click()
    yield 0.5
    doc.waitForDone()
    undo["off"] = undo_rows()[len(rows) :]
    res["undo"] = undo
    res["phase2"].update(
        off_live_layers=len(live_layers(doc)),
        unchanged=every_node(doc) == before,
        stats_after=live.stats(),
    )
    # The final canvas (no live layer now): what the last live job read, byte for byte.
    group = [n for n in doc.rootNode().childNodes() if n.name() == "Underpaint"]
    for g in group:
        g.setVisible(False)  # the kept copy is newer than the last input
    doc.refreshProjection()
    canvas = bytes(doc.pixelData(0, 0, doc.width(), doc.height()))
    rgba = bytearray(canvas)
    rgba[0::4], rgba[2::4] = canvas[2::4], canvas[0::4]
    res["input_is_final_canvas"] = bytes(rgba) == bytes(sent["image"]["data"])
    for g in group:
        g.setVisible(True)
    doc.refreshProjection()
    res["history_after_keep"] = docker.strip.count()

    # 3. LoRAs by weight, and the live sampler setting on a Generate job.
    set_combo(docker.form.speed_combo, "auto")
    runs = {}
    for tag, ticked, weight in (("one", True, 1.0), ("zero", True, 0.0), ("none", False, 1.0)):
        configure(docker, "generate", prompt="a red fox", steps=3, seed=5)
        lora_check(docker, cfg["lora"]).setChecked(ticked)
        docker.form.lora_panel.spins[cfg["lora"]].setValue(weight)
        entry = yield from generate(ctx, docker, "generate")
        layer = entry["layers"][0]
        runs[tag] = {"state": entry["state"], "uuid": layer["uuid"], "name": layer["name"]}
    nodes = {n.uniqueId().toString(): n for n in group_layers(doc)}
    pixels = {tag: node_pixels(nodes[run["uuid"]], doc) for tag, run in runs.items()}
    res["loras"] = {
        "runs": runs,
        "zero_equals_none": pixels["zero"] == pixels["none"],
        "one_differs": pixels["one"] != pixels["zero"],
    }
    set_combo(docker.form.speed_combo, "live")
    entry = yield from generate(ctx, docker, "generate", steps=30, guidance=7.5, seed=6)
    res["live_sampler"] = {"state": entry["state"], "uuid": entry["layers"][0]["uuid"]}
    set_combo(docker.form.speed_combo, "auto")

    # A history click puts the LoRA and its weight back.
    lora_check(docker, cfg["lora"]).setChecked(False)
    strip = docker.strip
    clicked = None
    for i in range(strip.count()):
        item = strip.item(i)
        entry = item.data(0x0101)  # the strip's ENTRY_ROLE (Qt.UserRole + 1)
        if entry is not None and (entry.record.get("params") or {}).get("loras") == [
            {"name": cfg["lora"], "weight": 1.0}
        ]:
            strip.itemClicked.emit(item)
            clicked = entry.seed
            break
    yield 0.3
    res["restored"] = {"clicked": clicked, "loras": docker.form.lora_panel.values()}
    res["saved"] = doc.saveAs(cfg["kra"])

    # 4. Another document shown stops Live for this one; closing the live document is no error.
    configure(docker, "refine", steps=4, seed=None)
    docker.live_button.click()
    live = docker.live
    yield ctx.wait(lambda: live.layer() is not None, 60, "a live layer in the first document")
    other = yield from open_picture(ctx, cfg["picture"])
    yield ctx.wait(lambda: docker.live is None, 20, "Live to stop when another document is shown")
    res["switched"] = {
        "checked": docker.live_button.isChecked(),
        "old_live_layers": len(live_layers(doc)),
        "message": docker.message_label.full_text(),
    }
    docker.live_button.click()
    live = docker.live
    yield ctx.wait(lambda: live.layer() is not None, 60, "a live layer in the second document")
    other.setModified(False)  # as if the painter said "discard": no dialog
    other.close()
    yield ctx.wait(lambda: docker.live is None, 20, "Live to stop when its document is closed")
    yield 0.5
    res["closed"] = {"checked": docker.live_button.isChecked(), "message": docker.message_label.full_text()}

    # ControlNet: a change of the (hidden) sketch layer alone sends a job, with the unit's image.
    yield ctx.wait(lambda: Krita.instance().activeDocument() == doc, 20, "the first document to be shown")
    width, height = doc.width(), doc.height()
    sketch = add_paint_layer(doc, "Sketch", bytes(width * height * 4), paint, visible=False)
    doc.setActiveNode(paint)
    unit = {"layer": sketch.uniqueId().toString(), "preprocessor": "none", "model": "scribble"}
    configure(docker, "controlnet", steps=4, seed=9, units=[unit])
    docker.live_button.click()
    live = docker.live
    yield ctx.wait(lambda: live.counts["placed"] >= 1, 60, f"a ControlNet live result ({live.stats()})")
    yield 0.5
    sent = live.counts["sent"]
    fill_rect(doc, sketch, (100, 100, 150, 8), (0, 0, 0, 255))
    yield ctx.wait(lambda: live.counts["placed"] >= 2, 60, f"a live result for the sketch ({live.stats()})")
    res["controlnet"] = {
        "sent_for_sketch": live.counts["sent"] - sent,
        "units": live.last_sent["params"].get("units"),
        "images": sorted(live.last_sent.get("images", [])),
        "mode": docker.form.mode().key,
    }
    docker.live_button.click()
    yield 0.3
    configure(docker, "refine", seed=None)

    # 5. The daemon out of reach while live: nothing is sent, nothing raises; back, Live goes on.
    docker.live_button.click()
    live = docker.live
    yield ctx.wait(lambda: live.counts["placed"] >= 1, 60, "a live result before the daemon goes")
    docker.endpoint_edit.setText(cfg["dead_endpoint"])
    docker.connect_button.click()
    yield 0.5
    sent = live.counts["sent"]
    fill_rect(doc, paint, (10, 10, 40, 40), (0, 0, 0, 255))
    yield 1.5
    res["lost"] = {
        "sent_while_lost": live.counts["sent"] - sent,
        "still_on": docker.live is live and docker.live_button.isChecked(),
        "message": docker.message_label.full_text(),
        "status": docker.status_label.full_text(),
    }
    placed = live.counts["placed"]
    yield from connect(ctx, docker, cfg["endpoint"])
    yield ctx.wait(lambda: live.counts["placed"] > placed, 60, f"Live to go on ({live.stats()})")
    res["lost"]["placed_after"] = live.counts["placed"] - placed
    docker.live_button.click()
    yield 0.3
    res["lost"]["live_layers_after_off"] = len(live_layers(doc))

    # 6. A deeper stack: each tick reads the painter's layer and one other, and a change on a layer the
    # painter is not on (here the background, under several others) still sends a job.
    for name in ("Extra 1", "Extra 2"):
        add_paint_layer(doc, name, bytes(doc.width() * doc.height() * 4), sketch)
    for g in group:
        g.setVisible(False)  # the results made above cover the background
    doc.setActiveNode(paint)
    doc.refreshProjection()
    yield 0.3
    docker.live_button.click()
    live = docker.live
    yield ctx.wait(lambda: live.counts["placed"] >= 1 and live.seen == live.sent, 60, "a live result")
    yield 0.5
    sent, placed = live.counts["sent"], live.counts["placed"]
    fill_rect(doc, background, (0, 0, 30, 30), (10, 200, 10, 255))
    yield ctx.wait(
        lambda: live.counts["placed"] > placed, 60, f"a live result for the background ({live.stats()})"
    )
    res["stack"] = {
        "layers": [n.name() for n in doc.rootNode().childNodes()],
        "sent_for_background": live.counts["sent"] - sent,
        "reads_max": live.stats()["reads_max"],
        "reads": live.watch.reads[:3],
        "background_in_input": bytes(live.last_sent["image"]["data"][:4]) == bytes((10, 200, 10, 255)),
    }

    # 7. Generate while Live is on: its preview is not the painter's change (Live waits), its result is.
    busy_at_send: list[bool] = []
    send = live.send

    def spy(*args: Any) -> None:
        busy_at_send.append(docker.is_busy())
        send(*args)

    live.send = spy
    yield ctx.wait(lambda: live.seen == live.sent, 30, "Live to settle")
    sent = live.counts["sent"]
    entry = yield from generate(ctx, docker, "generate", prompt="a red fox", steps=cfg["steps"], seed=7)
    during = list(busy_at_send)
    yield ctx.wait(
        lambda: live.counts["sent"] > sent and live.seen == live.sent, 30, "a live job after Generate"
    )
    res["generate_while_live"] = {
        "state": entry["state"],
        "sent_while_busy": sum(during),
        "paused_ticks": live.counts["paused"],
        "sent_after": live.counts["sent"] - sent,
    }
    docker.live_button.click()
    yield 0.3
