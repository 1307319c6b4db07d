"""Section 2: what moving a 1024x1024 RGBA picture through the protocol costs, against bare echoes.

Each daemon measurement is interleaved with two floors served by bench.echo (a separate process, the
same kind of endpoint, loopback TCP): the *raw floor* (the same bytes, no parsing at all) and the
*protocol floor* (msgpack pack/unpack on both sides plus one copy of the image, i.e. every copy that
protocol v1's one-msgpack-frame design requires, and no daemon logic).

- in: a submit carrying the picture and an 8x8 mask. The daemon unpacks it, decodes both images,
  validates, and refuses it (`size_mismatch`) without touching the worker; the client gets the error.
- in + out: an sdedit whose model works at 64 px (1 step) and returns the full 1024x1024 RGBA patch.
  The daemon's own `timings.total` (accepted -> result ready: model, resizes) is subtracted from the
  client's wall time, leaving request transfer + decode + validation + queue hand-off + result encode
  + transfer + client unpack.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from underpaint.daemon.commands.pictures import image_object
from underpaint.protocol import Client, DaemonError
from underpaint.protocol.messages import pack, raw_image

from .common import SEED, Report, median, ms, photo, progress, rotated, timed
from .echo import EchoClient

SECTION = "2. Transfer"
SIZE = 1024
TARGET = 1.5


class _Probe:
    """The daemon-side and floor-side measurements for one image object (raw or PNG)."""

    def __init__(
        self, client: Client, echo: EchoClient, preset: str, fmt: str, image: dict[str, Any]
    ) -> None:
        self.client, self.echo, self.preset, self.fmt, self.image = client, echo, preset, fmt, image
        self.bad = {
            "op": "sdedit",
            "model": preset,
            "params": {"steps": 1},
            "images": {"image": image, "mask": raw_image(8, 8, 1, bytes(64))},
        }
        params = {"steps": 1, "strength": 1.0, "resolution": 64, "seed": SEED, "padding": 0, "feather": 0}
        self.good = {
            "op": "sdedit",
            "model": preset,
            "params": params | {"output_format": fmt},
            "images": {"image": image},
        }
        self.error_size = 0
        self.result: dict[str, Any] = {}

    # in: refused after decoding
    def daemon_in(self) -> float:
        with timed() as t:
            try:
                self.client.request("submit", **self.bad)
            except DaemonError as exc:
                self.error_size = len(pack(exc.reply))
                assert exc.code == "size_mismatch", exc
            else:
                raise AssertionError("the daemon accepted a mismatched mask")
        return t[0]

    def raw_in(self) -> float:
        return self.echo.roundtrip(pack({"type": "submit", "id": 1, **self.bad}), self.error_size)

    def protocol_in(self) -> float:
        return self.echo.protocol_roundtrip({"type": "submit", "id": 1, **self.bad}, echo_image=False)

    # in + out: a job whose result is the full-size picture
    def daemon_rt(self) -> float:
        with timed() as t:
            self.result = self.client.run(
                self.good["op"], self.good["params"], self.good["images"], model=self.preset
            )
        return t[0] - self.result["timings"]["total"]

    def raw_rt(self) -> float:
        return self.echo.roundtrip(pack({"type": "submit", "id": 1, **self.good}), len(pack(self.result)))

    def protocol_rt(self) -> float:
        return self.echo.protocol_roundtrip({"type": "submit", "id": 1, **self.good}, echo_image=True)


def measure(report: Report, client: Client, echo: EchoClient, preset: str, reps: int) -> None:
    picture = photo((SIZE, SIZE), "RGBA")
    with timed() as t_enc:
        buf = io.BytesIO()
        picture.save(buf, "PNG")
    objects = {"raw": image_object(picture), "png": {"format": "png", "data": buf.getvalue()}}
    # The same raw picture once more through a client using the "frames" feature (no msgpack copies).
    framed = Client(client.endpoint, timeout=client.timeout, frames=True)
    probes = [
        ("raw", "raw", client, objects["raw"]),
        ("raw frames", "raw", framed, objects["raw"]),
        ("png", "png", client, objects["png"]),
    ]
    bar = progress("transfer 1024x1024 RGBA", 2 * 3 * (reps + 1) * len(probes))
    data: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {}
    for label, fmt, probe_client, obj in probes:
        probe = _Probe(probe_client, echo, preset, fmt, obj)
        for kind, fns in (
            ("in", [probe.raw_in, probe.protocol_in, probe.daemon_in]),
            ("in + out", [probe.raw_rt, probe.protocol_rt, probe.daemon_rt]),
        ):
            for fn in reversed(fns):  # warm up, daemon first: the raw floor needs its reply size
                fn()
            bar.update(3)
            raw, protocol, daemon = rotated(fns, reps, bar)
            data[f"{label} {kind}"] = {"raw_floor": raw, "protocol_floor": protocol, "daemon": daemon}
            _row(report, label, kind, raw, protocol, daemon, len(obj["data"]), probe.result)
        results[label] = probe.result
    bar.close()
    framed.close()
    codec = _codec_costs(objects["png"]["data"], results["png"])
    report.add(
        SECTION,
        "PNG codec alone (in-process, for scale)",
        f"client encode {ms(t_enc[0])}, daemon decode {ms(codec['decode'])}, "
        f"result encode {ms(codec['encode'])}, client result decode {ms(codec['result_decode'])}",
        note="raw needs none of these",
    )
    data["png codec"] = codec | {"client_encode": t_enc[0]}
    report.data["transfer"] = data


def _row(
    report: Report,
    fmt: str,
    kind: str,
    raw: list[float],
    protocol: list[float],
    daemon: list[float],
    in_bytes: int,
    result: dict[str, Any],
) -> None:
    ratio = median(daemon) / median(raw)
    is_raw = fmt.startswith("raw")
    moved = f"{in_bytes / 2**20:.2f} MiB in" + (
        f", {len(result['images'][0]['data']) / 2**20:.2f} MiB out" if kind == "in + out" else ", error out"
    )
    report.add(
        SECTION,
        f"{SIZE}x{SIZE} RGBA {fmt.upper()} {kind}: daemon / raw echo floor",
        f"{ratio:.2f}x ({ms(median(daemon))} vs {ms(median(raw))})",
        f"<= {TARGET}" if is_raw else "n/a (codec-bound)",
        ratio <= TARGET if is_raw else None,
        f"{moved}; protocol floor (msgpack echo) {ms(median(protocol))} = "
        f"{median(protocol) / median(raw):.2f}x raw; daemon / protocol floor "
        f"{median(daemon) / median(protocol):.2f}x",
    )


def _codec_costs(png_bytes: bytes, result: dict[str, Any]) -> dict[str, float]:
    """What PNG costs by itself, measured in this process (median of 3)."""

    def once() -> dict[str, float]:
        with timed() as t_dec:
            Image.open(io.BytesIO(png_bytes)).load()
        out = Image.open(io.BytesIO(result["images"][0]["data"]))
        with timed() as t_rdec:
            out.load()
        with timed() as t_renc:
            out.save(io.BytesIO(), "PNG", compress_level=1)  # what the daemon does for output_format png
        return {"decode": t_dec[0], "encode": t_renc[0], "result_decode": t_rdec[0]}

    runs = [once() for _ in range(3)]
    return {k: median([r[k] for r in runs]) for k in runs[0]}
