"""Section 10: workers (issue 12). One endpoint, several workers: what a second worker buys on this
machine, what Ray costs per job against the local pool, what one worker costs as a process rather
than a thread, and how many messages the front end can route (where a pool of many GPUs would hit
the front end's own limit).

- **Throughput, 1 vs 2 workers**: the same batch of tiny jobs from two clients at once, on a daemon
  with one worker and on one with two (each worker pinned to one torch thread), both alive, measured
  alternately; for the local pool (child processes) and the Ray pool (actors on a local cluster of
  this bench's own). Reported as ratios (2.0 = perfect on two cores).
- **Ray's per-job overhead**: one small job at a time on a one-worker Ray daemon and on a one-worker
  local daemon, interleaved; the difference of the medians.
- **One worker, thread or process**: start-up time and resident memory (daemon plus its workers) of
  the default daemon (a worker thread) against `--workers 1` (a worker process), and their per-job time.
- **The front end's limit**: many clients' jobs with many steps and previews on the two-worker local
  daemon; the daemon process's own CPU time (its workers are other processes) per message it routed,
  and so the messages per second one core of front end can route.

`--quick` (the suite's smoke run) measures the front end only, on one two-worker daemon.
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

from underpaint.daemon.commands.launch import DaemonProcess, running_daemon

from .common import SEED, Report, client_for, median, ms, progress, rotated, secs

SECTION = "10. Workers"
PRESET = "tiny"


def _job(size: int, steps: int, seed: int) -> dict[str, Any]:
    return {"prompt": "a lighthouse at dusk", "steps": steps, "width": size, "height": size, "seed": seed}


def _start(
    stack: ExitStack, args: list[str], models_dir: Path, env: dict[str, str]
) -> tuple[DaemonProcess, float]:
    t0 = time.perf_counter()
    daemon = stack.enter_context(
        running_daemon("--build-dir", str(models_dir), "--threads", "1", *args, preset=PRESET, env=env)
    )
    return daemon, time.perf_counter() - t0


def _batch(endpoint: str, jobs: int, size: int, steps: int, clients: int = 2, preview: bool = False) -> dict:
    """`jobs` jobs from `clients` clients at once (each its own socket and thread); returns the wall
    time, the messages the clients received, and whether every result came back with its own seed."""
    per = jobs // clients
    start = threading.Barrier(clients + 1)
    out: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def one(who: int) -> None:
        try:
            client = client_for(endpoint)
        except Exception as exc:
            errors.append(exc)
            start.abort()
            return
        try:
            start.wait()
            seeds = [SEED + who * per + i for i in range(per)]
            ids = [
                client.submit("txt2img", _job(size, steps, s), model=PRESET, preview=preview) for s in seeds
            ]
            received = len(ids)  # `accepted`
            ok = True
            for job, seed in zip(ids, seeds, strict=True):
                for event in client.events(job, timeout=3600):
                    received += 1
                    if event["type"] == "result":
                        ok = ok and event["seed"] == seed
                    elif event["type"] in ("error", "cancelled"):
                        ok = False
            out.append({"received": received, "sent": len(ids), "ok": ok})
        except Exception as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        start.wait(600)
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {
        "wall": wall,
        "received": sum(o["received"] for o in out),
        "sent": sum(o["sent"] for o in out),
        "ok": len(out) == clients and all(o["ok"] for o in out),
    }


def _warm(endpoint: str, workers: int, size: int, steps: int) -> None:
    """Every worker loads the preset before the clock runs (jobs at once: each worker takes one)."""
    _batch(endpoint, workers, size, steps, clients=workers)


def _throughput(
    report: Report, label: str, one: str, two: str, jobs: int, size: int, steps: int, reps: int
) -> None:
    _warm(one, 1, size, steps)
    _warm(two, 2, size, steps)
    bar = progress(f"{label}: 1 vs 2 workers", 2 * reps)
    runs = rotated(
        [lambda: _batch(one, jobs, size, steps), lambda: _batch(two, jobs, size, steps)], reps, bar
    )
    bar.close()
    singles, doubles = runs
    report.check(
        f"workers ({label}): every job came back with its own seed", all(r["ok"] for r in singles + doubles)
    )
    ratio = median([s["wall"] / d["wall"] for s, d in zip(singles, doubles, strict=True)])
    per_s = (jobs / median([d["wall"] for d in doubles]), jobs / median([s["wall"] for s in singles]))
    report.add(
        SECTION,
        f"{label}: throughput, 2 workers vs 1 ({jobs} jobs txt2img {size}px {steps} steps, 2 clients)",
        f"{ratio:.2f}x ({per_s[0]:.2f} vs {per_s[1]:.2f} jobs/s)",
        note=f"1 torch thread per worker on a {psutil.cpu_count()}-core machine; median of {reps}",
    )
    report.data.setdefault("workers", {})[label] = {
        "single_s": [s["wall"] for s in singles],
        "double_s": [d["wall"] for d in doubles],
        "ratio": ratio,
    }


def _latency(endpoint: str, size: int, steps: int, seed: int) -> float:
    client = client_for(endpoint)
    try:
        t0 = time.perf_counter()
        client.run("txt2img", _job(size, steps, seed), model=PRESET, timeout=600)
        return time.perf_counter() - t0
    finally:
        client.close()


def _per_job(
    report: Report, what: str, a: tuple[str, str], b: tuple[str, str], reps: int
) -> dict[str, float]:
    """Median client-side time of one small job on daemon `a` and on daemon `b`, interleaved."""
    size, steps = 64, 2
    for _, endpoint in (a, b):
        _latency(endpoint, size, steps, SEED)
    bar = progress(what, 2 * reps)
    times = rotated(
        [lambda: _latency(a[1], size, steps, SEED), lambda: _latency(b[1], size, steps, SEED)], reps, bar
    )
    bar.close()
    ta, tb = median(times[0]), median(times[1])
    report.add(
        SECTION,
        f"{what}: one job ({size}px, {steps} steps), client's time",
        f"{ms(ta)} ({a[0]}) vs {ms(tb)} ({b[0]}): {ms(ta - tb)} per job",
        note=f"median of {reps}, interleaved",
    )
    return {a[0]: ta, b[0]: tb}


def _tree_rss(pid: int) -> int:
    """Resident memory of a daemon and every process under it (its worker processes)."""
    root = psutil.Process(pid)
    total = root.memory_info().rss
    for child in root.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def _front_end_limit(report: Report, endpoint: str, pid: int, jobs: int, steps: int) -> None:
    """The daemon process's own CPU time per message while its workers (other processes) work."""
    _warm(endpoint, 2, 64, 2)
    daemon = psutil.Process(pid)
    cpu0 = sum(daemon.cpu_times()[:2])
    run = _batch(endpoint, jobs, 64, steps, clients=4, preview=True)
    cpu = sum(daemon.cpu_times()[:2]) - cpu0
    messages = run["received"] + run["sent"]
    report.check("workers: front-end run lost no job", run["ok"])
    per_message = cpu / messages
    report.add(
        SECTION,
        f"front end: CPU per routed message ({jobs} jobs x {steps} steps, previews, 4 clients, 2 workers)",
        f"{per_message * 1e6:.0f} us ({messages} messages, {secs(cpu)} CPU in {secs(run['wall'])})",
        note=f"{messages / run['wall']:.0f} messages/s were routed; the front end's own CPU only "
        "(its workers are other processes)",
    )
    report.add(
        SECTION,
        "front end: messages per second one core can route",
        f"{1 / per_message:,.0f}",
        note="submits (validated and decoded), accepted, progress with preview, results; see docs/STUDIO.md "
        "for what that means in GPUs",
    )
    report.data.setdefault("workers", {})["front_end"] = {
        "messages": messages,
        "cpu_s": cpu,
        "wall_s": run["wall"],
        "per_message_s": per_message,
    }


def measure(report: Report, quick: bool, reps: int, models_dir: Path, env: dict[str, str]) -> None:
    """The whole section. `quick` (the suite's smoke run): the front end's row only, on one
    two-worker daemon; otherwise 1 vs 2 workers, one worker as thread vs process (daemons started
    one after the other, for their start-up times) and the Ray rows."""
    size, steps, jobs, reps = 128, 8, 16, max(3, reps)
    with ExitStack() as stack:
        if quick:  # one daemon: the suite's smoke run must stay short on 2 cores
            (two,) = _start_all(stack, [["--workers", "2"]], models_dir, env)
            _front_end_limit(report, two.endpoint, two.process.pid, 8, 30)
            report.check("workers: every local daemon survived", two.alive())
            report.add(
                SECTION, "1 vs 2 workers; one worker as thread vs process; Ray pool", "not run with --quick"
            )
            return
        thread, thread_start = _start(stack, [], models_dir, env)
        one, one_start = _start(stack, ["--workers", "1"], models_dir, env)
        (two,) = _start_all(stack, [["--workers", "2"]], models_dir, env)
        _throughput(report, "local pool", one.endpoint, two.endpoint, jobs, size, steps, reps)
        _front_end_limit(report, two.endpoint, two.process.pid, 24, 100)
        report.check("workers: every local daemon survived", one.alive() and two.alive())
        per_job = _per_job(
            report,
            "one worker, process vs thread",
            ("process", one.endpoint),
            ("thread", thread.endpoint),
            reps * 4,
        )
        rss = {"thread": _tree_rss(thread.process.pid), "process": _tree_rss(one.process.pid)}
        report.add(
            SECTION,
            "one worker, thread vs process: start-up (until ready) / resident memory of all its processes",
            f"{secs(thread_start)} / {rss['thread'] / 2**20:.0f} MiB (thread) vs "
            f"{secs(one_start)} / {rss['process'] / 2**20:.0f} MiB (process)",
            note="memory after its jobs; why the default single worker is a thread (docs/STUDIO.md)",
        )
        report.data.setdefault("workers", {})["one_worker"] = {
            "start_s": {"thread": thread_start, "process": one_start},
            "rss": rss,
            "per_job_s": per_job,
        }
        report.check("workers: the thread daemon survived", thread.alive())
        _ray(report, stack, models_dir, env, (one, jobs, size, steps, reps))


def _start_all(
    stack: ExitStack, variants: list[list[str]], models_dir: Path, env: dict[str, str]
) -> list[DaemonProcess]:
    """Start several daemons side by side (each waits for its workers to import torch). Each is
    held by a thread that lives until `stack` closes: a daemon is told to die with the thread that
    started it."""
    done = threading.Event()
    started: list[Any] = [None] * len(variants)
    ready = [threading.Event() for _ in variants]

    def hold(i: int) -> None:
        try:
            with running_daemon(
                "--build-dir", str(models_dir), "--threads", "1", *variants[i], preset=PRESET, env=env
            ) as daemon:
                started[i] = daemon
                ready[i].set()
                done.wait()
        except Exception as exc:  # raised below, in the caller's thread
            started[i] = exc
            ready[i].set()

    threads = [threading.Thread(target=hold, args=(i,), daemon=True) for i in range(len(variants))]
    for t in threads:
        t.start()

    def stop() -> None:
        done.set()
        for t in threads:
            t.join(120)

    stack.callback(stop)
    for event in ready:
        event.wait()
    for daemon in started:
        if isinstance(daemon, Exception):
            raise daemon
    return started


def _ray(report: Report, stack: ExitStack, models_dir: Path, env: dict[str, str], local: tuple) -> None:
    """The Ray rows, on a local cluster this bench starts (3 logical CPUs: actors of a 1-worker and of
    a 2-worker daemon; only two of them work at any time)."""
    import ray

    one_local, jobs, size, steps, reps = local
    ray.init(address="local", num_cpus=3, include_dashboard=False, logging_level="WARNING")
    stack.callback(ray.shutdown)
    address = ray.get_runtime_context().gcs_address
    one, two = _start_all(
        stack, [["--ray", address, "--workers", "1"], ["--ray", address, "--workers", "2"]], models_dir, env
    )
    _throughput(report, "Ray pool", one.endpoint, two.endpoint, jobs, size, steps, reps)
    per_job = _per_job(
        report, "Ray vs local pool", ("Ray", one.endpoint), ("local", one_local.endpoint), reps * 4
    )
    report.data["workers"]["ray_overhead_s"] = per_job["Ray"] - per_job["local"]
    report.check("workers: every Ray daemon survived", one.alive() and two.alive())
