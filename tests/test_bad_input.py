"""Every class of bad request gets an `error` with its stable code, and the daemon keeps serving."""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from helpers import ellipse_mask, obj, picture
from PIL import Image

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
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nnewpath 0 0 moveto showpage\n"


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header that declares a huge picture, followed by a tiny compressed stream (a bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\0" * 1000)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    )  # fmt: skip


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"x": value}
    return value


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
    ({"type": "hello"}, "missing_field", "protocol"),
    ({"type": "hello", "protocol": "1"}, "invalid_type", "protocol"),
    ({"type": "hello", "protocol": 1, "session": 7}, "invalid_type", "session"),
    ({"type": "submit"}, "missing_field", "op"),
    (submit(op="melt"), "unknown_op", "op"),
    (submit(op=7), "invalid_type", "op"),
    (submit(model="sdxl-lightning-9000"), "unknown_model", "model"),
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
    (submit(params={"steps": 2, "guidance_scale": float("nan")}), "out_of_range", "params.guidance_scale"),
    (submit(params={"steps": 2, "strength": float("inf")}), "out_of_range", "params.strength"),
    (
        submit(
            op="controlnet",
            params={"steps": 2, "units": [{"model": "canny", "scale": float("-inf")}]},
            images={"control": IMG},
        ),
        "out_of_range",
        "params.units.0.scale",
    ),
    (submit(params={"steps": 2, "prompt": nested(100)}), "malformed_message", None),
    (
        submit(
            op="txt2img", params={"width": 2048, "height": 2048, "steps": 200, "variations": 8}, images={}
        ),
        "job_too_large",
        None,
    ),
    (
        submit(op="txt2img", params={"width": 2048, "height": 2048, "steps": 1}, images={}),
        "job_too_large",
        None,
    ),  # about 4 GiB of working memory
    (submit(images={"image": {"format": "png", "data": EPS}}), "invalid_image", "images.image"),
    (
        submit(images={"image": {"format": "png", "data": png_claiming(100_000, 100_000)}}),
        "image_too_large",
        "images.image",
    ),  # fmt: skip
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
    ({"type": "load", "model": "tiny", "op": "depth"}, "unsupported_op", "op"),
    ({"type": "fetch"}, "missing_field", "job"),
    ({"type": "fetch", "job": "j999999"}, "unknown_job", "job"),
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
    with running_daemon(
        "--max-message-mb", "1", "--max-pixels", "10000", "--max-queued-mb-per-client", "0.1"
    ) as small:
        peer = RawPeer(small.endpoint)
        try:
            big = {"type": "submit", "op": "sdedit", "images": {"image": {"data": b"\0" * 2_000_000}}}
            reply = peer.send(big)
            assert reply["code"] == "message_too_large"
            reply = peer.send(submit(images={"image": obj(picture((200, 100)))}))
            assert (reply["code"], reply["field"]) == ("image_too_large", "images.image")
            reply = peer.send(submit(images={"image": obj(picture((200, 150)))}))  # 120 KB waiting
            assert (reply["code"], reply["limit"]) == ("queue_full", "max_queued_bytes_per_client")
            welcome = peer.send({"type": "hello", "protocol": 1})
            assert welcome["limits"]["max_message_bytes"] == 1024 * 1024
            assert welcome["limits"]["max_pixels"] == 10000
            assert welcome["limits"]["max_queued_bytes_per_client"] == int(0.1 * 1024 * 1024)
        finally:
            peer.close()
        assert small.alive()


def test_nesting_too_deep_for_any_parser_is_refused(raw: RawPeer) -> None:
    """1000 levels (Python's recursion limit) and 100000 (past msgpack's own stack): refused, and the
    daemon answers the next message at once."""
    assert raw.send({"type": "status", "id": 1, "deep": nested(1000)})["code"] == "malformed_message"
    deepest = b"\x91" * 100_000 + b"\xc0"  # 100000 nested one-element arrays
    assert raw.send_frames(deepest)["code"] == "malformed_message"
    assert raw.send({"type": "hello", "protocol": 1})["type"] == "welcome"


def test_a_request_id_must_be_a_short_scalar(raw: RawPeer) -> None:
    reply = raw.send({"type": "status", "id": {"a": 1}})
    assert (reply["code"], reply["field"]) == ("invalid_type", "id") and "re" not in reply
    reply = raw.send({"type": "status", "id": "x" * 1000})
    assert (reply["code"], reply["field"]) == ("out_of_range", "id") and "re" not in reply
    assert raw.send({"type": "status", "id": "fine"})["re"] == "fine"


def _png(img: Image.Image) -> dict[str, Any]:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return {"format": "png", "data": buf.getvalue()}


def test_a_big_png_decodes_off_the_loop(daemon, raw: RawPeer) -> None:
    """Two 4096x4096 PNGs (small on the wire, 128 MB decoded) decode in the decode pool: a status
    from another client is answered before the submit's reply, which comes once both decoded."""
    side = 4096
    image = _png(Image.new("RGB", (side, side), (90, 120, 150)))
    mask = _png(Image.new("L", (side, side), 0))  # empty: refused once decoded
    raw.sock.send(msgpack.packb(submit(images={"image": image, "mask": mask}), use_bin_type=True))
    with Client(daemon.endpoint, timeout=10) as other:
        t0 = time.monotonic()
        assert other.status()["type"] == "status"
        status_took = time.monotonic() - t0
    assert not raw.sock.poll(0), "the status was answered before the big submit's reply"
    reply = raw.receive()
    assert (reply["code"], reply["field"]) == ("invalid_value", "images.mask"), reply
    assert status_took < 1.0


def test_log_lines_cannot_be_forged_or_flooded(daemon, raw: RawPeer) -> None:
    raw.send({"type": "hello", "protocol": 1, "client": "plugin\n2030-01-01 00:00:00 ERROR forged: pwned"})
    raw.send({"type": "hello", "protocol": 1, "client": "n" * 10_000_000})
    raw.send({"type": "paint\nforged too"})
    log = daemon.log()
    assert not any(line.startswith("2030-01-01") for line in log.splitlines())
    assert "forged too" not in log.replace("\\nforged too", "")
    assert max(len(line) for line in log.splitlines()) < 2000, "a huge name is not a huge log line"
