"""What every benchmark section shares: result rows, hard checks, timing statistics, inputs, RSS."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from underpaint.daemon.commands.pictures import decode_result_image
from underpaint.protocol import Client

REPO = Path(__file__).resolve().parents[1]
PICTURE = REPO / "daemon" / "assets" / "chelsea.png"
PROMPT = "a red fox in a snowy forest, oil painting"
SEED = 1234


@dataclass
class Row:
    """One line of the results table; `met` is None where the line has no target."""

    section: str
    metric: str
    value: str
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Report:
    """Rows for the table, hard correctness checks (they fail the run) and raw numbers for --json."""

    rows: list[Row] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def add(
        self, section: str, metric: str, value: str, target: str = "", met: bool | None = None, note: str = ""
    ) -> None:
        self.rows.append(Row(section, metric, value, target, met, note))
        tqdm.write(f"  {section} | {metric}: {value}" + (f" (target {target})" if target else ""))

    def check(self, name: str, ok: bool) -> bool:
        """Record a hard check; a name seen twice must pass both times."""
        self.checks[name] = self.checks.get(name, True) and bool(ok)
        return bool(ok)

    def to_json(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows], "checks": self.checks, "data": self.data}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:.0f} MiB"


@contextmanager
def timed() -> Iterator[list[float]]:
    """`with timed() as t:` ... `t[0]` is the elapsed wall time in seconds."""
    box: list[float] = []
    t0 = time.perf_counter()
    yield box
    box.append(time.perf_counter() - t0)


def interleaved(
    a: Callable[[], Any], b: Callable[[], Any], reps: int, bar: tqdm | None = None
) -> tuple[list[Any], list[Any]]:
    """Run a and b `reps` times each, alternating which goes first (ABBA...) so drift cancels out."""
    out_a, out_b = rotated([a, b], reps, bar)
    return out_a, out_b


def rotated(fns: list[Callable[[], Any]], reps: int, bar: tqdm | None = None) -> list[list[Any]]:
    """Run every fn `reps` times, rotating the order each round so none always goes first."""
    out: list[list[Any]] = [[] for _ in fns]
    for i in range(reps):
        for k in range(len(fns)):
            j = (k + i) % len(fns) if i % 2 == 0 else (len(fns) - 1 - k + i) % len(fns)
            out[j].append(fns[j]())
            if bar is not None:
                bar.update()
    return out


def progress(desc: str, total: int) -> tqdm:
    return tqdm(total=total, desc=desc, unit="run", leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------- daemon helpers


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS), the number a user sees in a task manager."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def result_rgb(result: dict[str, Any], index: int = 0) -> np.ndarray:
    """The RGB pixels of a result image, decoded the way a client does."""
    return np.asarray(decode_result_image(result["images"][index]))[..., :3]


def client_for(endpoint: str, timeout: float = 3600.0) -> Client:
    client = Client(endpoint, timeout=timeout)
    client.hello("underpaint-bench")
    return client


# --------------------------------------------------------------------------- inputs


def photo(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """The bundled photo scaled to `size`: photo-like content, so PNG sizes and costs are realistic."""
    return Image.open(PICTURE).convert(mode).resize(size, Image.LANCZOS)


def ellipse_mask(size: tuple[int, int]) -> Image.Image:
    w, h = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=255)
    return mask


# --------------------------------------------------------------------------- machine


def machine_info(threads: int) -> dict[str, str]:
    """What the numbers were measured on (they mean nothing without it)."""
    import diffusers
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem = next(
        (line.split()[1] for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), "0"
    )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": f"{cpu}, {os.cpu_count()} logical cores",
        "memory": f"{int(mem) / 2**20:.0f} GiB",
        "gpu": gpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": f"{torch.__version__} ({threads} intra-op thread{'s' * (threads != 1)} in both processes)",
        "diffusers": diffusers.__version__,
        "commit": _git_commit(),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty else "")
