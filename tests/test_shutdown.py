"""The daemon stops cleanly and quickly whatever the device is doing, and clients notice a daemon that
died: SIGTERM mid-step (a step longer than every internal timeout), a second signal, SIGKILL and a
restart on the same port."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator

import pytest

from underpaint.daemon.commands.launch import DaemonProcess, running_daemon
from underpaint.protocol import Client, DaemonError, DaemonUnavailable

#: Every denoising step of these daemons sleeps this long (far past the shutdown grace).
STEP_DELAY = "30"
JOB = {"prompt": "a cat", "steps": 4, "width": 64, "height": 64, "seed": 1}


def _first_progress(client: Client, job: str) -> None:
    for event in client.events(job, timeout=120):
        if event["type"] == "progress":
            return
    raise AssertionError(f"job {job} ended before any progress")


def _end(client: Client, job: str, timeout: float) -> dict:
    for event in client.events(job, timeout=timeout):
        if event["type"] in ("result", "cancelled", "error"):
            return event
    raise AssertionError("unreachable")


def _reply_to(client: Client, rid: int) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = client.poll(0.5)
        if message is not None and message.get("re") == rid and message["type"] != "progress":
            return message
    raise AssertionError(f"no reply to request {rid}")


@pytest.fixture
def slow(underpaint_home) -> Iterator[DaemonProcess]:
    with running_daemon("--test-step-delay", STEP_DELAY, "--shutdown-grace", "2") as proc:
        yield proc


def test_sigterm_mid_step_ends_every_job_and_exits_in_time(slow: DaemonProcess) -> None:
    with (
        Client(slow.endpoint, timeout=30) as runner,
        Client(slow.endpoint, timeout=30) as waiter,
        Client(slow.endpoint, timeout=30) as latecomer,
    ):
        running = runner.submit("txt2img", JOB)
        _first_progress(runner, running)  # now inside a 30 s step
        queued = waiter.submit("txt2img", JOB)
        load_rid = waiter.send("load", model="tiny", op="sdedit")
        t0 = time.monotonic()
        slow.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(DaemonError) as refused:
            latecomer.submit("txt2img", JOB)
        assert refused.value.code == "shutting_down"
        queued_end = _end(waiter, queued, timeout=10)
        assert (queued_end["type"], queued_end["code"]) == ("error", "shutting_down")
        load_reply = _reply_to(waiter, load_rid)
        assert load_reply["code"] == "shutting_down" and "job" not in load_reply
        running_end = _end(runner, running, timeout=15)
        assert (running_end["type"], running_end["code"]) == ("error", "shutting_down")
        assert "Traceback" not in running_end["message"]
        slow.process.wait(timeout=15)
        took = time.monotonic() - t0
    assert slow.process.returncode == 0, slow.log()
    assert took < 10, f"shutdown took {took:.1f} s with a 30 s step running (grace 2 s)"
    assert "stopped" in slow.log()


def test_a_second_signal_exits_at_once(underpaint_home) -> None:
    with running_daemon("--test-step-delay", STEP_DELAY, "--shutdown-grace", "60") as proc:
        with Client(proc.endpoint, timeout=30) as client:
            job = client.submit("txt2img", JOB)
            _first_progress(client, job)
            proc.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            t0 = time.monotonic()
            proc.process.send_signal(signal.SIGTERM)
            proc.process.wait(timeout=5)
            assert time.monotonic() - t0 < 3
        assert proc.process.returncode == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigkill_mid_job_the_client_notices_and_a_restarted_daemon_forgets_the_session(
    underpaint_home,
) -> None:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    client = Client(endpoint, timeout=30)
    try:
        with running_daemon("--test-step-delay", "5", endpoint=endpoint) as first:
            token = client.hello()["session"]
            job = client.submit("txt2img", JOB)
            _first_progress(client, job)
            assert client.connected
            first.process.kill()
            first.process.wait()
            deadline = time.monotonic() + 4
            while client.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not client.connected, "the client noticed the dead daemon within 4 s"
            with Client(endpoint, timeout=1) as nobody, pytest.raises(DaemonUnavailable):
                nobody.status()
        with running_daemon(endpoint=endpoint) as second:
            with pytest.raises(DaemonError) as lost:
                client.wait(job, timeout=60)  # the client resumes by itself and learns the job is gone
            assert lost.value.code == "job_lost"
            assert client.resumed is False and client.session != token
            with Client(second.endpoint, timeout=30, session=token) as late:
                assert late.hello()["resumed"] is False, "a dead daemon's session is not resumed"
            assert client.run("txt2img", JOB, timeout=120)["images"], "the same client goes on working"
    finally:
        client.close()
