"""A pool of workers behind one endpoint (issue 12), here two local CPU worker processes: sessions' jobs
run at the same time and their previews and results cross from the workers whole, the fair order
holds across workers, a job goes to a worker with its preset warm, a cancel reaches the worker running
the job, a killed worker fails (or retries) only its own job and is replaced, and shutdown ends the
worker processes. tests/test_pool_ray.py runs the same checks (the functions below) through Ray actors.

Every step of these daemons sleeps STEP_DELAY and every op waits START_DELAY before it starts (a slow
device and a slow model load), so that jobs last long enough to watch, cancel and kill on a busy
2-core machine without racing them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from underpaint.daemon.commands.launch import DaemonProcess, running_daemon
from underpaint.protocol import Client, DaemonError, JobCancelled

STEP_DELAY = 0.2
START_DELAY = 1.0
#: The daemon flags of every pool test: slow steps and starts, one torch thread per worker.
SLOW = ("--test-step-delay", str(STEP_DELAY), "--test-start-delay", str(START_DELAY), "--threads", "1")
JOB = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64}
LONG = {"prompt": "a cat", "steps": 60, "width": 64, "height": 64}


# -- the checks, shared with the Ray tests ------------------------------------------------------------
def workers_ready(endpoint: str, count: int, timeout: float = 300) -> list[dict[str, Any]]:
    """The pool's workers once `count` of them are idle (a replaced one takes a while to start)."""
    deadline = time.monotonic() + timeout
    with Client(endpoint, timeout=30) as client:
        while True:
            workers = client.status()["workers"]
            if sum(w["state"] == "idle" for w in workers) >= count:
                return workers
            assert time.monotonic() < deadline, f"workers not ready: {workers}"
            time.sleep(0.2)


def _timeline(client: Client, job: str, sink: dict[str, Any]) -> None:
    """Record when each event of `job` arrived (run in a thread that owns `client` meanwhile)."""
    events = []
    try:
        for event in client.events(job, timeout=300):
            events.append((time.monotonic(), event))
    except (DaemonError, JobCancelled) as exc:
        sink["error"] = exc
    sink["events"] = events


def _worker_of(client: Client, job: str, timeout: float = 60) -> dict[str, Any]:
    """The status entry of the worker running `job`, as soon as one is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in client.status()["workers"]:
            if worker["job"] == job:
                return worker
        time.sleep(0.02)
    raise AssertionError(f"no worker took job {job}")


def check_welcome_and_status(endpoint: str, pool: str) -> None:
    with Client(endpoint, timeout=30) as client:
        welcome = client.hello()
        assert (welcome["workers"], welcome["pool"]) == (2, pool)
        workers = client.status()["workers"]
    assert [w["worker"] for w in workers] == ["w1", "w2"]
    assert all(w["device"] == "cpu" and w["host"] and w["pid"] > 0 for w in workers), workers
    assert workers[0]["pid"] != workers[1]["pid"], "each worker is a process of its own"
    assert {w["pid"] for w in workers}.isdisjoint({os.getpid()})


def check_two_sessions_run_at_once(endpoint: str) -> None:
    """Two clients' jobs overlap in time, each on its own worker; their previews and results cross
    from the workers whole: the same job on two workers gives the same pixels."""
    with Client(endpoint, timeout=60) as a, Client(endpoint, timeout=60) as b:
        jobs = [c.submit("txt2img", JOB | {"seed": 1}, preview=True) for c in (a, b)]
        seen: list[dict[str, Any]] = [{}, {}]
        threads = [
            threading.Thread(target=_timeline, args=(c, j, s))
            for c, j, s in zip((a, b), jobs, seen, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    spans, workers, pixels = [], [], []
    for timeline in seen:
        assert "error" not in timeline, timeline.get("error")
        progress = [(t, e) for t, e in timeline["events"] if e["type"] == "progress"]
        total = progress[-1][1]["total"]
        assert [e["step"] for _, e in progress] == list(range(1, total + 1)), "every step, in order"
        for _, event in progress:
            shown = event["preview"]
            assert len(bytes(shown["data"])) == shown["width"] * shown["height"] * shown["channels"] > 0
        result = timeline["events"][-1][1]
        assert result["type"] == "result"
        spans.append((progress[0][0], timeline["events"][-1][0]))
        workers.append(result["worker"])
        image = result["images"][0]
        pixels.append(bytes(image["data"]))
        assert len(pixels[-1]) == 64 * 64 * 4 == image["width"] * image["height"] * image["channels"]
    overlap = min(spans[0][1], spans[1][1]) - max(spans[0][0], spans[1][0])
    shorter = min(end - start for start, end in spans)
    assert sorted(workers) == ["w1", "w2"], workers
    assert pixels[0] == pixels[1], "the same job gave other pixels on the other worker"
    assert overlap > 0.5 * shorter, f"the jobs ran one after the other: {spans}"


def check_fair_order_across_workers(endpoint: str) -> None:
    """A's six jobs fill both workers; B's two jobs, sent after them, start after at most one more of
    A's each (round-robin), not after all of A's."""
    with Client(endpoint, timeout=120) as a, Client(endpoint, timeout=120) as b:
        sent: dict[str, tuple[str, float]] = {}
        for i in range(6):
            job = a.submit("txt2img", JOB | {"seed": 10 + i})
            sent[job] = ("a", time.monotonic())
        for i in range(2):
            job = b.submit("txt2img", JOB | {"seed": 20 + i})
            sent[job] = ("b", time.monotonic())
        results = {job: (a if who == "a" else b).wait(job, timeout=300) for job, (who, _) in sent.items()}
    # When each job left the queue for a worker: its submit plus its wait there (daemon's clock).
    started = sorted(sent, key=lambda job: sent[job][1] + results[job]["timings"]["queued"])
    order = [sent[job][0] for job in started]
    assert order.index("b") <= 3, f"B's first job waited for more than one round: {order}"
    assert len(order) - 1 - order[::-1].index("b") <= 5, f"B's second job waited too long: {order}"
    assert {r["worker"] for r in results.values()} == {"w1", "w2"}


def check_cancel_reaches_its_worker(endpoint: str) -> None:
    """Cancelling A's running job stops it within one step; B's job on the other worker goes on."""
    with Client(endpoint, timeout=60) as a, Client(endpoint, timeout=60) as b:
        ja, jb = a.submit("txt2img", LONG | {"seed": 3}), b.submit("txt2img", LONG | {"seed": 4})
        for client, job in ((a, ja), (b, jb)):
            next(e for e in client.events(job, timeout=120) if e["type"] == "progress")
        wa, wb = _worker_of(a, ja)["worker"], _worker_of(b, jb)["worker"]
        assert wa != wb
        a.cancel(ja)
        after: list[dict[str, Any]] = []
        with pytest.raises(JobCancelled):
            a.wait(ja, on_progress=after.append, timeout=60)
        assert len(after) <= 1, f"the cancel took {len(after)} steps to arrive"
        before = b.status(jb)["jobs"][0]["step"]
        time.sleep(4 * STEP_DELAY)
        assert b.status(jb)["jobs"][0]["step"] > before, "B's job went on after A's was cancelled"
        workers = {w["worker"]: w for w in b.status()["workers"]}
        assert workers[wb]["job"] == jb and workers[wa]["job"] is None
        b.cancel(jb)
        with pytest.raises(JobCancelled):
            b.wait(jb, timeout=60)


def check_killed_worker_fails_only_its_job(endpoint: str, kill: Callable[[dict[str, Any]], None]) -> None:
    """A worker killed mid-job: its job ends with `worker_lost`; the other worker's job and a queued job
    finish; the pool replaces the worker, and the new one runs jobs."""
    with Client(endpoint, timeout=120) as a, Client(endpoint, timeout=120) as b:
        ja = a.submit("txt2img", LONG | {"seed": 5})
        jb = b.submit("txt2img", JOB | {"seed": 6, "steps": 8})
        jc = a.submit("txt2img", JOB | {"seed": 7})  # queued behind them
        next(e for e in a.events(ja, timeout=120) if e["type"] == "progress")
        victim = _worker_of(a, ja)
        kill(victim)
        with pytest.raises(DaemonError) as lost:
            a.wait(ja, timeout=120)
        assert lost.value.code == "worker_lost"
        assert victim["worker"] in str(lost.value) and "Traceback" not in str(lost.value)
        assert b.wait(jb, timeout=120)["seed"] == 6, "the other worker's job was not touched"
        assert a.wait(jc, timeout=120)["seed"] == 7, "a queued job was not lost"
    workers = {w["worker"]: w for w in workers_ready(endpoint, 2)}
    replaced = workers[victim["worker"]]
    assert replaced["pid"] != victim["pid"] and replaced["restarts"] == victim["restarts"] + 1
    assert replaced["warm"] == [], "a new worker starts cold"
    with Client(endpoint, timeout=120) as c:  # two at once: the new worker takes one
        jobs = [c.submit("txt2img", JOB | {"seed": s}) for s in (8, 9)]
        assert {c.wait(job, timeout=120)["worker"] for job in jobs} == {"w1", "w2"}


def check_lost_before_first_step_runs_again(endpoint: str, kill: Callable[[dict[str, Any]], None]) -> None:
    """A worker killed before its job's first step: the job runs once more and its client sees only
    that run (its steps counted once)."""
    workers_ready(endpoint, 2)
    with Client(endpoint, timeout=120) as a:
        job = a.submit("txt2img", JOB | {"seed": 11})
        victim = _worker_of(a, job)  # within the worker's START_DELAY: no step was made yet
        assert victim["state"] == "busy"
        kill(victim)
        steps: list[int] = []
        result = a.wait(job, on_progress=lambda e: steps.append(e["step"]), timeout=300)
        assert result["seed"] == 11 and steps == list(range(1, len(steps) + 1)), steps
    workers = {w["worker"]: w for w in workers_ready(endpoint, 2)}
    assert workers[victim["worker"]]["restarts"] == victim["restarts"] + 1


def check_warm_worker_preferred(endpoint: str) -> None:
    """A job goes to a free worker with its preset warm, even the one used last; among several warm
    (or none), to the least recently used."""
    workers_ready(endpoint, 2)
    ddpm = {"steps": 2, "seed": 3}
    with Client(endpoint, timeout=120) as c:
        both = [c.submit("txt2img", JOB | {"seed": s}) for s in (1, 2)]  # one on each worker
        assert {c.wait(job, timeout=120)["worker"] for job in both} == {"w1", "w2"}
        assert all("tiny" in w["warm"] for w in c.status()["workers"]), c.status()["workers"]
        cold = {w["worker"] for w in c.status()["workers"] if "tiny-ddpm" not in w["warm"]}
        first = c.run("txt2img", ddpm, model="tiny-ddpm", timeout=120)["worker"]
        assert first in cold, "it went to a worker without the preset, which loads it"
        again = c.run("txt2img", ddpm | {"seed": 4}, model="tiny-ddpm", timeout=120)["worker"]
        other = c.run("txt2img", JOB | {"seed": 5}, timeout=120)["worker"]
        warm = {w["worker"]: w["warm"] for w in c.status()["workers"]}
    assert again == first, "the ddpm job went to the worker that has ddpm warm, although used last"
    assert other != first, "the tiny job went to the least recently used of the workers with it warm"
    assert "tiny-ddpm" in warm[first] and "tiny" in warm[other], warm


def check_shutdown_ends_the_workers(daemon: DaemonProcess, alive: Callable[[dict[str, Any]], bool]) -> None:
    """SIGTERM mid-job: the running job ends with `shutting_down`, the daemon exits in time, and no
    worker outlives it."""
    with Client(daemon.endpoint, timeout=60) as client:
        job = client.submit("txt2img", LONG | {"seed": 12})
        next(e for e in client.events(job, timeout=120) if e["type"] == "progress")
        workers = client.status()["workers"]
        t0 = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        with pytest.raises(DaemonError) as ended:
            client.wait(job, timeout=30)
        assert ended.value.code == "shutting_down"
        daemon.process.wait(timeout=60)
        took = time.monotonic() - t0
    assert daemon.process.returncode == 0, daemon.log()[-3000:]
    assert took < 30, f"shutdown took {took:.1f} s"
    deadline = time.monotonic() + 15
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(w) for w in workers), f"a worker outlived the daemon: {workers}"


def kill_process(worker: dict[str, Any]) -> None:
    os.kill(worker["pid"], signal.SIGKILL)


def process_alive(worker: dict[str, Any]) -> bool:
    try:
        os.kill(worker["pid"], 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        return Path(f"/proc/{worker['pid']}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


# -- the local pool --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local(underpaint_home) -> Iterator[DaemonProcess]:
    with running_daemon("--workers", "2", "--device", "cpu", *SLOW) as proc:
        workers_ready(proc.endpoint, 2)
        yield proc


def test_welcome_and_status_show_the_workers(local: DaemonProcess) -> None:
    check_welcome_and_status(local.endpoint, "local")


def test_two_sessions_jobs_run_at_the_same_time(local: DaemonProcess) -> None:
    check_two_sessions_run_at_once(local.endpoint)


def test_fair_order_holds_across_workers(local: DaemonProcess) -> None:
    check_fair_order_across_workers(local.endpoint)


def test_cancel_reaches_the_right_worker_within_one_step(local: DaemonProcess) -> None:
    check_cancel_reaches_its_worker(local.endpoint)


def test_a_killed_worker_fails_only_its_job_and_is_replaced(local: DaemonProcess) -> None:
    check_killed_worker_fails_only_its_job(local.endpoint, kill_process)
    assert "starting a new one" in local.log()


def test_a_worker_killed_before_the_first_step_runs_its_job_again(local: DaemonProcess) -> None:
    check_lost_before_first_step_runs_again(local.endpoint, kill_process)
    assert "before its first step; running it again" in local.log()


def test_a_job_goes_to_a_worker_with_its_preset_warm(local: DaemonProcess) -> None:
    check_warm_worker_preferred(local.endpoint)


def test_shutdown_ends_the_worker_processes(local: DaemonProcess) -> None:
    """Last of the module: it stops the shared daemon."""
    check_shutdown_ends_the_workers(local, process_alive)


def test_a_worker_makes_room_before_it_loads_not_after(underpaint_home) -> None:
    """A worker's budget holds while it loads: with room for one of two presets' models, loading the
    second unloads the first *before* its weights come in (its size is read from its files)."""
    import torch

    from underpaint.daemon.config import load_config
    from underpaint.daemon.serving.models import ModelManager, weight_file_bytes

    held_at_load: list[int] = []

    class Watched(ModelManager):
        def _load(self, preset: Any, role: str) -> Any:
            held_at_load.append(self.used_bytes())
            return super()._load(preset, role)

    models = Watched(load_config(), torch.device("cpu"), torch.float32)
    sd15, ddpm = models.preset("tiny"), models.preset("tiny-ddpm")
    first = models.component(sd15, "base") and models.used_bytes()
    second = weight_file_bytes(Path(models._source(ddpm, "base")))
    assert first > 0 and second > 0
    models.budget_bytes = first + second - 1  # either fits, both do not
    models.component(ddpm, "base")
    assert held_at_load == [0, 0], "the first preset was unloaded before the second one loaded"
    assert models.warm() == {"tiny-ddpm": ["base"]} and models.used_bytes() <= models.budget_bytes
    models.budget_bytes = first + models.used_bytes() - 1  # the sizes as loaded
    models.component(sd15, "base")  # its size is known now: room is made for it first as well
    assert held_at_load == [0, 0, 0] and models.warm() == {"tiny": ["base"]}


def test_serve_refuses_flags_that_cannot_go_together(underpaint_home) -> None:
    import subprocess
    import sys

    cases = (
        (["--ray", "auto", "--devices", "cpu,cpu"], "--devices places local workers"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--devices", "cpu", "--workers", "2"], "either --devices"),
        (["--devices", "nonsense:7"], "nonsense"),
    )
    # Without Ray installed (an import of it fails), the daemon imports and only `--ray` says what to
    # install.
    no_ray = (
        "import sys; sys.modules['ray'] = None\n"
        "import underpaint.daemon.serving.server, underpaint.daemon.serving.pool.local\n"
        "from underpaint.daemon.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    cases += ((["--ray", "auto", "--endpoint", "tcp://127.0.0.1:0"], "pip install 'underpaint[ray]'"),)
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", no_ray, "serve", "--preset", "tiny", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flags, _ in cases
    ]
    for (flags, says), run in zip(cases, runs, strict=True):
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 2 and says in stderr, (flags, stderr[-2000:])
