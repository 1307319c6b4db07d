"""Rank scenario (issue 11), run inside real Krita: "Rank by CLIP" shows only for a preset whose op
spec lists `rank` (not for DDPM) and is greyed out at one variation; at Krita's default docker size
it is reachable and has a tooltip. Then a ranked Generate of 3 variations on a soft selection: the best
picture's layer is the visible one, and each layer's name and stored record keep its score.
"""

from __future__ import annotations

from typing import Any

from scenario_lib import (
    configure,
    connect,
    fully_visible,
    generate,
    group_layers,
    node_pixels,
    open_picture,
    pick_model,
    preview_layers,
    select_mask_file,
    untipped,
    wait_for_docker,
)


def rank_state(docker: Any) -> dict[str, Any]:
    form = docker.form
    check = form.rank_check
    extras = [form.extras.layout_.itemAt(i).widget() for i in range(form.extras.layout_.count())]
    return {
        "shown": check.isVisibleTo(form.body),
        "enabled": check.isEnabled(),
        "extra_labels": [w.text() for w in extras if w is not None and hasattr(w, "text")],
    }


def scenario(ctx: Any):
    cfg, res = ctx.config, ctx.results
    docker = yield from wait_for_docker(ctx)
    yield from connect(ctx, docker, cfg["endpoint"])
    doc = yield from open_picture(ctx, cfg["picture"])
    yield from select_mask_file(ctx, doc, cfg["mask"])
    background = doc.activeNode()
    background_pixels = node_pixels(background, doc)
    form = docker.form

    # A preset that cannot rank: no Rank control (and no "Rank" among its model options).
    pick_model(docker, "tiny-ddpm")
    configure(docker, "generate", variations=3)
    yield 0.3
    res["ddpm"] = rank_state(docker)
    # One that can: shown; greyed out at one variation, on at several.
    pick_model(docker, "tiny")
    configure(docker, "generate", variations=1)
    yield 0.3
    res["tiny_one"] = rank_state(docker)
    configure(docker, "generate", variations=3)
    yield 0.3
    res["tiny_three"] = rank_state(docker)
    res["tooltip"] = form.rank_check.toolTip()

    # Krita's default docker size: the control is reachable without widening the docker.
    docker.scroll.ensureWidgetVisible(form.rank_check)
    yield 0.3
    docker.grab().save(str(ctx.out / "rank.png"))
    res["layout"] = {
        "hscroll": docker.scroll.horizontalScrollBar().maximum(),
        "body_width": form.body.minimumSizeHint().width(),
        "viewport_width": docker.scroll.viewport().width(),
        "check_shown": fully_visible(form.rank_check),
        "untipped": untipped(docker),
        "docker": [docker.width(), docker.height()],
    }

    # The ranked job: 3 variations, best first.
    form.rank_check.setChecked(True)
    res["sent_rank"] = form.values().rank
    res["entry"] = yield from generate(
        ctx, docker, "generate", prompt=cfg["prompt"], steps=4, seed=cfg["seed"], variations=3
    )
    yield 0.5
    job = docker.history[-1]
    res["message"] = docker.message_label.full_text()
    layers = group_layers(doc)  # bottom to top
    res["layers"] = [
        {"name": node.name(), "uuid": node.uniqueId().toString(), "visible": node.visible()}
        for node in layers
    ]
    res["placed"] = job.get("layers")
    res["previews"] = preview_layers(doc)
    res["background_unchanged"] = node_pixels(background, doc) == background_pixels
    res["saved"] = doc.saveAs(cfg["kra"])
