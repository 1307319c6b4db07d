"""A TCP relay between a plug-in and the daemon that a test can break, the way networks break.

The plug-in connects to the relay's port and every byte is copied to the daemon and back. `cut()`
resets every open connection (an RST, as when a router or the daemon's host drops the link) and keeps
accepting new ones, so ZeroMQ reconnects at once; `refuse()` resets them and refuses new ones (the
daemon's host is gone); `blackhole()` keeps the connections open but lets nothing through, in either
direction, and new ones too (a cable pulled: only heartbeats can tell); `restore()` lets traffic flow
again. Runs in threads of the test process; the chroot shares the host's network.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

OPEN, REFUSE, BLACKHOLE = "open", "refuse", "blackhole"


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a dropped link looks to the peer."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class Link:
    """Relay 127.0.0.1:<port> -> `target` (host, port); see the module doc."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.state = OPEN
        self.accepted: list[float] = []  # time.time() of each connection opened through the relay
        self.events: list[tuple[float, str]] = []  # (time.time(), what the test did)
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self._server.settimeout(0.1)
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _note(self, what: str) -> None:
        self.events.append((time.time(), what))

    def when(self, what: str) -> float:
        """When the test last did `what` (cut, refuse, blackhole, restore)."""
        return max(at for at, done in self.events if done == what)

    def opened(self, start: float, end: float) -> int:
        """Connections opened through the relay between two wall-clock times."""
        return sum(1 for at in self.accepted if start <= at <= end)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.state == REFUSE:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self.accepted.append(time.time())
                self._pairs.append((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.1)
        while not self._stop.is_set():
            if self.state == BLACKHOLE:
                time.sleep(0.05)  # read nothing, send nothing: the peers only hear silence
                continue
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        for sock in (src, dst):
            _reset(sock)

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _reset(sock)

    def cut(self) -> None:
        self._note("cut")
        self._drop_all()

    def refuse(self) -> None:
        self.state = REFUSE
        self._note("refuse")
        self._drop_all()

    def blackhole(self) -> None:
        self.state = BLACKHOLE
        self._note("blackhole")

    def restore(self) -> None:
        """Traffic flows again; connections that were silenced are reset (their peers gave up)."""
        if self.state == BLACKHOLE:
            self._drop_all()
        self.state = OPEN
        self._note("restore")

    def close(self) -> None:
        self._stop.set()
        self._drop_all()
        self._server.close()
        self._thread.join(5)


@contextlib.contextmanager
def relay(endpoint: str) -> Iterator[Link]:
    """A Link to the daemon at `endpoint` (tcp://host:port) for the duration of the block."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    link = Link((host, int(port)))
    try:
        yield link
    finally:
        link.close()
