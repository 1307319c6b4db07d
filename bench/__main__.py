"""`python -m bench`: run the benchmarks of GitHub issue #5 and print a markdown table.

Sections: 1 daemon overhead, 2 transfer, 3 warm model and op switches, 4 cancel and previews,
5 many clients, 6 GPU (only where torch.cuda.is_available()), 7 model families side by side,
8 prompts (a weighted, long prompt against a plain one), 9 reword (Prompt-to-Prompt against the plain job),
10 workers (1 vs 2 workers, local and Ray; Ray's per-job cost; the front end's message rate),
11 live (a scripted painter in one "latest wins" lane: last change to its result, jobs superseded),
12 Krita live polling (opt-in, needs Krita: what Live's per-tick canvas check costs on a big canvas).
Exit status 1 when a hard check fails (pixels differ, a job is lost, a cancelled job delivers a
result); missed targets are reported, not fatal, because timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: everything is built locally


@dataclass(frozen=True)
class Plan:
    """Sizes and repetitions: --quick is the test suite's smoke run, the default is the real one."""

    quick: bool
    reps: int  # interleaved pairs for the tiny comparisons
    full_reps: int  # and for the full-size ones (each job there takes tens of seconds on a CPU)
    transfer_reps: int
    client_reps: int
    tiny_size: int
    tiny_steps: int
    client_size: int
    client_steps: int
    full_size: int = 256
    full_steps: int = 4

    @classmethod
    def make(cls, quick: bool, reps: int | None) -> Plan:
        if quick:
            return cls(True, reps or 1, reps or 1, 2, 1, 64, 2, 64, 1)
        return cls(False, reps or 5, reps or 3, 20, 2, 512, 8, 256, 8)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Underpaint benchmarks (issue #5): the daemon against the same work done in-process "
        "or on a bare socket, measured side by side in one run and reported as ratios with their targets. "
        "Prints a markdown table. Runs offline: models are built locally with random weights.",
        epilog="Sections: 1 daemon overhead, 2 transfer, 3 warm model and op switches, 4 cancel and "
        "previews, 5 many clients, 6 GPU (only where torch.cuda.is_available()), 7 model families side "
        "by side (first-use load, warm job; on the GPU where there is one), 8 prompts (a weighted prompt "
        "filling 3 CLIP windows against a plain one, tiny sd15 and sdxl), 9 reword (a Prompt-to-Prompt edit "
        "against the plain txt2img it edits: time and peak memory; with --fullsize on the full SD 1.5 "
        "architecture too), 10 workers (throughput with 1 vs 2 workers for the local and the Ray pool, "
        "Ray's per-job cost against the local pool, one worker as a thread or a process, and the messages "
        "per second the front end can route; --quick: the front end only), 11 live (a scripted painter sends "
        "canvas changes faster than a job takes in one lane: last change to its result against one job plus "
        "one step, jobs started vs superseded, final picture equal to a single job). "
        "Exit status 1 when a hard check fails (pixels differ, a job is lost, ...); missed timing targets "
        "are only reported. See docs/BENCHMARKS.md.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny preset only, small sizes, few repetitions: the test suite's smoke run",
    )
    p.add_argument(
        "--fullsize",
        action="store_true",
        help="also measure the full-size SD 1.5 architecture (preset `fullsize`; builds ~2.8 GB of "
        "random float16 weights once, ~35 s, then ~20 min in all on 2 CPU cores); the overhead target "
        "applies to it",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="write the markdown report here; a file with <!-- bench:begin/end --> markers "
        "(docs/BENCHMARKS.md) gets only that block replaced",
    )
    p.add_argument(
        "--block",
        help="with --out: replace the block between <!-- bench:BLOCK:begin/end --> markers instead of the "
        "main one (e.g. --sections 7 --block families keeps the families table beside the full run's)",
    )
    p.add_argument("--json", type=Path, help="write every raw number here (JSON)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads, the same for the daemon and the in-process baseline "
        "(default: torch's default, the number of cores). On a machine whose cores other work also "
        "uses, 1 is faster and far steadier: an OpenMP thread that loses its core stalls every op",
    )
    p.add_argument("--reps", type=int, help="override the number of interleaved repetitions")
    p.add_argument(
        "--build-dir",
        dest="models_dir",
        type=Path,
        help="where the tiny/fullsize models are built (default: $UNDERPAINT_HOME/models or "
        "~/.cache/underpaint/models, like the daemon's --build-dir)",
    )
    p.add_argument(
        "--sections",
        default="1,2,3,4,5,6,7,8,9,10,11",
        help="comma-separated sections to run (default: 1-11; add 12 where Krita is installed)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from underpaint.daemon.config import data_home

    from . import gpu, run
    from . import report as report_md
    from .common import Report, machine_info

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    sections = {int(s) for s in args.sections.split(",") if s.strip()}
    plan = Plan.make(args.quick, args.reps)
    models_dir = args.models_dir or data_home() / "models"
    report = Report()
    started = time.time()
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    run.tiny(report, plan, sections, models_dir, env)
    gc.collect()
    run.families_side_by_side(report, plan, sections, models_dir, env)
    gc.collect()
    run.prompts_weighted_vs_plain(report, plan, sections, models_dir, env)
    gc.collect()
    run.reword_vs_plain(report, plan, sections, models_dir, env)
    gc.collect()
    run.workers(report, plan, sections, models_dir, env)
    gc.collect()
    run.live_painting(report, plan, sections, models_dir, env)
    gc.collect()
    run.krita_polling(report, plan, sections)
    base_dir = None
    if args.fullsize and not args.quick:
        base_dir = run.fullsize(report, plan, sections, models_dir, env)
        gc.collect()
        run.reword_vs_plain(report, plan, sections, models_dir, env, fullsize=True)
        gc.collect()
    if 6 in sections:
        gpu.measure(report, models_dir, base_dir, plan.full_reps)
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    when = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started))
    text = report_md.markdown(report, machine_info(threads), command.strip(), when, time.time() - started)
    print(text)
    if args.out:
        report_md.write(args.out, text, args.block)
    if args.json:
        args.json.write_text(json.dumps(report.to_json() | {"command": command}, indent=1, default=str))
    failed = [name for name, ok in report.checks.items() if not ok]
    for name in failed:
        print(f"FAILED: {name}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
