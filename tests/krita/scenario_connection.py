"""Connection scenario, run inside real Krita: daemon down -> clear message -> recovery when it comes
up; closing a never-saved document mid-job cancels its job (nowhere to put the result later);
quitting Krita mid-job with only never-saved documents cancels it too (checked by pytest afterwards).
A saved document's job goes on instead: scenario_restart.py.

Talks to pytest through marker files in the output folder: `want_daemon` asks it to start the daemon
on the endpoint that was down; `quitting` says which job is running while Krita quits.
"""

from __future__ import annotations

import json
from typing import Any

from krita import Krita, Selection
from scenario_lib import configure, new_document, preview_layers, set_combo, wait_for_docker


def start_long_job(ctx: Any, docker: Any, doc: Any):
    selection = Selection()
    selection.select(100, 40, 200, 160, 255)
    doc.setSelection(selection)
    configure(docker, "inpaint", prompt="a long job", steps=200, resolution=512)
    yield ctx.wait(lambda: docker.generate_button.isEnabled(), 20, "Generate to be enabled")
    docker.generate_button.click()
    assert docker.is_busy(), f"the long job did not start: {docker.message_label.full_text()}"
    yield ctx.wait(
        lambda: docker.job.step >= 1 and bool(preview_layers(doc)),
        60,
        f"the long job to run (docker: {docker.message_label.full_text()!r})",
    )
    return docker.job


def scenario(ctx: Any):
    cfg, res = ctx.config, ctx.results
    docker = yield from wait_for_docker(ctx)

    # 1. Nothing listens on the endpoint: the docker says so and cannot generate.
    docker.endpoint_edit.setText(cfg["down_endpoint"])
    docker.connect_button.click()
    yield ctx.wait(lambda: docker.connection.state.name == "DOWN", 20, "the docker to report the daemon down")
    res["down_status"] = docker.status_label.full_text()
    res["down_generate_enabled"] = docker.generate_button.isEnabled()
    res["down_generate_tip"] = docker.generate_button.toolTip()
    docker.generate_button.click()  # disabled: nothing happens
    res["down_busy"] = docker.is_busy()
    ctx.log(f"down: {res['down_status']}")

    # 2. The daemon comes up on that endpoint: the docker reconnects by itself.
    (ctx.out / "want_daemon").write_text("1")
    yield ctx.wait(
        lambda: docker.connection.state.name == "CONNECTED",
        120,
        f"the docker to reconnect (status {docker.status_label.full_text()!r})",
    )
    yield 0.3  # the next check of what Generate needs
    res["up_status"] = docker.status_label.toolTip()  # the line says why Generate is off; this too
    res["up_status_line"] = docker.status_label.full_text()
    res["up_generate_enabled"] = docker.generate_button.isEnabled()
    res["up_generate_tip"] = docker.generate_button.toolTip()  # no document yet
    ctx.log(f"up: {res['up_status']}")

    # 3. Inpaint without a selection: Generate is off and says why; closing the never-saved document
    # mid-job cancels its job.
    doc = yield from new_document(ctx, cfg["picture"], "unsaved-close")
    set_combo(docker.form.mode_combo, "inpaint")
    yield ctx.wait(
        lambda: "Select a region first" in docker.status_label.full_text(),
        5,
        f"the docker to say why Generate is off (it says {docker.status_label.full_text()!r})",
    )
    docker.generate_button.click()  # off: nothing happens
    res["no_selection_message"], res["no_selection_busy"] = docker.status_label.full_text(), docker.is_busy()
    res["no_selection_generate"] = [docker.generate_button.isEnabled(), docker.generate_button.toolTip()]
    job = yield from start_long_job(ctx, docker, doc)
    res["close_job"] = job.job_id
    count = len(docker.history)
    doc.setModified(False)
    doc.close()
    yield ctx.wait(lambda: len(docker.history) > count, 30, "the job of the closed document to end")
    res["close_entry"] = docker.history[-1]
    res["close_message"] = docker.message_label.full_text()
    yield ctx.wait(
        lambda: (
            (docker.connection.daemon_status or {}).get("running") is None
            and not (docker.connection.daemon_status or {}).get("queued")
        ),
        20,
        "the daemon to report no running job",
    )
    res["close_daemon_status"] = docker.connection.daemon_status

    # 4. Quit Krita mid-job (a never-saved document still open): pytest checks the daemon dropped the job.
    doc = yield from new_document(ctx, cfg["picture"], "unsaved-quit")
    job = yield from start_long_job(ctx, docker, doc)
    res["quit_job"] = job.job_id
    (ctx.out / "quitting").write_text(json.dumps({"job": job.job_id}))
    ctx.keep_documents_on_quit = True
    assert Krita.instance().documents(), "the document should still be open"
