"""Start `underpaint serve` as a child process on a free loopback port and wait until it listens.

Used by `underpaint demo`, the benchmarks and the tests: they all talk to a real daemon process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DaemonProcess:
    endpoint: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


def _die_with_parent() -> None:
    """Linux: the daemon gets SIGTERM if the process that started it dies without cleaning up."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextmanager
def running_daemon(
    *args: str,
    preset: str = "tiny",
    timeout: float = 600.0,
    env: dict[str, str] | None = None,
    endpoint: str = "tcp://127.0.0.1:0",
    keys: Path | None = None,
) -> Iterator[DaemonProcess]:
    """Run a daemon for the duration of the `with` block; extra `args` go to `underpaint serve`.
    `endpoint` (default: a free loopback port) and `keys` (a `underpaint keygen` folder) go there too.
    Leaving the block stops it gracefully (SIGTERM), killing it only if it outlives its shutdown."""
    with tempfile.TemporaryDirectory(prefix="underpaint-daemon-") as tmp:
        ready = Path(tmp) / "endpoint"
        log_path = Path(tmp) / "daemon.log"
        cmd = [
            sys.executable,
            "-m",
            "underpaint.daemon.cli",
            "serve",
            "--preset",
            preset,
            "--endpoint",
            endpoint,
            "--ready-file",
            str(ready),
            *(["--keys", str(keys)] if keys is not None else []),
            *args,
        ]
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, preexec_fn=_die_with_parent
            )
            daemon = DaemonProcess("", proc, log_path)
            try:
                deadline = time.monotonic() + timeout
                while not ready.exists() or not ready.read_text():
                    if proc.poll() is not None:
                        raise RuntimeError(f"underpaint serve exited early:\n{daemon.log()}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"underpaint serve not ready in {timeout} s")
                    time.sleep(0.05)
                daemon.endpoint = ready.read_text().strip()
                yield daemon
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
