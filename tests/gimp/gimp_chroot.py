"""A cached Debian 13 (trixie) chroot with GIMP 3, for testing the GIMP plug-in in the real program.

Debian 12 only has GIMP 2.10, so the tests run GIMP 3 from trixie inside a chroot (root needed). The chroot
is built once per machine at `CACHE` (override with UNDERPAINT_GIMP_CHROOT) and reused:

- built atomically: into `<CACHE>.tmp-<pid>` and renamed to `CACHE` only once complete (with a stamp
  file), so an interrupted build is never reused;
- no bind mount of the host's /dev at all: the few device nodes GIMP needs are created with mknod, and
  only fresh `proc` instances are mounted, which are always unmounted in a `finally`;
- nothing is ever deleted while a mount is still inside it (`safe_remove` checks /proc/self/mountinfo
  and uses `rm --one-file-system` on top), so the host can never lose files through a mount;
- an exclusive file lock serialises builds and test sessions across processes.

Usable as a script to build or inspect the cache: `python tests/gimp/gimp_chroot.py [--rebuild]`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SUITE = "trixie"
CACHE = Path(os.environ.get("UNDERPAINT_GIMP_CHROOT", "/var/cache/underpaint/gimp3-trixie"))
# GIMP 3 with its Python, the plug-in's two dependencies, and a virtual display + xdotool for the dialogs.
PACKAGES = ("gimp", "python3-gi", "gir1.2-gimp-3.0", "python3-zmq", "python3-msgpack", "xvfb", "xdotool")
STAMP_NAME = ".underpaint-chroot-ok"
STAMP = f"suite={SUITE} packages={' '.join(PACKAGES)} v1\n"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
# (name, mode, major, minor): the character devices programs in the chroot open.
DEVICES = (
    ("null", 0o666, 1, 3),
    ("zero", 0o666, 1, 5),
    ("full", 0o666, 1, 7),
    ("random", 0o666, 1, 8),
    ("urandom", 0o666, 1, 9),
    ("tty", 0o666, 5, 0),
)

Log = Callable[[str], None]


def _stderr_log(message: str) -> None:
    print(f"[gimp-chroot] {message}", file=sys.stderr, flush=True)


# -- preconditions -----------------------------------------------------------------------------


def missing_preconditions() -> str | None:
    """Why a chroot cannot be built or used here (None when it can)."""
    if sys.platform != "linux":
        return "the GIMP 3 chroot needs Linux"
    if os.geteuid() != 0:
        return "building and entering the GIMP 3 chroot needs root (CI runs as root)"
    if not ready(CACHE) and not shutil.which("debootstrap") and not shutil.which("apt-get"):
        return "debootstrap is missing and apt-get is not available to install it"
    return None


def ready(root: Path) -> bool:
    """A finished chroot carries the stamp written as the very last build step."""
    stamp = root / STAMP_NAME
    return stamp.is_file() and stamp.read_text() == STAMP


def debian_mirror() -> str:
    """The Debian archive URL the host's own apt sources use (trixie lives on the same mirror)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            urls = re.findall(r"(?:https?|file)://\S+", line)
            if not urls or not (line.startswith(("deb ", "URIs:"))):
                continue
            for url in urls:
                url = url.rstrip("/")
                if url.endswith("/debian") and "security" not in url:
                    return url
    return FALLBACK_MIRROR


# -- mounts and safe deletion ------------------------------------------------------------------


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first (from /proc/self/mountinfo)."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == base or point.startswith(base + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_all(path: Path, log: Log = _stderr_log) -> None:
    """Unmount everything below `path`; raise if anything stays mounted."""
    for _ in range(3):
        points = mounts_under(path)
        if not points:
            return
        for point in points:
            if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
                log(f"umount {point} failed, retrying lazily")
                subprocess.run(["umount", "-l", str(point)], capture_output=True)
        time.sleep(0.2)
    left = mounts_under(path)
    if left:
        raise RuntimeError(f"still mounted under {path}: {left}")


def safe_remove(path: Path, log: Log = _stderr_log) -> None:
    """Delete a chroot only once nothing is mounted inside it, and never across file systems."""
    if not path.exists():
        return
    unmount_all(path, log)
    if mounts_under(path):  # unmount_all raises first; belt and braces
        raise RuntimeError(f"refusing to delete {path}: something is mounted inside")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


@contextlib.contextmanager
def mounted(root: Path, log: Log = _stderr_log) -> Iterator[Path]:
    """Mount a fresh proc in the chroot for the duration of the block, always unmounting it."""
    make_devices(root)
    proc = root / "proc"
    proc.mkdir(exist_ok=True)
    try:
        if not mounts_under(proc):
            subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
        yield root
    finally:
        unmount_all(root, log)


def make_devices(root: Path) -> None:
    """Create the device nodes programs need, instead of bind-mounting the host's /dev."""
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    for name, mode, major, minor in DEVICES:
        node = dev / name
        if node.is_char_device():
            continue
        if node.exists() or node.is_symlink():
            node.unlink()
        os.mknod(node, mode | 0o020000, os.makedev(major, minor))
        os.chmod(node, mode)
    for sub in ("pts", "shm"):
        (dev / sub).mkdir(exist_ok=True)
    (dev / "shm").chmod(0o1777)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        if not (dev / name).is_symlink() and not (dev / name).exists():
            (dev / name).symlink_to(target)


# -- locking -----------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(timeout: float = 1200.0, log: Log = _stderr_log) -> Iterator[None]:
    """One builder or test session at a time per machine (others wait up to `timeout` s)."""
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(CACHE.parent / f"{CACHE.name}.lock", "w") as handle:
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{CACHE} stayed locked by another process for {timeout:g} s"
                    ) from None
                if not said:
                    log(f"waiting for another process using {CACHE}")
                    said = True
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- building ----------------------------------------------------------------------------------


def _run_logged(cmd: Sequence[str], log: Log, timeout: float, env: dict[str, str] | None = None) -> None:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        env=env,
        text=True,
        errors="replace",
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}")


def _chroot_env() -> dict[str, str]:
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }


def build(dest: Path, log: Log = _stderr_log) -> None:
    """debootstrap trixie into `dest` and install GIMP 3 with Python and pyzmq/msgpack."""
    if not shutil.which("debootstrap"):
        try:
            _run_logged(["apt-get", "install", "-y", "debootstrap"], log, 600)
        except RuntimeError:  # a fresh machine may have no package lists yet
            _run_logged(["apt-get", "update"], log, 600)
            _run_logged(["apt-get", "install", "-y", "debootstrap"], log, 600)
    mirror = debian_mirror()
    _run_logged(["debootstrap", "--variant=minbase", SUITE, str(dest), mirror], log, 1200)
    (dest / "etc/apt/apt.conf.d/99underpaint").write_text(
        'APT::Install-Recommends "false";\nAcquire::Retries "3";\n'
    )
    shutil.copy2("/etc/resolv.conf", dest / "etc/resolv.conf")
    with mounted(dest, log):
        chroot = ["chroot", str(dest)]
        _run_logged([*chroot, "apt-get", "update"], log, 600, _chroot_env())
        _run_logged([*chroot, "apt-get", "install", "-y", *PACKAGES], log, 1800, _chroot_env())
        _run_logged([*chroot, "apt-get", "clean"], log, 120, _chroot_env())
        _run_logged([*chroot, "gimp-console-3.0", "--version"], log, 120, _chroot_env())


def ensure_chroot(log: Log = _stderr_log) -> Path:
    """Return the cached chroot, building it first if needed. Call with `locked()` held."""
    if ready(CACHE):
        return CACHE
    for stale in CACHE.parent.glob(f"{CACHE.name}.tmp-*"):
        log(f"removing an interrupted build: {stale}")
        safe_remove(stale, log)
    if CACHE.exists():
        log(f"removing an incomplete or outdated chroot: {CACHE}")
        safe_remove(CACHE, log)
    tmp = CACHE.parent / f"{CACHE.name}.tmp-{os.getpid()}"
    started = time.monotonic()
    try:
        build(tmp, log)
        (tmp / STAMP_NAME).write_text(STAMP)
        os.rename(tmp, CACHE)
    finally:
        if tmp.exists():
            safe_remove(tmp, log)
    log(f"built {CACHE} in {time.monotonic() - started:.0f} s")
    return CACHE


# -- running GIMP ------------------------------------------------------------------------------


def fresh_workdir(root: Path, prefix: str) -> Path:
    """A new folder in the chroot's /tmp for one test session; earlier sessions' leftovers (a killed
    run) are removed first, which is safe because the caller holds `locked()`."""
    for stale in (root / "tmp").glob(f"{prefix}-*"):
        safe_remove(stale)
    work = root / "tmp" / f"{prefix}-{os.getpid()}-{int(time.time())}"
    work.mkdir(parents=True)
    return work


@dataclass
class GimpRun:
    returncode: int
    output: str
    seconds: float
    timed_out: bool


def run_in_chroot(
    root: Path, argv: Sequence[str], env: dict[str, str], timeout: float, cwd: str = "/"
) -> GimpRun:
    """Run `argv` inside the chroot with exactly `env`, killing the whole process group on timeout."""
    started = time.monotonic()
    cmd = ["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd="/",
    )
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return GimpRun(proc.returncode, out.decode(errors="replace"), time.monotonic() - started, timed_out)


def gimp_batch_argv(script_in_chroot: str, ui: bool = False) -> list[str]:
    """gimp-console running one Python file through the python-fu-eval batch interpreter (`ui`: GIMP
    with its user interface, image windows included, on the display the caller provides)."""
    code = f"exec(compile(open({script_in_chroot!r}).read(), {script_in_chroot!r}, 'exec'))"
    program = ["gimp-3.0", "--no-splash"] if ui else ["gimp-console-3.0", "-i"]
    return [*program, "--batch-interpreter=python-fu-eval", "-b", code, "--quit"]


def main(argv: Sequence[str]) -> int:
    problem = missing_preconditions()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    with locked():
        if "--rebuild" in argv and CACHE.exists():
            safe_remove(CACHE)
        root = ensure_chroot()
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
