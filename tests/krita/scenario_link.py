"""Link scenario (issue 9), run inside real Krita against a daemon with keys, through a relay pytest
controls: the keys under Advanced > Daemon (none, a key the daemon does not know, a missing file, the
right pair); a link that goes silent mid-job (the docker says the daemon is lost within ~3 s, the job
waits, and its result is placed once the link is back); the daemon killed mid-job and restarted (the
docker says so at once, and that the job is lost, without adding anything).

Marker files in the output folder: `silence` (holding the job id) asks pytest to silence the link and
restore it once the daemon has finished that job and the scenario has seen the loss (`silence.seen`);
`kill` asks it to kill the daemon, and `kill.seen` to start another.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from krita import Krita
from scenario_lib import (
    fully_visible,
    group_layers,
    open_picture,
    preview_layers,
    select_mask_file,
    start_job,
    untipped,
    wait_for_docker,
)


def set_keys(docker: Any, server: str, client: str) -> None:
    """Fill Advanced > Daemon like a painter and press Connect."""
    docker.form.advanced.set_open(True)
    docker.daemon.server_key_edit.setText(server)
    docker.daemon.client_key_edit.setText(client)
    docker.connect_button.click()


def refused(ctx: Any, docker: Any, needle: str, state: str = "REFUSED") -> Any:
    """Wait until the status line shows `needle` in state `state`; returns what the painter sees."""
    t0 = time.monotonic()
    yield ctx.wait(
        lambda: docker.connection.state.name == state and needle in docker.status_label.full_text(),
        20,
        f"{state} with {needle!r} (status: {docker.status_label.full_text()!r})",
    )
    yield 0.3  # the next check of what Generate needs
    return {
        "seconds": round(time.monotonic() - t0, 2),
        "status": docker.status_label.full_text(),
        "generate": [docker.generate_button.isEnabled(), docker.generate_button.toolTip()],
    }


def lost(ctx: Any, docker: Any, marker: Path, job: Any) -> Any:
    """Ask pytest (marker) to break the link, and time how long the docker takes to say so."""
    marker.write_text(str(job.job_id))
    t0 = time.monotonic()
    yield ctx.wait(
        lambda: docker.connection.state.name == "LOST",
        15,
        f"the docker to say the daemon is lost (status: {docker.status_label.full_text()!r})",
    )
    seconds = round(time.monotonic() - t0, 2)
    yield 0.3
    seen = {
        "seconds": seconds,
        "status": docker.status_label.full_text(),
        "line": docker.message_label.full_text(),
        "busy": docker.is_busy(),
        "generate": docker.generate_button.isEnabled(),
        "job_state": job.state.value,
    }
    marker.with_suffix(".seen").write_text("1")  # pytest may bring the link (or a daemon) back now
    return seen


def scenario(ctx: Any):
    cfg, res = ctx.config, ctx.results
    docker = yield from wait_for_docker(ctx)
    docker.endpoint_edit.setText(cfg["endpoint"])

    # 1. Keys: none; a pair the daemon does not know; a file that is not there; the right pair.
    set_keys(docker, "", "")
    res["no_keys"] = yield from refused(ctx, docker, "it needs keys")
    set_keys(docker, cfg["server_key"], cfg["stranger_key"])
    res["stranger"] = yield from refused(ctx, docker, "refused this plugin's keys")
    set_keys(docker, cfg["server_key"], cfg["server_key"] + ".missing")
    res["missing"] = yield from refused(ctx, docker, "Cannot use the keys", state="INVALID")
    set_keys(docker, cfg["server_key"], cfg["client_key"])
    yield ctx.wait(
        lambda: docker.connection.state.name == "CONNECTED",
        30,
        f"the docker to connect with the keys (status: {docker.status_label.full_text()!r})",
    )
    res["connected"] = docker.connection.describe()
    krita = Krita.instance()
    res["settings"] = {k: krita.readSetting("underpaint", k, "") for k in ("server_key", "client_key")}
    # Advanced open at the docker's default size: the key rows fit without sideways scrolling.
    docker.scroll.ensureWidgetVisible(docker.daemon.client_key_edit)
    yield 0.3
    docker.grab().save(str(ctx.out / "keys.png"))
    docker.form.body.grab().save(str(ctx.out / "keys-all.png"))
    res["keys_layout"] = {
        "hscroll": docker.scroll.horizontalScrollBar().maximum(),
        "body_width": docker.form.body.minimumSizeHint().width(),
        "viewport_width": docker.scroll.viewport().width(),
        "keys_shown": fully_visible(docker.daemon.server_key_edit)
        and fully_visible(docker.daemon.client_key_edit),
        "untipped": untipped(docker),
        "docker": [docker.width(), docker.height()],
    }
    docker.form.advanced.set_open(False)

    # 2. The link goes silent mid-job: lost within ~3 s, the job waits; its result comes with the link.
    doc = yield from open_picture(ctx, cfg["picture"])
    yield from select_mask_file(ctx, doc, cfg["mask"])
    job = yield from start_job(
        ctx, docker, "inpaint", prompt="a quiet fox", steps=cfg["steps"], seed=77, resolution=128
    )
    count = len(docker.history)  # before the link goes: the job may end soon after it is back
    res["silent"] = yield from lost(ctx, docker, ctx.out / "silence", job)
    docker.grab().save(str(ctx.out / "lost.png"))
    yield ctx.wait(
        lambda: len(docker.history) > count,
        180,
        f"the job to end after the link came back (docker: {docker.message_label.full_text()!r})",
    )
    res["silent_entry"] = docker.history[-1]
    res["silent_message"] = docker.message_label.full_text()
    res["back_status"] = docker.status_label.full_text()
    res["resumed"] = bool((docker.connection.welcome or {}).get("resumed"))

    # 3. The daemon is killed mid-job and a new one starts: lost at once; the job is lost, nothing added.
    before = [node.name() for node in group_layers(doc)]
    job = yield from start_job(ctx, docker, "refine", prompt="a loud fox", steps=200, seed=78, resolution=128)
    count = len(docker.history)
    res["killed"] = yield from lost(ctx, docker, ctx.out / "kill", job)
    yield ctx.wait(
        lambda: len(docker.history) > count,
        180,
        f"the job to end once a new daemon is up (docker: {docker.message_label.full_text()!r})",
    )
    yield ctx.wait(lambda: docker.connection.state.name == "CONNECTED", 30, "the new daemon's welcome")
    res["killed_entry"] = docker.history[-1]
    res["killed_message"] = docker.message_label.full_text()
    res["killed_layers"] = {"before": before, "after": [node.name() for node in group_layers(doc)]}
    res["previews"] = preview_layers(doc)
    res["after_restart_status"] = docker.status_label.full_text()
    res["saved"] = doc.saveAs(cfg["kra"])
