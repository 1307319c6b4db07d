"""Every class of bad request gets an `error` with its stable code, and the daemon keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from helpers import ellipse_mask, obj, picture

from underpaint.daemon.commands.launch import running_daemon
from underpaint.protocol import Client, ProtocolMismatch


class RawPeer:
    """A bare DEALER socket, to send exactly the bytes a broken client would."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send_frames(self, *frames: bytes) -> dict[str, Any]:
        self.sock.send_multipart(list(frames))
        return self.receive()

    def send(self, message: Any) -> dict[str, Any]:
        return self.send_frames(msgpack.packb(message, use_bin_type=True))

    def receive(self, timeout_ms: int = 20000) -> dict[str, Any]:
        assert self.sock.poll(timeout_ms), "the daemon did not answer"
        return msgpack.unpackb(self.sock.recv(), raw=False)

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def raw(daemon) -> Iterator[RawPeer]:
    peer = RawPeer(daemon.endpoint)
    yield peer
    peer.close()


IMG = obj(picture((64, 48)))
MASK_WRONG_SIZE = obj(ellipse_mask((60, 48), (0, 0, 30, 30)))


def submit(op: str = "sdedit", params: dict | None = None, images: dict | None = None, **extra: Any) -> dict:
    return {
        "type": "submit",
        "id": 9,
        "op": op,
        "params": params or {"steps": 2},
        "images": {"image": IMG} if images is None else images,
        **extra,
    }


CASES = [
    # (message, code, field)
    ([1, 2, 3], "malformed_message", None),
    ({"id": 1}, "missing_field", "type"),
    ({"type": "paint"}, "unknown_type", "type"),
    ({"type": "hello", "protocol": 99}, "protocol_mismatch", "protocol"),
    ({"type": "submit"}, "missing_field", "op"),
    (submit(op="melt"), "unknown_op", "op"),
    (submit(op=7), "invalid_type", "op"),
    (submit(model="sdxl-turbo"), "unknown_model", "model"),
    (submit(params={"steps": "many"}), "invalid_type", "params.steps"),
    (submit(params={"steps": 100000}), "out_of_range", "params.steps"),
    (submit(params={"strength": 1.5}), "out_of_range", "params.strength"),
    (submit(params={"seed": -1}), "out_of_range", "params.seed"),
    (submit(params={"variations": 0}), "out_of_range", "params.variations"),
    (submit(params={"steps": 3, "strength": 0.2}), "invalid_value", "params.strength"),
    (submit(params={"resolution": 100000}), "out_of_range", "params.resolution"),
    (submit(op="txt2img", params={"width": 100000}), "out_of_range", "params.width"),
    (submit(params={"scheduler": "warp-drive"}), "unknown_scheduler", "params.scheduler"),
    (submit(params={"prompt": "x" * 5000}), "out_of_range", "params.prompt"),
    (submit(params=[1]), "invalid_type", "params"),
    (submit(images={}), "missing_field", "images.image"),
    (submit(images={"image": {**IMG, "data": IMG["data"][:-1]}}), "invalid_image", "images.image.data"),
    (submit(images={"image": {**IMG, "channels": 2}}), "invalid_image", "images.image.channels"),
    (submit(images={"image": {"format": "png", "data": b"not a png"}}), "invalid_image", "images.image"),
    (submit(images={"image": "pixels"}), "invalid_image", "images.image"),
    (submit(images={"image": IMG, "mask": MASK_WRONG_SIZE}), "size_mismatch", "images.mask"),
    (submit(op="inpaint", images={"image": IMG}), "missing_field", "images.mask"),
    (
        submit(op="inpaint", images={"image": IMG, "mask": obj(ellipse_mask((64, 48), (0, 0, 0, 0)))}),
        "invalid_value",
        "images.mask",
    ),
    (submit(op="instruct", params={"instruction": "  "}), "invalid_value", "params.instruction"),
    (submit(op="instruct", params={}), "missing_field", "params.instruction"),
    (submit(op="controlnet", params={"units": []}), "out_of_range", "params.units"),
    (
        submit(op="controlnet", params={"units": [{"model": "pose"}]}, images={"control": IMG}),
        "unknown_controlnet",
        "params.units.0.model",
    ),
    (
        submit(
            op="controlnet",
            params={"units": [{"model": "canny", "preprocessor": "x-ray"}]},
            images={"control": IMG},
        ),
        "unknown_preprocessor",
        "params.units.0.preprocessor",
    ),
    (
        submit(op="controlnet", params={"units": [{"model": "canny", "image": "nowhere"}]}, images={}),
        "missing_field",
        "images.nowhere",
    ),
    (
        submit(
            op="controlnet",
            params={"units": [{"model": "canny", "start": 0.8, "end": 0.2}]},
            images={"control": IMG},
        ),
        "out_of_range",
        "params.units.0.end",
    ),
    (submit(op="upscale", params={"factor": 3}), "invalid_value", "params.factor"),
    (submit(op="upscale", params={"factor": 2}), "invalid_value", "images.image"),
    ({"type": "cancel", "job": "j999999"}, "unknown_job", "job"),
    ({"type": "status", "job": "j999999"}, "unknown_job", "job"),
    ({"type": "load", "model": "nope"}, "unknown_model", "model"),
]


@pytest.mark.parametrize(("message", "code", "field"), CASES, ids=[c[1] + ":" + str(c[2]) for c in CASES])
def test_bad_request_gets_its_code(raw: RawPeer, message: Any, code: str, field: str | None) -> None:
    reply = raw.send(message)
    assert reply["type"] == "error", reply
    assert reply["code"] == code, reply
    assert reply.get("field") == field, reply
    assert reply["message"], "the message explains the problem"
    if isinstance(message, dict) and "id" in message:
        assert reply["re"] == message["id"]


def test_garbage_and_multiframe_messages(raw: RawPeer) -> None:
    assert raw.send_frames(b"\xc1\xff garbage")["code"] == "malformed_message"
    assert raw.send_frames(b"", b"")["code"] == "malformed_message"
    assert raw.send({"type": "hello", "protocol": 1})["type"] == "welcome"


def test_protocol_mismatch_through_the_client(daemon) -> None:
    with Client(daemon.endpoint) as client:
        with pytest.raises(ProtocolMismatch) as err:
            client.request("hello", protocol=2)
        assert err.value.reply["supported"] == [1]


def test_unknown_fields_are_ignored(raw: RawPeer) -> None:
    reply = raw.send({"type": "hello", "protocol": 1, "colour": "blue", "future": {"x": 1}})
    assert reply["type"] == "welcome"


def test_the_daemon_survives_all_of_it(daemon) -> None:
    assert daemon.alive()
    with Client(daemon.endpoint, timeout=60) as client:
        assert client.run("txt2img", {"steps": 2, "width": 64, "height": 64})["images"]


def test_oversized_messages_and_images() -> None:
    """Limits come from the command line; a message over the limit is answered, not dropped."""
    with running_daemon("--max-message-mb", "1", "--max-pixels", "10000") as small:
        peer = RawPeer(small.endpoint)
        try:
            big = {"type": "submit", "op": "sdedit", "images": {"image": {"data": b"\0" * 2_000_000}}}
            reply = peer.send(big)
            assert reply["code"] == "message_too_large"
            reply = peer.send(submit(images={"image": obj(picture((200, 100)))}))
            assert (reply["code"], reply["field"]) == ("image_too_large", "images.image")
            welcome = peer.send({"type": "hello", "protocol": 1})
            assert welcome["limits"]["max_message_bytes"] == 1024 * 1024
            assert welcome["limits"]["max_pixels"] == 10000
        finally:
            peer.close()
        assert small.alive()
