"""Feature "frames": large image data travels as extra ZeroMQ frames instead of inside msgpack."""

from __future__ import annotations

import msgpack
import numpy as np
import zmq
from helpers import obj, picture, pixels

from underpaint.protocol import Client
from underpaint.protocol.messages import FRAME_MIN_BYTES, attach_frames, split_frames


def test_split_and_attach_round_trip_without_touching_the_original() -> None:
    big, small = b"x" * FRAME_MIN_BYTES, b"y" * 10
    message = {
        "images": {"image": {"data": big, "width": 1}, "mask": {"data": small}},
        "list": [{"data": big}],
    }
    header, frames = split_frames(message)
    assert frames == [big, big] and header["images"]["image"] == {"width": 1, "frame": 1}
    assert header["images"]["mask"] == {"data": small}, "small payloads stay inline"
    assert message["images"]["image"]["data"] is big, "the caller's maps are not changed"
    attach_frames(header, frames)
    assert header == message


def test_frames_client_gets_the_same_pixels(daemon) -> None:
    image = obj(picture((256, 256)))
    params = {"strength": 0.5, "steps": 4, "seed": 11}
    with (
        Client(daemon.endpoint, timeout=120) as plain,
        Client(daemon.endpoint, timeout=120, frames=True) as fast,
    ):
        assert "frames" in fast.hello()["features"]
        a = plain.run("sdedit", params, {"image": image})
        b = fast.run("sdedit", params, {"image": image})
    assert isinstance(a["images"][0]["data"], bytes)
    assert isinstance(b["images"][0]["data"], memoryview), "the result arrived as a frame"
    assert np.array_equal(pixels(a["images"][0]), pixels(b["images"][0]))


def test_a_missing_frame_is_a_clear_error(daemon) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.endpoint)
    try:
        header = {
            "type": "submit",
            "op": "sdedit",
            "images": {"image": {"width": 8, "height": 8, "channels": 3, "frame": 2}},
        }
        sock.send_multipart([msgpack.packb(header), b"\0" * 192])
        assert sock.poll(20000)
        reply = msgpack.unpackb(sock.recv())
        assert reply["code"] == "malformed_message" and "frame 2" in reply["message"]
    finally:
        sock.close(0)


def test_fetch_sends_frames_only_when_asked(daemon) -> None:
    image = obj(picture((256, 256)))
    params = {"strength": 0.5, "steps": 2, "seed": 12}
    with Client(daemon.endpoint, timeout=120, frames=True) as fast:
        token = fast.hello()["session"]
        job = fast.run("sdedit", params, {"image": image})["job"]
        framed = fast.fetch(job)["event"]
    with Client(daemon.endpoint, timeout=120, session=token) as plain:
        plain.hello()
        inline = plain.fetch(job)["event"]
    assert isinstance(framed["images"][0]["data"], memoryview), "the kept result came back as a frame"
    assert isinstance(inline["images"][0]["data"], bytes), "a client that did not ask gets it inline"
    assert np.array_equal(pixels(framed["images"][0]), pixels(inline["images"][0]))
