"""The Ray pool (issue 12): the checks of tests/test_pool.py through two Ray CPU actors, on a local
cluster this test starts (`ray.init`, 2 CPUs, no dashboard) and the daemon joins with `--ray ADDRESS`.
One cluster serves every test here (starting one costs seconds); the last test starts a daemon with
`--ray auto`, which starts a cluster of its own and must shut it down when it stops.

Ray is in the `test` extra: these tests do not skip.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import psutil
import pytest
import ray
from test_pool import (
    SLOW,
    check_cancel_reaches_its_worker,
    check_fair_order_across_workers,
    check_killed_worker_fails_only_its_job,
    check_lost_before_first_step_runs_again,
    check_shutdown_ends_the_workers,
    check_two_sessions_run_at_once,
    check_warm_worker_preferred,
    check_welcome_and_status,
    kill_process,
    process_alive,
    workers_ready,
)

from underpaint.daemon.commands.launch import DaemonProcess, running_daemon
from underpaint.protocol import Client


def test_a_daemon_shuts_down_the_cluster_it_started(underpaint_home) -> None:
    """First of the module: before the shared cluster is started."""
    with running_daemon("--ray", "auto", "--workers", "1", "--threads", "1") as proc:
        children = psutil.Process(proc.process.pid).children(recursive=True)
        ray_processes = [p for p in children if _is_ray_service(p)]
        assert ray_processes, f"the daemon started no Ray cluster: {[p.name() for p in children]}"
        with Client(proc.endpoint, timeout=120) as client:
            assert client.hello()["pool"] == "ray"
            result = client.run(
                "txt2img", {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1}
            )
            assert result["worker"] == "w1"
        proc.process.send_signal(signal.SIGTERM)
        proc.process.wait(timeout=60)
        log = proc.log()
    assert proc.process.returncode == 0, log[-3000:]
    assert "the Ray cluster this daemon started is shut down" in log
    deadline = time.monotonic() + 20
    while any(_running(p) for p in ray_processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p.name() for p in ray_processes if _running(p)], "Ray's processes outlived the daemon"


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster of 2 CPUs; yields its address."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def on_ray(cluster: str, underpaint_home) -> Iterator[DaemonProcess]:
    with running_daemon("--ray", cluster, "--workers", "2", *SLOW) as proc:
        workers_ready(proc.endpoint, 2)
        yield proc


def _underpaint_actors() -> list[str]:
    names = ray.util.list_named_actors(all_namespaces=True)
    return [n["name"] for n in names if n["name"].startswith("underpaint-")]


def test_welcome_and_status_show_the_actors(on_ray: DaemonProcess) -> None:
    check_welcome_and_status(on_ray.endpoint, "ray")
    assert len(_underpaint_actors()) == 2, "one named actor per worker, on the test's cluster"


def test_two_sessions_jobs_run_at_the_same_time(on_ray: DaemonProcess) -> None:
    check_two_sessions_run_at_once(on_ray.endpoint)


def test_fair_order_holds_across_actors(on_ray: DaemonProcess) -> None:
    check_fair_order_across_workers(on_ray.endpoint)


def test_cancel_reaches_the_right_actor_within_one_step(on_ray: DaemonProcess) -> None:
    check_cancel_reaches_its_worker(on_ray.endpoint)


def test_an_actor_killed_mid_job_fails_only_its_job_and_ray_restarts_it(on_ray: DaemonProcess) -> None:
    check_killed_worker_fails_only_its_job(on_ray.endpoint, kill_process)
    assert "Ray restarts it" in on_ray.log()


def test_an_actor_killed_before_the_first_step_runs_its_job_again(on_ray: DaemonProcess) -> None:
    check_lost_before_first_step_runs_again(on_ray.endpoint, kill_process)


def test_a_job_goes_to_an_actor_with_its_preset_warm(on_ray: DaemonProcess) -> None:
    check_warm_worker_preferred(on_ray.endpoint)


def test_shutdown_ends_the_actors_and_leaves_the_cluster_running(on_ray: DaemonProcess) -> None:
    """Last of the shared daemon: it stops it. The cluster is the test's: it keeps running."""
    check_shutdown_ends_the_workers(on_ray, process_alive)
    deadline = time.monotonic() + 30
    while _underpaint_actors() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _underpaint_actors() == [], "the daemon's actors are gone"
    assert ray.get(ray.remote(lambda: 42).remote(), timeout=60) == 42, "the test's cluster still works"


def _is_ray_service(process: psutil.Process) -> bool:
    try:
        text = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return "gcs_server" in text or "raylet" in text


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
