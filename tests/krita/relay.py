"""A TCP relay between an editor plugin and the daemon whose link can go silent, like a network that
drops every packet (a cable pulled, Wi-Fi gone): nothing is closed, nothing more arrives, so only
the ZeroMQ heartbeats can tell either side. `silence()` holds every byte; `restore()` closes the
silenced connections (both ends gave them up by then) and relays new ones again.

Used by the Krita tests to drop the link mid-job without touching the daemon or the editor.
"""

from __future__ import annotations

import socket
import threading
import time


class Relay:
    """Listens on a free loopback port and relays each connection to `target` (host, port)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.silent = False
        self.generation = 0
        self.relayed = 0  # connections relayed so far
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def silence(self) -> None:
        """From now on no byte gets through, in either direction, on any connection."""
        self.silent = True

    def restore(self) -> None:
        """Drop the silenced connections and relay new ones again."""
        with self._lock:
            self.generation += 1
            old, self._sockets = self._sockets, []
            self.silent = False
        for sock in old:
            _close(sock)

    def close(self) -> None:
        self._closed = True
        self.restore()
        _close(self.listener)

    def _accept(self) -> None:
        while not self._closed:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(down)
                if self.silent:  # held: accepted but never answered, like a dead network
                    continue
                gen = self.generation
            try:
                up = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(down)
                continue
            with self._lock:
                self._sockets.append(up)
            self.relayed += 1
            for src, dst in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(src, dst, gen), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, gen: int) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.silent and self.generation == gen:
                    time.sleep(0.02)  # hold the bytes: they never arrive
                if self.generation != gen:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
