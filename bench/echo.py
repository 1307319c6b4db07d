"""The floors for transfer costs: a bare pyzmq ROUTER in its own process, no daemon logic at all.

A request is two frames, [mode, payload]:

- mode `raw:N`: answer N bytes, with no parsing. When N equals the payload's length the very same bytes
  go back (an echo, zero copy); otherwise a cached buffer of that size. Nothing can be faster on the
  same kind of endpoint: this is the raw floor.
- mode `msgpack:echo` / `msgpack:small`: unpack the payload as a protocol message, then pack a reply
  carrying its `images.image.data` (like a result) or a small error-like map. With the client
  packing and unpacking too, these are the copies that protocol v1's one-msgpack-frame design
  requires (a pack and an unpack on each side): the protocol floor, which no v1 server can beat.

Run as `python -m bench.echo --endpoint tcp://127.0.0.1:0 --ready-file PATH`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zmq

from underpaint.protocol.messages import pack, unpack

from .common import REPO


def _answer(mode: str, payload: zmq.Frame, cache: dict[int, bytes]) -> Any:
    kind, _, arg = mode.partition(":")
    if kind == "raw":
        size = int(arg)
        return payload if size == len(payload.buffer) else cache.setdefault(size, bytes(size))
    message = unpack(payload.buffer)
    if arg == "small":
        return pack({"type": "error", "re": message.get("id"), "code": "size_mismatch", "message": "x" * 80})
    # the unpacked bytes go straight back: unpack and pack are the only copies, as in any v1 server
    image = {
        "format": "raw",
        "width": 1,
        "height": 1,
        "channels": 4,
        "data": message["images"]["image"]["data"],
    }
    return pack({"type": "result", "re": message.get("id"), "images": [image]})


def serve(endpoint: str, ready_file: Path) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    ready_file.write_text(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    cache: dict[int, bytes] = {}
    while True:
        identity, mode, payload = sock.recv_multipart(copy=False)
        if mode.bytes == b"stop":
            break
        sock.send_multipart([identity, _answer(mode.bytes.decode(), payload, cache)], copy=False)
    sock.close(0)
    ctx.term()


class EchoClient:
    """One DEALER to the echo server, timing one request and its reply."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def roundtrip(self, payload: bytes, reply_size: int | None = None) -> float:
        """Raw floor: send `payload` as is, receive `reply_size` bytes (default: the same bytes)."""
        size = len(payload) if reply_size is None else reply_size
        t0 = time.perf_counter()
        self.sock.send_multipart([f"raw:{size}".encode(), payload], copy=False)
        reply = self.sock.recv(copy=False)
        elapsed = time.perf_counter() - t0
        assert len(reply.buffer) == size
        return elapsed

    def protocol_roundtrip(self, message: dict[str, Any], echo_image: bool) -> float:
        """Protocol floor: pack `message` as the client does, the server unpacks and packs, we unpack."""
        mode = b"msgpack:echo" if echo_image else b"msgpack:small"
        t0 = time.perf_counter()
        self.sock.send_multipart([mode, pack(message)], copy=False)
        reply = unpack(self.sock.recv(copy=False).buffer)
        elapsed = time.perf_counter() - t0
        assert reply["type"] in ("result", "error")
        return elapsed

    def stop(self) -> None:
        self.sock.send_multipart([b"stop", b""])
        self.sock.close(0)


# A floor is the best a server process can do: keep big buffers in glibc's heap instead of mapping and
# unmapping (and page-faulting) fresh pages for every 4 MiB message. Measured here: the protocol floor
# for a 1024x1024 RGBA round trip drops from ~11.5 ms to ~4.5 ms with this in both processes.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


@contextmanager
def running_echo() -> Iterator[EchoClient]:
    """An echo server process on a free loopback TCP port, like the daemon's; yields a client."""
    with tempfile.TemporaryDirectory(prefix="underpaint-echo-") as tmp:
        ready = Path(tmp) / "endpoint"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.echo",
                "--endpoint",
                "tcp://127.0.0.1:0",
                "--ready-file",
                str(ready),
            ],
            cwd=REPO,
            env={**os.environ, **TUNED_MALLOC},
        )
        try:
            deadline = time.monotonic() + 60
            while not ready.exists() or not ready.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the echo server did not start")
                time.sleep(0.02)
            client = EchoClient(ready.read_text().strip())
            yield client
            client.stop()
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:0")
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    serve(args.endpoint, args.ready_file)


if __name__ == "__main__":
    main()
