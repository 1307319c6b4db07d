"""Restart scenario (issue 9), run twice inside real Krita with the same home: a job must outlive Krita.

Phase "quit": open a picture (a file), start Inpaint on a soft selection and quit Krita while it runs
(the document is not saved). pytest then waits until the daemon has finished the job, with nobody
connected. Phase "resume" (a new Krita): the docker resumes the session from its kept token, the
result waits for its document; opening the file places it as if the job had just finished. Then the
document is saved as .kra, a Refine job starts and the document is closed mid-job: the docker is free
at once, the job goes on, and reopening the .kra places its result too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from krita import InfoObject, Krita
from scenario_lib import (
    connect,
    group_layers,
    open_picture,
    preview_layers,
    select_mask_file,
    start_job,
    wait_for_docker,
)


def kept(path: str) -> dict[str, Any]:
    """The docker's file of kept jobs, as it is now."""
    file = Path(path)
    return json.loads(file.read_text()) if file.exists() else {}


def scenario(ctx: Any):
    cfg, res = ctx.config, ctx.results
    docker = yield from wait_for_docker(ctx)
    from underpaint_krita.docker import store_path

    res["store_path"] = store_path()
    if cfg["phase"] == "quit":
        yield from connect(ctx, docker, cfg["endpoint"])
        doc = yield from open_picture(ctx, cfg["picture"])
        yield from select_mask_file(ctx, doc, cfg["mask"])
        job = yield from start_job(
            ctx, docker, "inpaint", prompt="a patient fox", steps=cfg["steps"], seed=4321, resolution=128
        )
        res["job"], res["session"] = job.job_id, docker.connection.session
        res["finished_at_quit"] = job.finished  # the job must outlive this Krita
        res["store"] = kept(store_path())
        ctx.keep_documents_on_quit = True  # quit mid-job with the document open and not saved
        return

    # Phase "resume": a new Krita. The job was adopted from the kept file at the docker's start.
    yield ctx.wait(lambda: docker.connection.state.name == "CONNECTED", 30, "the daemon's welcome")
    res["resumed"] = bool((docker.connection.welcome or {}).get("resumed"))
    res["session"] = docker.connection.session
    yield ctx.wait(
        lambda: bool(docker.parking.waiting()),
        60,
        f"the kept result to arrive (docker: {docker.message_label.full_text()!r})",
    )
    yield 0.3
    res["waiting"] = [job.job_id for job in docker.parking.waiting()]
    res["waiting_message"] = docker.message_label.full_text()
    res["store_waiting"] = kept(store_path())
    doc = yield from open_picture(ctx, cfg["picture"])
    yield ctx.wait(lambda: bool(group_layers(doc)), 20, "the kept result to be placed")
    yield 0.5  # the active layer is given back from the event loop
    res["placed_message"] = docker.message_label.full_text()
    res["active"] = doc.activeNode().name()
    res["first_layers"] = [node.name() for node in group_layers(doc)]
    res["history_title"] = docker.form.history_section.title
    res["first_entry"] = docker.history[-1] if docker.history else None

    # Closing a saved document mid-job: the docker is free, the job goes on, reopening places it.
    res["saved"] = doc.saveAs(cfg["kra"])
    yield from select_mask_file(ctx, doc, cfg["mask"])
    job = yield from start_job(
        ctx, docker, "refine", prompt="a patient fox", steps=cfg["steps"], seed=99, resolution=128
    )
    res["refine_job"] = job.job_id
    res["refine_finished_at_close"] = job.finished
    doc.setModified(False)
    doc.close()
    yield ctx.wait(lambda: not docker.is_busy(), 10, "the docker to let the closed document's job go")
    res["closed_message"] = docker.message_label.full_text()
    res["closed_generate_tip"] = docker.generate_button.toolTip()
    res["store_parked"] = kept(store_path())
    yield ctx.wait(lambda: bool(docker.parking.waiting()), 90, "the closed document's result to arrive")
    doc = yield from open_picture(ctx, cfg["kra"])
    yield ctx.wait(lambda: len(group_layers(doc)) == 2, 20, "the result to be placed in the reopened file")
    yield 0.5
    res["reopened_message"] = docker.message_label.full_text()
    res["previews"] = preview_layers(doc)
    res["store_end"] = kept(store_path())
    res["saved_again"] = doc.saveAs(cfg["kra"])
    doc.setBatchmode(True)  # no PNG options dialog
    res["exported"] = doc.exportImage(cfg["png"], InfoObject())
    doc.setBatchmode(False)
    res["documents"] = [d.fileName() for d in Krita.instance().documents()]
