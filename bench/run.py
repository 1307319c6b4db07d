"""Which sections run against which daemon, in which order (a fresh daemon's first job must be the
cold one, so section 3 goes first)."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from underpaint.daemon.commands.launch import running_daemon

from . import cancel, clients, families, krita_poll, live, overhead, pool, prompts, reword, transfer, warm
from .common import PROMPT, SEED, Report, client_for, secs, timed
from .echo import running_echo

if TYPE_CHECKING:
    from .__main__ import Plan

OVERHEAD_TARGET = 1.03


def _start(stack: ExitStack, preset: str, models_dir: Path, env: dict[str, str]) -> tuple[object, float]:
    t0 = time.perf_counter()
    daemon = stack.enter_context(running_daemon("--build-dir", str(models_dir), preset=preset, env=env))
    return daemon, time.perf_counter() - t0


def _t2i(size: int, steps: int) -> dict[str, object]:
    return {"prompt": PROMPT, "steps": steps, "seed": SEED, "width": size, "height": size}


def tiny(report: Report, plan: Plan, sections: set[int], models_dir: Path, env: dict[str, str]) -> None:
    """Every section on the tiny preset: fixed costs are largest relative to the model here."""
    if not sections & {1, 2, 3, 4, 5}:
        return
    from underpaint.daemon.builders.tiny import ensure_tiny

    base_dir = ensure_tiny(models_dir, "sd15") / "base"
    size, steps = plan.tiny_size, plan.tiny_steps
    with ExitStack() as stack:
        daemon, start_s = _start(stack, "tiny", models_dir, env)
        client = stack.enter_context(client_for(daemon.endpoint))
        if 3 in sections:
            warm.cold_then_warm(report, client, "tiny", _t2i(size, steps), start_s)
            # 128 px at most: tiny weights are a few MB; bigger activations would only add allocator noise
            chain = warm.chain_for("tiny", min(size, 128), steps, own_inpaint=True, instruct=True)
            warm.op_switches(report, client, daemon.process.pid, "tiny", chain)
        if 1 in sections:
            direct = overhead.load_direct(base_dir)
            for case in (overhead.Case("txt2img", size, steps), overhead.Case("sdedit", size, steps, 0.75)):
                overhead.measure(report, client, "tiny", direct, case, plan.reps, daemon.process.pid)
            del direct
        if 4 in sections:
            cancel.cancel_latency(report, client, "tiny", _t2i(size, 30))
            cancel.preview_cost(report, client, "tiny", _t2i(size, 4 if plan.quick else 20), plan.reps)
        if 2 in sections:
            echo = stack.enter_context(running_echo())
            transfer.measure(report, client, echo, "tiny", plan.transfer_reps)
        if 5 in sections:
            clients.many_clients(
                report, daemon.endpoint, "tiny", _t2i(plan.client_size, plan.client_steps), plan.client_reps
            )
        report.check("tiny daemon survived every section", daemon.alive())


def families_side_by_side(
    report: Report, plan: Plan, sections: set[int], models_dir: Path, env: dict[str, str]
) -> None:
    """Section 7 on a fresh daemon of its own, so every preset's first job is its first use."""
    if 7 not in sections:
        return
    from underpaint.daemon.config import load_config

    tiny_presets = [p for p in load_config().presets.values() if p.builtin == "tiny"]
    families.prebuild(models_dir, {p.family for p in tiny_presets})
    with ExitStack() as stack:
        daemon, _ = _start(stack, "tiny", models_dir, env)
        client = stack.enter_context(client_for(daemon.endpoint))
        size = 64 if plan.quick else 128
        families.measure(report, client, plan.reps, size, plan.tiny_steps)
        report.check("families daemon survived", daemon.alive())


def prompts_weighted_vs_plain(
    report: Report, plan: Plan, sections: set[int], models_dir: Path, env: dict[str, str]
) -> None:
    """Section 8 on a daemon of its own; its hard checks run first and warm both presets."""
    if 8 not in sections:
        return
    with ExitStack() as stack:
        daemon, _ = _start(stack, "tiny", models_dir, env)
        client = stack.enter_context(client_for(daemon.endpoint))
        size = 64 if plan.quick else 128
        prompts.measure(report, client, models_dir, plan.reps, size, plan.tiny_steps)
        report.check("prompts daemon survived", daemon.alive())


def reword_vs_plain(
    report: Report,
    plan: Plan,
    sections: set[int],
    models_dir: Path,
    env: dict[str, str],
    fullsize: bool = False,
) -> None:
    """Section 9 on a daemon of its own, whose allocator gives freed memory back (see bench/reword.py):
    the tiny sd15 and sdxl presets, or with `fullsize` the full SD 1.5 architecture."""
    if 9 not in sections:
        return
    preset = "fullsize" if fullsize else "tiny"
    with ExitStack() as stack:
        daemon, _ = _start(stack, preset, models_dir, {**env, **reword.ALLOCATOR_ENV})
        client = stack.enter_context(client_for(daemon.endpoint))
        pid = daemon.process.pid
        if fullsize:
            reword.measure(report, client, pid, ["fullsize"], plan.full_reps, plan.full_size, plan.full_steps)
        else:
            size = 64 if plan.quick else 256
            reword.measure(report, client, pid, ["tiny", "tiny-sdxl"], plan.reps, size, plan.tiny_steps)
        report.check(f"reword daemon survived ({preset})", daemon.alive())


def workers(report: Report, plan: Plan, sections: set[int], models_dir: Path, env: dict[str, str]) -> None:
    """Section 10 on daemons of its own: one worker thread, one and two worker processes, and (not with
    --quick) one and two Ray actors on a local cluster it starts."""
    if 10 not in sections:
        return
    pool.measure(report, plan.quick, plan.reps, models_dir, env)


def live_painting(
    report: Report, plan: Plan, sections: set[int], models_dir: Path, env: dict[str, str]
) -> None:
    """Section 11 on a tiny daemon of its own: a scripted painter in one "latest wins" lane."""
    if 11 not in sections:
        return
    from underpaint.daemon.builders.tiny import ensure_tiny

    ensure_tiny(models_dir, "sd15")
    with ExitStack() as stack:
        daemon, _ = _start(stack, "tiny", models_dir, env)
        client = stack.enter_context(client_for(daemon.endpoint))
        live.measure(report, client, plan.quick)
        report.check("live daemon survived", daemon.alive())


def krita_polling(report: Report, plan: Plan, sections: set[int]) -> None:
    """Section 12, opt-in: Live's polling inside a real Krita (no daemon needed)."""
    if 12 in sections:
        krita_poll.measure(report, plan.quick)


def fullsize(report: Report, plan: Plan, sections: set[int], models_dir: Path, env: dict[str, str]) -> Path:
    """The sections whose ratios depend on real model cost, on the full SD 1.5 architecture."""
    from underpaint.daemon.builders.fullsize import ensure_fullsize_models

    with timed() as t:
        root = ensure_fullsize_models(models_dir, progress=lambda msg: print(f"fullsize: {msg}", flush=True))
    report.add(
        "3. Warm model",
        "fullsize: models ready on disk (built once, then reused)",
        secs(t[0]),
        note="float16 safetensors, computed in float32 on the CPU",
    )
    base_dir = root / "base"
    size, steps = plan.full_size, plan.full_steps
    with ExitStack() as stack:
        daemon, start_s = _start(stack, "fullsize", models_dir, env)
        client = stack.enter_context(client_for(daemon.endpoint))
        if 3 in sections:
            warm.cold_then_warm(report, client, "fullsize", _t2i(size, steps), start_s)
            chain = warm.chain_for("fullsize", size, steps, own_inpaint=False, instruct=False)
            warm.op_switches(report, client, daemon.process.pid, "fullsize", chain)
        if 1 in sections:
            direct = overhead.load_direct(base_dir)
            cases = (
                overhead.Case("txt2img", size, steps, target=OVERHEAD_TARGET),
                overhead.Case("sdedit", size, 2 * steps, 0.5, target=OVERHEAD_TARGET),
            )
            for case in cases:
                overhead.measure(report, client, "fullsize", direct, case, plan.full_reps, daemon.process.pid)
            del direct
        if 4 in sections:
            cancel.cancel_latency(report, client, "fullsize", _t2i(size, 20))
            cancel.preview_cost(report, client, "fullsize", _t2i(size, steps), max(1, plan.full_reps - 1))
        report.check("fullsize daemon survived every section", daemon.alive())
    return base_dir
