"""Latest wins (PROTOCOL.md 9.6), against a real daemon: a newer job of a session's lane ends the older
one (dropped when queued, stopped within one step when running) with `cancelled` `reason`
`"superseded"` and `by`; other lanes and other sessions are untouched; the winner's pixels are those of
the same job sent alone; a bad lane is refused with a documented code."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import obj, picture, pixels

from underpaint.daemon.commands.launch import running_daemon
from underpaint.protocol import Client, DaemonError, JobCancelled

LONG = {"prompt": "a cat", "steps": 200, "width": 512, "height": 512, "seed": 1}
CANVAS = picture((64, 64))
EDIT = {"prompt": "a fox, oil painting", "strength": 0.75, "steps": 4, "seed": 99, "resolution": 64}


def _first_progress(client: Client, job: str) -> dict[str, Any]:
    for event in client.events(job, timeout=120):
        if event["type"] == "progress":
            return event
    raise AssertionError(f"job {job} ended before any progress")


def _superseded(client: Client, job: str, by: str, timeout: float = 120) -> list[dict[str, Any]]:
    """Wait for `job` to end as superseded by `by`; returns the progress events it sent meanwhile."""
    steps: list[dict[str, Any]] = []
    with pytest.raises(JobCancelled) as cancelled:
        client.wait(job, on_progress=steps.append, timeout=timeout)
    assert (cancelled.value.reason, cancelled.value.by) == ("superseded", by)
    return steps


def test_welcome_advertises_lanes(client: Client) -> None:
    assert "lanes" in client.hello()["features"]


def test_running_job_is_stopped_within_one_step(client: Client) -> None:
    old = client.submit("txt2img", LONG, lane="live")
    first = _first_progress(client, old)
    new = client.submit("sdedit", EDIT, {"image": obj(CANVAS)}, lane="live")
    after = _superseded(client, old, new)
    assert len(after) <= 1, f"the running job went on for {len(after)} steps after it was superseded"
    assert first["total"] >= 200 and first["step"] + len(after) < first["total"]
    assert client.wait(new, timeout=120)["images"]


def test_queued_job_dropped_others_untouched_and_winner_equals_a_single_job(daemon, client: Client) -> None:
    blocker = client.submit("txt2img", LONG, lane="other")  # another lane of the same session
    _first_progress(client, blocker)
    with Client(daemon.endpoint, timeout=120) as other:
        theirs = other.submit("sdedit", EDIT, {"image": obj(CANVAS)}, lane="live")  # same name, other session
        queued = client.submit("sdedit", {**EDIT, "seed": 5}, {"image": obj(picture((64, 48)))}, lane="live")
        final = client.submit("sdedit", EDIT, {"image": obj(CANVAS)}, lane="live")
        assert _superseded(client, queued, final, timeout=5) == [], "a queued job never ran a step"
        kept = client.fetch(queued)["event"]
        assert (kept["type"], kept["reason"], kept["by"]) == ("cancelled", "superseded", final)
        status = {j["job"]: j for j in client.status()["jobs"]}
        assert status[blocker]["state"] == "running", "another lane's job was touched"
        assert {theirs, final} <= set(status)
        client.cancel(blocker)
        with pytest.raises(JobCancelled) as stopped:
            client.wait(blocker, timeout=120)
        assert stopped.value.reason == "client"
        winner = client.wait(final, timeout=120)
        assert other.wait(theirs, timeout=120)["images"], "another session's job of the same lane name ran"
    alone = client.run("sdedit", EDIT, {"image": obj(CANVAS)}, timeout=120)
    assert winner["seed"] == alone["seed"] == EDIT["seed"]
    assert np.array_equal(pixels(winner["images"][0]), pixels(alone["images"][0]))


@pytest.mark.parametrize(
    ("lane", "code"),
    [("", "out_of_range"), ("x" * 65, "out_of_range"), (7, "invalid_type"), ([], "invalid_type")],
)
def test_bad_lane_is_refused(client: Client, lane: Any, code: str) -> None:
    with pytest.raises(DaemonError) as err:
        client.submit("txt2img", {"steps": 2, "width": 64, "height": 64}, lane=lane)
    assert (err.value.code, err.value.field) == (code, "lane")


def test_longest_lane_is_taken(client: Client) -> None:
    result = client.run("txt2img", {"steps": 2, "width": 64, "height": 64}, lane="é" * 64, timeout=120)
    assert result["images"]


def test_superseding_reaches_a_worker_process(underpaint_home) -> None:
    """With a pool of worker processes (9.5) the stop goes to the worker that runs the old job."""
    slow = ("--workers", "2", "--device", "cpu", "--test-step-delay", "0.2", "--threads", "1")
    steps = {"prompt": "a cat", "steps": 60, "width": 64, "height": 64, "seed": 3}
    with running_daemon(*slow) as proc, Client(proc.endpoint, timeout=120) as client:
        old = client.submit("txt2img", steps, lane="live")
        _first_progress(client, old)
        new = client.submit("txt2img", {**steps, "steps": 2}, lane="live")
        assert len(_superseded(client, old, new)) <= 1
        assert client.wait(new, timeout=120)["worker"] in {"w1", "w2"}
