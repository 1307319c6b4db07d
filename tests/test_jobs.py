"""Job behaviour: progress, previews, cancellation, fairness, responsiveness, vanished clients."""

from __future__ import annotations

import time

import pytest
from helpers import obj, picture

from underpaint.protocol import Client, DaemonError, JobCancelled

# Jobs long enough to act on while they run (tiny preset at 512 px: a fraction of a second a step).
LONG = {"prompt": "a cat", "steps": 200, "width": 512, "height": 512, "seed": 1}


def test_progress_counts_every_step_after_strength(client) -> None:
    events = []
    result = client.run(
        "sdedit",
        {"steps": 8, "strength": 0.5, "seed": 1},
        {"image": obj(picture((64, 64)))},
        on_progress=events.append,
    )
    assert [e["step"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["total"] == events[-1]["step"] for e in events), "total is known from the first step"
    assert 4 <= len(events) <= 5, "8 steps at strength 0.5 run about 4 (PNDM adds one)"
    assert "preview" not in events[0]
    assert result["timings"]["total"] >= result["timings"]["run"] > 0


def test_previews_are_small_images(client) -> None:
    events = []
    client.run("txt2img", {"steps": 3, "width": 128, "height": 96}, preview=True, on_progress=events.append)
    preview = events[0]["preview"]
    assert (preview["width"], preview["height"], preview["channels"]) == (16, 12, 3)
    assert len(preview["data"]) == 16 * 12 * 3


def _first_progress(client: Client, job: str) -> dict:
    for event in client.events(job, timeout=120):
        if event["type"] == "progress":
            return event
    raise AssertionError(f"job {job} ended before any progress")


def test_cancel_running_job_within_one_step(client) -> None:
    job = client.submit("txt2img", LONG)
    first = _first_progress(client, job)
    client.cancel(job)
    steps_after = []
    with pytest.raises(JobCancelled) as cancelled:
        client.wait(job, on_progress=steps_after.append, timeout=120)
    assert cancelled.value.reason == "client"
    assert len(steps_after) <= 1, f"cancel took effect within one step, not {len(steps_after)}"
    assert first["total"] >= 200
    with pytest.raises(DaemonError) as err:
        client.cancel(job)
    assert err.value.code == "unknown_job"


def test_cancel_queued_job_is_immediate_and_other_clients_cannot(daemon, client) -> None:
    running = client.submit("txt2img", LONG)
    queued = client.submit("txt2img", LONG)
    with Client(daemon.endpoint) as other:
        with pytest.raises(DaemonError) as err:
            other.cancel(queued)
        assert err.value.code == "not_owner"
    client.cancel(queued)
    with pytest.raises(JobCancelled):
        client.wait(queued, timeout=5)
    client.cancel(running)
    with pytest.raises(JobCancelled):
        client.wait(running, timeout=120)


def test_daemon_answers_within_milliseconds_while_busy(daemon, client) -> None:
    job = client.submit("txt2img", LONG)
    _first_progress(client, job)
    with Client(daemon.endpoint, timeout=5) as other:
        for _ in range(5):
            t0 = time.perf_counter()
            status = other.status()
            assert time.perf_counter() - t0 < 0.5, "status waited for the worker"
        assert status["running"] == job
        mine = next(j for j in status["jobs"] if j["job"] == job)
        assert mine["state"] == "running" and mine["step"] >= 1 and mine["mine"] is False
        t0 = time.perf_counter()
        other.hello()
        assert time.perf_counter() - t0 < 0.5, "the handshake waited for the worker"
    client.cancel(job)
    with pytest.raises(JobCancelled):
        client.wait(job, timeout=120)


def test_fair_queue_across_clients(daemon) -> None:
    """A's batch of 6 queued first; B's single job runs second, not seventh."""
    job_args = ("txt2img", {"steps": 6, "width": 256, "height": 256, "seed": 2})
    with Client(daemon.endpoint, timeout=60) as a, Client(daemon.endpoint, timeout=60) as b:
        a_jobs = [a.submit(*job_args) for _ in range(6)]
        b_job = b.submit(*job_args)
        status = b.status(b_job)
        assert status["jobs"][0]["position"] <= 1, status
        b_result = b.wait(b_job, timeout=300)
        a_results = [a.wait(job, timeout=300) for job in a_jobs]
        # All were accepted within milliseconds, so time spent queued orders their starts.
        b_start = b_result["timings"]["queued"]
        ahead = sum(1 for r in a_results if r["timings"]["queued"] < b_start)
        assert ahead <= 2, f"{ahead} of A's jobs ran before B's single job (FIFO would be 6)"
        assert len(a_results) == 6, "no job lost"


def test_vanished_client_does_not_stall_the_daemon(daemon) -> None:
    gone = Client(daemon.endpoint)
    gone.submit("txt2img", {"steps": 20, "width": 256, "height": 256})
    gone.close()
    with Client(daemon.endpoint, timeout=120) as client:
        result = client.run("txt2img", {"steps": 2, "width": 64, "height": 64}, timeout=120)
        assert result["images"]


def test_load_and_unload_through_the_protocol(daemon) -> None:
    with Client(daemon.endpoint, timeout=300) as client:
        loaded = client.load("tiny", "instruct")
        assert loaded["type"] == "loaded" and loaded["model"] == "tiny"
        tiny = next(p for p in client.models()["presets"] if p["name"] == "tiny")
        assert {"base", "instruct"} <= set(tiny["loaded"])
        freed = client.unload("tiny")
        assert freed["freed_bytes"] > 0
        assert next(p for p in client.models()["presets"] if p["name"] == "tiny")["loaded"] == []
        assert client.run("txt2img", {"steps": 2, "width": 64, "height": 64})["images"]
