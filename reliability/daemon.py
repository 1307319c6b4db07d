"""The daemon under test, seen from outside: a process we start (or an endpoint we are given), its
RSS from /proc, its log, whether it still answers.

Only processes started here are ever signalled, by pid (the daemon and, after it, what it left behind).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.auth

TRACEBACK = "Traceback (most recent call last)"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in bytes (empty when it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (children first found, then theirs)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        for child in parents.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def curve_options(server_key: Path, client_secret: Path) -> dict[int, Any]:
    """Socket options of a CurveZMQ client (pyzmq certificate files, as `underpaint keygen` writes)."""
    server_public, _ = zmq.auth.load_certificate(str(server_key))
    public, secret = zmq.auth.load_certificate(str(client_secret))
    if secret is None:
        raise ValueError(f"{client_secret} holds no secret key")
    return {zmq.CURVE_SERVERKEY: server_public, zmq.CURVE_PUBLICKEY: public, zmq.CURVE_SECRETKEY: secret}


def probe(
    endpoint: str, ctx: zmq.Context, timeout: float, options: dict[int, Any] | None = None
) -> float | None:
    """Seconds a fresh connection waits for `welcome` and `status`; None when either does not come."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for option, value in (options or {}).items():
        sock.setsockopt(option, value)
    sock.connect(endpoint)
    try:
        start = time.monotonic()
        sock.send(msgpack.packb({"type": "hello", "id": "probe-hello", "protocol": 1, "client": "probe"}))
        sock.send(msgpack.packb({"type": "status", "id": "probe-status"}))
        wanted = {"probe-hello": "welcome", "probe-status": "status"}
        while wanted:
            left = start + timeout - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000)):
                return None
            reply = msgpack.unpackb(sock.recv_multipart()[0], raw=False, strict_map_key=False)
            if isinstance(reply, dict) and wanted.get(reply.get("re")) == reply.get("type"):
                del wanted[reply["re"]]
        return time.monotonic() - start
    except (ValueError, msgpack.UnpackException):
        return None
    finally:
        sock.close(0)


class Target:
    """A daemon endpoint; subclasses know its process."""

    endpoint: str
    pid: int | None = None
    restartable = False
    options: dict[int, Any] = {}  # socket options every client connection needs (CurveZMQ keys)

    def alive(self) -> bool:
        return self.pid is None or Path(f"/proc/{self.pid}").exists() and not _zombie(self.pid)

    def rss(self) -> tuple[int | None, int | None]:
        if self.pid is None:
            return None, None
        status = proc_status(self.pid)
        return status.get("VmRSS"), status.get("VmHWM")

    def log_since(self, offset: int) -> tuple[str, int]:
        return "", offset

    def restart(self) -> None:
        raise RuntimeError("this daemon was not started here: it cannot be restarted")

    def stop(self) -> int | None:
        return None


def _die_with_parent() -> None:
    """Linux: the daemon gets SIGTERM when the harness dies without stopping it."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class External(Target):
    """A daemon someone else runs (`--endpoint`); `--pid` lets us read its RSS."""

    def __init__(self, endpoint: str, pid: int | None = None, log: Path | None = None) -> None:
        self.endpoint = endpoint
        self.pid = pid
        self.log = log

    def log_since(self, offset: int) -> tuple[str, int]:
        if self.log is None or not self.log.exists():
            return "", offset
        with self.log.open("rb") as f:
            f.seek(offset)
            data = f.read()
        return data.decode("utf-8", errors="replace"), offset + len(data)


class Daemon(Target):
    """`underpaint serve` started here on a free loopback port, restarted after a death or a hang."""

    restartable = True

    def __init__(
        self, args: list[str], workdir: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.args = args
        self._tmp = tempfile.TemporaryDirectory(prefix="reliability-") if workdir is None else None
        self.workdir = Path(self._tmp.name) if self._tmp else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exits: list[dict[str, Any]] = []
        self.endpoint = ""

    @property
    def log_path(self) -> Path:
        return self.workdir / "daemon.log"

    def start(self, timeout: float = 900.0) -> None:
        ready = self.workdir / f"endpoint-{self.starts}"
        cmd = [
            sys.executable,
            "-m",
            "underpaint.daemon.cli",
            "serve",
            "--endpoint",
            "tcp://127.0.0.1:0",
            "--ready-file",
            str(ready),
            *self.args,
        ]
        with self.log_path.open("ab") as log:
            log.write(f"\n### reliability: start {self.starts} {' '.join(cmd)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.pid = self.process.pid
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not ready.exists() or not ready.read_text().strip():
            if self.process.poll() is not None:
                raise RuntimeError(f"underpaint serve exited early:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"underpaint serve not ready in {timeout} s")
            time.sleep(0.05)
        self.endpoint = ready.read_text().strip()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def log_since(self, offset: int) -> tuple[str, int]:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        return data.decode("utf-8", errors="replace"), offset + len(data)

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the daemon and everything it started (a decoder it spawned, say)."""
        if self.process is None:
            return
        left = descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` s; returns the exit status (None: had to be killed)."""
        if self.process is None:
            return None
        left = descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.exits.append({"event": "did not exit on SIGTERM", "grace_s": grace})
                self.kill()
                return None
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.process.returncode

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
