"""Section 5: many clients at once. 8 clients x 4 jobs vs the same 32 jobs from one client.

Every client connects and says hello before the clock starts, then submits its jobs at once and waits
for them, each from its own thread (a Client is one socket, used by one thread). Throughput must not
drop, no job may be lost or delivered to the wrong client (every job has its own seed, and the result
must carry it), and the fair queue must serve every client early, not one after the other.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from .common import SEED, Report, client_for, interleaved, median, progress, secs

SECTION = "5. Many clients"
THROUGHPUT_TARGET = 0.95


@dataclass
class Done:
    client: int
    seed: int
    submitted: float  # seconds since the start barrier, when this client's first job was accepted
    finished: float  # seconds since the start barrier
    queued: float
    ok: bool


def _jobs_of(
    endpoint: str,
    who: int,
    seeds: list[int],
    params: dict[str, Any],
    preset: str,
    start: threading.Barrier,
    t0: list[float],
    sink: list[Done],
) -> None:
    client = client_for(endpoint)
    try:
        start.wait()
        jobs = [client.submit("txt2img", params | {"seed": s}, model=preset) for s in seeds[:1]]
        submitted = time.perf_counter() - t0[0]
        jobs += [client.submit("txt2img", params | {"seed": s}, model=preset) for s in seeds[1:]]
        for job, seed in zip(jobs, seeds, strict=True):
            result = client.wait(job, timeout=3600)
            ok = result["seed"] == seed and result["params"]["seed"] == seed and result["job"] == job
            finished = time.perf_counter() - t0[0]
            sink.append(Done(who, seed, submitted, finished, result["timings"]["queued"], ok))
    finally:
        client.close()


def _batch(
    endpoint: str, preset: str, params: dict[str, Any], n_clients: int, per_client: int
) -> tuple[float, list[Done]]:
    """All jobs submitted at once by `n_clients` threads; returns (wall time, finished jobs)."""
    done: list[Done] = []
    t0 = [0.0]
    start = threading.Barrier(n_clients + 1)
    threads = [
        threading.Thread(
            target=_jobs_of,
            args=(
                endpoint,
                i,
                [SEED + i * per_client + j for j in range(per_client)],
                params,
                preset,
                start,
                t0,
                done,
            ),
        )
        for i in range(n_clients)
    ]
    for t in threads:
        t.start()
    t0[0] = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0[0]
    return wall, done


def many_clients(
    report: Report,
    endpoint: str,
    preset: str,
    params: dict[str, Any],
    reps: int,
    n_clients: int = 8,
    per_client: int = 4,
) -> None:
    total = n_clients * per_client
    bar = progress(f"{n_clients} clients x {per_client} jobs", 2 * reps)
    single, multi = interleaved(
        lambda: _batch(endpoint, preset, params, 1, total),
        lambda: _batch(endpoint, preset, params, n_clients, per_client),
        reps,
        bar,
    )
    bar.close()
    lost = sum(total - len(done) for _, done in single + multi)
    wrong = sum(not d.ok for _, done in single + multi for d in done)
    report.check("many clients: no job lost", lost == 0)
    report.check("many clients: every result carries its own job's seed", wrong == 0)
    ratio = median([s[0] / m[0] for s, m in zip(single, multi, strict=True)])
    size = f"txt2img {params['width']}x{params['height']}, {params['steps']} steps"
    report.add(
        SECTION,
        f"{n_clients} clients x {per_client} jobs vs 1 client x {total} ({preset} {size})",
        f"{ratio:.3f}x throughput ({secs(median([m[0] for m in multi]))} vs "
        f"{secs(median([s[0] for s in single]))})",
        f">= {THROUGHPUT_TARGET}",
        ratio >= THROUGHPUT_TARGET,
        f"median of {reps}",
    )
    report.add(
        SECTION,
        "jobs lost or misdelivered",
        f"{lost} lost, {wrong} misdelivered of {total * 2 * reps}",
        "0",
        lost == 0 and wrong == 0,
    )
    wall, done = multi[-1]
    job_time = wall / total
    # Round-robin: a client's first job runs within one round (n_clients jobs) of its arrival, plus the
    # job running when it arrived. A FIFO queue would make the last client wait ~ (total - per_client).
    waits = {
        c: min(d.finished for d in done if d.client == c) - min(d.submitted for d in done if d.client == c)
        for c in range(n_clients)
    }
    worst = max(waits.values()) / job_time
    lasts = [max(d.finished for d in done if d.client == c) for c in range(n_clients)]
    queued = sorted(d.queued for d in done)
    report.add(
        SECTION,
        "fairness: slowest first result after arrival, in job-times",
        f"{worst:.1f}",
        f"<= {n_clients + 1} (round-robin)",
        worst <= n_clients + 1,
        f"a FIFO queue would give ~{total - per_client}; one job-time = {secs(job_time)}",
    )
    report.add(
        SECTION,
        "fairness: waiting time (timings.queued) min / median / max",
        f"{secs(queued[0])} / {secs(median(queued))} / {secs(queued[-1])}",
        note=f"clients' last results lie within {(max(lasts) - min(lasts)) / wall:.0%} of the wall time",
    )
    report.data["clients"] = {
        "single_s": [s[0] for s in single],
        "multi_s": [m[0] for m in multi],
        "lost": lost,
        "wrong": wrong,
        "first_result_waits": waits,
        "queued": queued,
        "lasts": lasts,
    }
