"""Section 6: the overhead comparison on a GPU, where one exists (float16, 512x512, 20 steps).

Nothing else runs here without CUDA: the section says so in the table instead of pretending.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import torch

from underpaint.daemon.commands.launch import running_daemon

from . import overhead
from .common import Report, client_for

SECTION = "6. GPU"


def measure(report: Report, models_dir: Path, base_dir: Path | None, reps: int) -> None:
    if not torch.cuda.is_available():
        report.add(
            SECTION,
            "GPU runs",
            "skipped: torch.cuda.is_available() is False on this machine",
            note="no GPU machine was available for this run",
        )
        return
    if base_dir is None:
        report.add(SECTION, "GPU runs", "skipped: needs --fullsize (the tiny models say nothing on a GPU)")
        return
    report.add(SECTION, "device", torch.cuda.get_device_name(0))
    with ExitStack() as stack:
        daemon = stack.enter_context(
            running_daemon(
                "--build-dir", str(models_dir), "--device", "cuda", "--dtype", "float16", preset="fullsize"
            )
        )
        client = stack.enter_context(client_for(daemon.endpoint))
        direct = overhead.load_direct(base_dir, "cuda", torch.float16)
        case = overhead.Case("txt2img", 512, 20, target=1.03)
        # GPU kernels may legitimately differ between processes: identity is reported, not required
        overhead.measure(
            report, client, "fullsize", direct, case, reps, daemon.process.pid, SECTION, strict_pixels=False
        )
        del direct
        torch.cuda.empty_cache()
