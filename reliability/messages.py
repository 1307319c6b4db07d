"""Message generators: valid base requests built from the welcome, and mutations of every kind.

A `Case` is one message (all its ZeroMQ frames) plus what an outside client can say about it from the
spec alone: which request it is, whether it lies outside the spec (`bad`: it must be refused), and
what it would cost if accepted (so the fuzz lets cheap jobs run and cancels expensive ones).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from . import images as imgs
from .spec import Welcome
from .values import PROMPT_CHARS, Value, float_values, values_for, wrong_kinds


class _NoId:
    def __repr__(self) -> str:
        return "<no id>"


NO_ID: Any = _NoId()
SPLICE = "\x00reliability-splice\x00"
FORGED = "RELIABILITY_FORGED_LINE"


def pack(message: Any) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def pack_spliced(message: Any, replacement: bytes) -> bytes:
    """Pack `message` and put `replacement` (raw msgpack bytes) where the value SPLICE is."""
    packed, marker = pack(message), pack(SPLICE)
    assert packed.count(marker) == 1, "exactly one splice point"
    return packed.replace(marker, replacement)


def deep_bytes(depth: int, kind: str) -> bytes:
    """msgpack bytes of a value nested `depth` deep (msgpack-python refuses to pack such values)."""
    return (b"\x91" if kind == "list" else b"\x81\xa1a") * depth + b"\x01"


@dataclass
class Case:
    """One message to send and what the spec lets us expect of its reply."""

    kind: str  # the generator that made it (param, image, frames_raw, ...)
    label: str  # what is special about it, e.g. "tiny/sdedit params.strength=nan"
    frames: list[bytes]  # exactly what goes on the wire
    request: str | None  # the request type as sent (None: not a map, or no known type)
    rid: Any = NO_ID  # the `id` a reply must echo as `re` (NO_ID: none can be expected)
    bad: bool = False  # outside the spec: the daemon must refuse it
    cost: float = 0.0  # work units if it runs (steps at 64x64; inf when it cannot be told)
    expect_reply: bool = True  # False where the spec lets ZeroMQ drop the connection instead
    message: Any = None  # the map before packing, for reports
    submit: dict[str, Any] | None = None  # op, model, seed, image count a result must have
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Base:
    """A valid, cheap submit for one (preset, op)."""

    preset: str
    op: str
    params: dict[str, Any]
    images: dict[str, Any]
    size: tuple[int, int]

    def message(self, rid: Any) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "type": "submit",
            "op": self.op,
            "model": self.preset,
            "params": dict(self.params),
            "images": dict(self.images),
        }
        if rid is not NO_ID:
            msg["id"] = rid
        return msg


class Generator:
    """Makes fuzz cases for the presets named, from the daemon's welcome."""

    def __init__(self, welcome: Welcome, presets: list[str]) -> None:
        self.w = welcome
        self.presets = presets
        self.pairs = [(p, op) for p in presets for op in welcome.ops(p)]
        if not self.pairs:
            raise ValueError("no preset to fuzz: check --presets against the welcome's models")
        self.max_pixels = int(welcome.limits.get("max_pixels", 4096 * 4096))
        self.max_message = int(welcome.limits.get("max_message_bytes", 256 << 20))
        self._id = 0
        self.other_jobs: list[str] = []  # job ids of earlier connections, for cancel/status probes
        self.kinds: list[tuple[str, float, Callable[[random.Random], Case]]] = [
            ("param", 40, self.param_case),
            ("param_multi", 5, self.multi_param_case),
            ("foreign_param", 3, self.foreign_param_case),
            ("unit", 6, self.unit_case),
            ("item", 3, self.item_case),
            ("compare", 2, self.compare_case),
            ("image", 15, self.image_case),
            ("bomb", 0.3, self.bomb_case),
            ("submit_field", 4, self.submit_field_case),
            ("frame_ref", 4, self.frame_ref_case),
            ("frames_raw", 5, self.raw_frames_case),
            ("encoding", 4, self.encoding_case),
            ("nesting", 2, self.nesting_case),
            ("request", 6, self.request_case),
            ("ids", 2, self.id_case),
            ("admin", 0.3, self.admin_case),
            ("oversize", 0.2 if self.max_message <= 64 << 20 else 0.0, self.oversize_case),
        ]

    # -- helpers ---------------------------------------------------------------------------------
    def new_id(self) -> int:
        self._id += 1
        return self._id

    def make(self, rng: random.Random, kind: str | None = None) -> Case:
        if kind is None:
            names = [k for k, weight, _ in self.kinds if weight > 0]
            weights = [weight for _, weight, _ in self.kinds if weight > 0]
            kind = rng.choices(names, weights)[0]
        make = {k: f for k, _, f in self.kinds}[kind]
        return make(rng)

    def base(
        self,
        rng: random.Random,
        preset: str | None = None,
        op: str | None = None,
        need: Callable[[str, str], bool] | None = None,
    ) -> Base:
        """A valid cheap submit; `need(preset, op)` restricts the pair when given."""
        if preset is None or op is None:
            pairs = [pr for pr in self.pairs if need is None or need(*pr)]
            preset, op = rng.choice(pairs or self.pairs)
        return build_base(self.w, preset, op, rng.randrange(2**32 - 16))

    def submit_case(
        self,
        kind: str,
        label: str,
        base: Base,
        msg: dict[str, Any],
        bad: bool,
        frames: list[bytes] | None = None,
    ) -> Case:
        rid = msg.get("id", NO_ID)
        return Case(
            kind=kind,
            label=label,
            frames=frames or [pack(msg)],
            request="submit",
            rid=rid,
            bad=bad,
            cost=estimate(self.w, msg),
            message=msg,
            submit=expectation(self.w, msg),
        )

    # -- params ----------------------------------------------------------------------------------
    def param_case(self, rng: random.Random) -> Case:
        base = self.base(rng)
        spec = self.w.spec(base.preset, base.op)["params"]
        name = rng.choice(sorted(spec))
        msg = base.message(self.new_id())
        if spec[name].get("type") in ("units", "items", "models"):
            value = rng.choice(structure_values(name))
        elif rng.random() < 0.03:
            value = Value("missing", None, bool(spec[name].get("required")))
            msg["params"].pop(name, None)
            return self.submit_case(
                "param", f"{base.preset}/{base.op} params.{name} missing", base, msg, value.bad
            )
        else:
            value = rng.choice(values_for(spec[name], name))
        msg["params"][name] = value.value
        return self.submit_case(
            "param", f"{base.preset}/{base.op} params.{name}={value.tag}", base, msg, value.bad
        )

    def multi_param_case(self, rng: random.Random) -> Case:
        base = self.base(rng)
        spec = self.w.spec(base.preset, base.op)["params"]
        names = [n for n in sorted(spec) if spec[n].get("type") in ("int", "float", "str", "bool")]
        msg = base.message(self.new_id())
        tags, bad = [], False
        for name in rng.sample(names, min(len(names), rng.randint(2, 4))):
            value = rng.choice(values_for(spec[name], name))
            msg["params"][name] = value.value
            tags.append(f"{name}={value.tag}")
            bad = bad or value.bad
        return self.submit_case("param_multi", f"{base.preset}/{base.op} " + ",".join(tags), base, msg, bad)

    def foreign_param_case(self, rng: random.Random) -> Case:
        pairs = [(p, op) for p, op in self.pairs if self.w.foreign_params(p, op)]
        if not pairs:
            return self.param_case(rng)
        preset, op = rng.choice(pairs)
        base = self.base(rng, preset, op)
        name, spec = rng.choice(sorted(self.w.foreign_params(preset, op).items()))
        msg = base.message(self.new_id())
        msg["params"][name] = foreign_value(spec)
        return self.submit_case(
            "foreign_param", f"{preset}/{op} params.{name} (another preset's)", base, msg, True
        )

    def unit_case(self, rng: random.Random) -> Case:
        base = self.base(rng, need=lambda p, op: op == "controlnet")
        if base.op != "controlnet":
            return self.param_case(rng)
        msg = base.message(self.new_id())
        units = msg["params"]["units"] = [dict(u) for u in base.params["units"]]
        fixed = self.w.presets[base.preset].get("family") == "kandinsky22"
        label, bad = mutate_unit(
            rng,
            units,
            self.w.controlnets(base.preset),
            self.w.preprocessors,
            self.w.raw.get("preprocessors") or [],
            fixed,
        )
        return self.submit_case("unit", f"{base.preset}/controlnet {label}", base, msg, bad)

    def item_case(self, rng: random.Random) -> Case:
        base = self.base(rng, need=lambda p, op: op == "mix")
        if base.op != "mix":
            return self.param_case(rng)
        msg = base.message(self.new_id())
        label, bad = mutate_items(rng, msg)
        return self.submit_case("item", f"{base.preset}/mix {label}", base, msg, bad)

    def compare_case(self, rng: random.Random) -> Case:
        base = self.base(rng, need=lambda p, op: op == "txt2img")
        msg = base.message(self.new_id())
        capable = [p for p in self.presets if base.op in self.w.ops(p)]
        params = dict(msg["params"])
        models = rng.sample(capable, min(len(capable), rng.randint(1, 3)))
        choice = rng.randrange(8)
        label, bad = "valid", False
        if choice == 1:
            models, label, bad = [], "models=[]", True
        elif choice == 2:
            models, label, bad = (capable * 9)[:9], "9 models", True
        elif choice == 3:
            models, label, bad = [models[0], models[0]], "duplicate model", True
        elif choice == 4:
            models, label, bad = [*models, "no-such-preset"], "unknown model", True
        elif choice == 5:
            params["op"], label, bad = "compare", "op=compare", True
        elif choice == 6:
            unable = [p for p in self.presets if base.op not in self.w.ops(p)]
            if unable:
                models, label, bad = [*models, unable[0]], "a model without the op", True
        elif choice == 7:
            models, label, bad = rng.choice([v.value for v in wrong_kinds()]), "models wrong kind", True
        params.setdefault("op", base.op)
        params["models"] = models
        msg["op"], msg["params"] = "compare", params
        case = self.submit_case("compare", f"compare/{base.op} {label}", base, msg, bad)
        case.cost = estimate(self.w, {**msg, "op": base.op}) * (
            len(models) if isinstance(models, list) else 1
        )
        return case

    # -- images ----------------------------------------------------------------------------------
    def image_case(self, rng: random.Random) -> Case:
        base = self.base(rng, need=lambda p, op: bool(self.w.spec(p, op)["images"]))
        spec_images = self.w.spec(base.preset, base.op)["images"]
        if not spec_images:
            return self.param_case(rng)
        slot = rng.choice(sorted(spec_images) + (["control"] if base.op == "controlnet" else []))
        width, height = base.size
        value = rng.choice(imgs.image_values(width, height, self.max_pixels))
        msg = base.message(self.new_id())
        msg["images"][slot] = value.value
        bad = value.bad or self.size_rule_broken(base, slot, value)
        if slot == "mask" and "image" not in msg["images"]:
            bad = False  # a mask alone: no oracle
        return self.submit_case("image", f"{base.preset}/{base.op} images.{slot}={value.tag}", base, msg, bad)

    @staticmethod
    def size_rule_broken(base: Base, slot: str, value: Value) -> bool:
        """A valid image of another size in a slot that must match `image` (section 4)."""
        if value.bad or slot not in ("mask", "depth") or not isinstance(value.value, dict):
            return False
        size = (value.value.get("width"), value.value.get("height"))
        return value.value.get("format", "raw") == "raw" and size != base.size

    def bomb_case(self, rng: random.Random) -> Case:
        def fits(preset: str, op: str) -> bool:
            slots = self.w.spec(preset, op)["images"]
            return "image" in slots and not slots.get("mask", {}).get("required") and op != "upscale"

        base = self.base(rng, need=fits)
        if not fits(base.preset, base.op):
            return self.image_case(rng)
        value = rng.choice(imgs.bomb_values(self.max_pixels))
        msg = base.message(self.new_id())
        msg["images"] = {k: v for k, v in msg["images"].items() if k not in ("mask", "depth")}
        msg["images"]["image"] = value.value
        if base.op in ("controlnet", "mix"):
            msg["images"]["control"] = value.value
        return self.submit_case(
            "bomb", f"{base.preset}/{base.op} images.image={value.tag}", base, msg, value.bad
        )

    # -- the submit map itself -------------------------------------------------------------------
    def submit_field_case(self, rng: random.Random) -> Case:
        base = self.base(rng)
        msg = base.message(self.new_id())
        field_name = rng.choice(["op", "model", "params", "images", "preview", "frames", "extra", "missing"])
        label, bad = field_name, False
        if field_name == "op":
            unable = [
                op
                for op in self.w.raw.get("ops", {})
                if op not in self.w.ops(base.preset) and op != "compare"
            ]
            options = [
                Value("unknown", "melt", True),
                Value("empty", "", True),
                Value("upper", base.op.upper(), True),
            ]
            options += [Value(f"unsupported:{op}", op, True) for op in unable]
            options += [v for v in wrong_kinds() if v.tag != "str"]
            value = rng.choice(options)
            msg["op"], label, bad = value.value, f"op={value.tag}", value.bad
        elif field_name == "model":
            value = rng.choice(
                [
                    Value("unknown", "sdxl-turbo", True),
                    Value("empty", "", False),  # PROTOCOL.md 5.2: "" is the default preset
                    Value("long", "m" * 100_000, True),
                    Value("nil", None, False),
                ]
                + [v for v in wrong_kinds() if v.tag not in ("str", "str_empty", "nil")]
            )
            msg["model"], label, bad = value.value, f"model={value.tag}", value.bad
            if value.tag == "nil":  # absent: the daemon's default preset, which may lack the op
                del msg["model"]
                label, bad = "model absent", False
        elif field_name in ("params", "images"):
            value = rng.choice([v for v in wrong_kinds() if v.tag not in ("map", "map_empty")])
            msg[field_name], label = value.value, f"{field_name}={value.tag}"
            bad = value.tag != "nil"
        elif field_name in ("preview", "frames"):
            value = rng.choice(
                [Value("true", True, False), Value("false", False, False)]
                + [v for v in wrong_kinds() if v.tag not in ("true", "false", "nil")]
            )
            msg[field_name], label, bad = value.value, f"{field_name}={value.tag}", value.bad
        elif field_name == "extra":
            msg["unknown_field"] = rng.choice([v.value for v in wrong_kinds()])
            msg["params"]["no_such_param_anywhere"] = 1
            label = "unknown fields (ignored)"
        else:
            msg.pop("op")
            label, bad = "op missing", True
        return self.submit_case("submit_field", f"{base.preset}/{base.op} {label}", base, msg, bad)

    # -- frames, encodings, nesting ----------------------------------------------------------------
    def frame_ref_case(self, rng: random.Random) -> Case:
        base = self.base(rng, need=lambda p, op: "image" in self.w.spec(p, op)["images"])
        msg = base.message(self.new_id())
        image = msg["images"].get("image")
        if not isinstance(image, dict):
            return self.raw_frames_case(rng)
        data = image["data"]
        ref = {k: v for k, v in image.items() if k != "data"}
        extras = [data]
        choice = rng.randrange(12)
        ref["frame"], label, bad = 1, "frame 1 (valid)", False
        if choice == 1:
            ref["frame"], label, bad = 0, "frame 0", True
        elif choice == 2:
            ref["frame"], label, bad = 2, "frame past the end", True
        elif choice == 3:
            ref["frame"], label, bad = (
                rng.choice([-1, "1", 1.0, True, None, 2**64 - 1, [1]]),
                "frame wrong kind",
                True,
            )
        elif choice == 4:
            extras, label, bad = [b""], "empty frame referenced", True
        elif choice == 5:
            extras, label, bad = [data[:-1]], "short frame referenced", True
        elif choice == 6:
            # Outside the spec only where the op reads a prompt (on this preset or another: section
            # 5.2); elsewhere `prompt` is a name no preset knows for the op, which is ignored.
            msg["params"]["prompt"] = {"frame": 1}
            reads = "prompt" in self.w.spec(base.preset, base.op)["params"]
            bad = reads or "prompt" in self.w.foreign_params(base.preset, base.op)
            label = f"frame reference in params.prompt ({'read' if reads else 'not read'} by the op)"
        elif choice == 7:
            extras, label = [data, b"unreferenced", b""], "unreferenced extra frames"
        elif choice == 8:
            extras, label = [data] + [b""] * 500, "500 extra empty frames"
        elif choice == 9:
            ref["data"], label = data, "frame and data both"
        elif choice == 10 and "mask" in msg["images"]:
            msg["images"]["mask"] = {"frame": 1, "width": base.size[0], "height": base.size[1], "channels": 3}
            label, bad = "mask refers to the image's frame (data fits: 3 channels)", False
        elif choice == 11:
            msg["images"]["image"] = {"format": "png", "frame": 1}
            extras, label, bad = [imgs.encode(*base.size)], "png data in a frame", False
        if choice != 11:
            msg["images"]["image"] = ref
        frames = [pack(msg), *extras]
        return self.submit_case("frame_ref", f"{base.preset}/{base.op} {label}", base, msg, bad, frames)

    def raw_frames_case(self, rng: random.Random) -> Case:
        good = pack({"type": "status", "id": self.new_id()})
        choice = rng.randrange(10)
        if choice == 0:
            frames, label = [rng.randbytes(rng.randrange(1, 64))], "random bytes"
        elif choice == 1:
            frames, label = [b""], "empty frame"
        elif choice == 2:
            value = rng.choice([v for v in wrong_kinds() if v.tag not in ("map", "map_empty")])
            frames, label = [pack(value.value)], f"not a map: {value.tag}"
        elif choice == 3:
            whole = pack(self.base(rng).message(self.new_id()))
            frames, label = [whole[: rng.randrange(1, len(whole))]], "truncated submit"
        elif choice == 4:
            frames, label = [good + b"\x00\x01"], "trailing bytes"
        elif choice == 5:
            frames, label = [good + good], "two maps in one frame"
        elif choice == 6:
            frames, label = [rng.randbytes(16), good], "garbage first frame, valid second"
        elif choice == 7:
            frames, label = [b"", b"", b""], "empty frames only"
        elif choice == 8:
            frames, label = [b"\xc1"], "reserved byte 0xc1"
        else:
            frames, label = [bytes([0x80 | 0x0F]) + b"\xa4type" * 3], "map header longer than its body"
        return Case("frames_raw", label, frames, None, bad=True)

    def encoding_case(self, rng: random.Random) -> Case:
        choice = rng.randrange(12)
        rid = self.new_id()
        status = {"type": "status", "id": rid}
        request, bad = "status", True
        if choice == 0:
            frame, label = (
                pack_spliced({"type": SPLICE, "id": rid}, b"\xa6st\xffus"),
                "type with invalid UTF-8",
            )
        elif choice == 1:
            msg = {**self.base(rng).message(rid)}
            msg["params"] = {**msg["params"], "prompt": SPLICE}
            frame, label, request = (
                pack_spliced(msg, b"\xa4\xed\xa0\x80x"),
                "prompt with a UTF-8 surrogate",
                "submit",
            )
        elif choice == 2:
            frame, label, bad = pack({**status, 7: "int key"}), "int map key", False
        elif choice == 3:
            frame, label, bad = (
                b"\x83" + pack("type") + pack("status") + pack("id") + pack(rid) + b"\xc0\x01",
                "nil map key",
                False,
            )
        elif choice == 4:
            frame, label = (
                b"\x83" + pack("type") + pack("status") + pack("id") + pack(rid) + b"\x91\x01\x01",
                "array key",
            )
        elif choice == 5:
            frame, label = (
                b"\x83" + pack("type") + pack("status") + pack("id") + pack(rid) + b"\x81\x01\x01\x01",
                "map key",
            )
        elif choice == 6:
            frame = (
                b"\x83"
                + pack("type")
                + pack("hello")
                + pack("id")
                + pack(rid)
                + pack("type")
                + pack("status")
            )
            label, request, bad = "duplicate key type (hello, then status)", None, False
        elif choice == 7:
            frame, label = (
                b"\xdf\xff\xff\xff\xff" + pack("type") + pack("status"),
                "map32 header of 2^32-1 entries",
            )
        elif choice == 8:
            frame = b"\x82" + pack("type") + pack("status") + pack("id") + b"\xdb\xff\xff\xff\xff" + b"abc"
            label = "str32 header of 4 GiB, 3 bytes"
        elif choice == 9:
            frame = b"\x82" + pack("type") + pack("status") + pack("id") + b"\xc6\xff\xff\xff\xf0" + b"abc"
            label = "bin32 header of 4 GiB, 3 bytes"
        elif choice == 10:
            frame = b"\x82" + pack("type") + pack("status") + pack("id") + b"\xd6\xff\x00\x00"
            label = "timestamp ext of the wrong length"
        else:
            frame = b"\x82" + pack("type") + pack("status") + pack("id") + b"\xdd\xff\xff\xff\xff\x01"
            label = "array32 header of 2^32-1 items"
        # a frame the daemon cannot decode has no id it could echo: any reply is the reply
        return Case("encoding", label, [frame], request, bad=bad)

    def nesting_case(self, rng: random.Random) -> Case:
        depth = rng.choice([32, 100, 500, 1000, 2000, 5000, 100_000])
        kind = rng.choice(["list", "map"])
        where = rng.choice(
            [
                "params.prompt",
                "params.unknown",
                "images.image",
                "top.unknown",
                "hello.client",
                "id",
                "images.image.data",
                "params.units",
            ]
        )
        rid = self.new_id()
        if where == "hello.client":
            msg: dict[str, Any] = {"type": "hello", "id": rid, "protocol": 1, "client": SPLICE}
            request = "hello"
        elif where == "id":
            msg, request, rid = {"type": "status", "id": SPLICE}, "status", NO_ID
        else:
            base = self.base(rng)
            msg, request = base.message(rid), "submit"
            if where.startswith("params."):
                msg["params"][where.split(".")[1]] = SPLICE
            elif where == "images.image":
                msg["images"]["image"] = SPLICE
            elif where == "images.image.data":
                msg["images"]["image"] = {"width": 8, "height": 8, "channels": 1, "data": SPLICE}
            else:
                msg["unknown"] = SPLICE
        frame = pack_spliced(msg, deep_bytes(depth, kind))
        bad = where not in ("params.unknown", "top.unknown")
        # too deep to decode: the daemon cannot read the id, so any reply is the reply
        return Case(
            "nesting",
            f"{depth}-deep {kind} in {where}",
            [frame],
            request,
            bad=bad,
            cost=math.inf,
            message={**msg, "_deep": f"{depth}x{kind}"},
        )

    # -- other requests ------------------------------------------------------------------------------
    def request_case(self, rng: random.Random) -> Case:
        rid = self.new_id()
        choice = rng.randrange(9)
        if choice <= 2:
            return self.hello_case(rng, rid)
        if choice == 3:
            value = rng.choice(
                [
                    Value("unknown", "paint", True),
                    Value("empty", "", True),
                    Value("upper", "HELLO", True),
                    Value("space", "hello ", True),
                    Value("nul", "status\x00", True),
                ]
                + [v for v in wrong_kinds() if v.tag != "str"]
            )
            msg = {"type": value.value, "id": rid}
            return Case("request", f"type={value.tag}", [pack(msg)], None, rid=rid, bad=True, message=msg)
        if choice == 4:
            msg = {"id": rid, "protocol": 1}
            return Case("request", "type missing", [pack(msg)], None, rid=rid, bad=True, message=msg)
        kind = rng.choice(["cancel", "status", "fetch"])
        job_values = [
            Value("unknown", "j999999", True),
            Value("empty", "", True),
            Value("long", "j" * 100_000, True),
        ]
        job_values += [Value("missing", None, kind != "status")]
        job_values += [v for v in wrong_kinds() if v.tag not in ("str", "nil")]
        if self.other_jobs:
            job_values.append(Value("another connection's", rng.choice(self.other_jobs), kind == "cancel"))
        value = rng.choice(job_values)
        msg = {"type": kind, "id": rid}
        if value.tag != "missing":
            msg["job"] = value.value
        return Case(
            "request", f"{kind} job={value.tag}", [pack(msg)], kind, rid=rid, bad=value.bad, message=msg
        )

    def hello_case(self, rng: random.Random, rid: int) -> Case:
        protocol = rng.choice(
            [
                Value("1", 1, False),
                Value("missing", None, True),
                Value("0", 0, True),
                Value("2", 2, True),
                Value("2^64-1", 2**64 - 1, True),
                Value("-1", -1, True),
                Value("1.0", 1.0, True),
                Value("'1'", "1", True),
                Value("true", True, True),
                Value("nil", None, True),
                Value("nan", float("nan"), True),
                Value("list", [1], True),
            ]
        )
        client = rng.choice(
            [
                Value("plain", "reliability-fuzz", False),
                Value("forged newline", f"fuzz\n{FORGED} 2026-01-01 INFO server: forged\r\n", False),
                Value("ansi", "\x1b[2J\x1b[31mred", False),
                Value("1 MiB", "c" * (1 << 20), False),
                Value("nul", "a\x00b", False),
                Value("nil", None, False),  # nil for an optional field reads as absent: no oracle
            ]
            + [v for v in wrong_kinds() if v.tag not in ("str", "str_empty", "nil")]
        )
        msg: dict[str, Any] = {"type": "hello", "id": rid, "client": client.value}
        if protocol.tag != "missing":
            msg["protocol"] = protocol.value
        return Case(
            "request",
            f"hello protocol={protocol.tag} client={client.tag}",
            [pack(msg)],
            "hello",
            rid=rid,
            bad=protocol.bad or client.bad,
            message=msg,
        )

    def id_case(self, rng: random.Random) -> Case:
        value = rng.choice(
            [
                Value("str", "request-7", False),
                Value("negative", -5, False),
                Value("zero", 0, False),
                Value("2^64-1", 2**64 - 1, False),
                Value("-2^63", -(2**63), False),
                Value("float", 1.5, False),
                Value("nan", float("nan"), False),
                Value("long str", "i" * 100_000, False),
                Value("nil", None, False),
            ]
            + [v for v in wrong_kinds() if v.tag in ("list", "map", "bin", "true", "ext")]
        )
        msg = {"type": rng.choice(["status", "models"]), "id": value.value}
        rid = (
            value.value if isinstance(value.value, int | str) and not isinstance(value.value, bool) else NO_ID
        )
        return Case("ids", f"{msg['type']} id={value.tag}", [pack(msg)], msg["type"], rid=rid, message=msg)

    def admin_case(self, rng: random.Random) -> Case:
        rid = self.new_id()
        preset = rng.choice(self.presets)
        choice = rng.randrange(5)
        if choice == 0:
            msg, label, bad = {"type": "load", "id": rid, "model": preset}, "load", False
        elif choice == 1:
            msg, label, bad = {"type": "load", "id": rid, "model": "no-such-preset"}, "load unknown", True
        elif choice == 2:
            unable = [op for op in self.w.raw.get("ops", {}) if op not in self.w.ops(preset)]
            msg = {"type": "load", "id": rid, "model": preset, "op": unable[0] if unable else "melt"}
            label, bad = "load an op the preset lacks", True
        elif choice == 3:
            msg, label, bad = {"type": "unload", "id": rid, "model": preset}, "unload", False
        else:
            msg, label, bad = {"type": "load", "id": rid}, "load without model", True
        return Case(
            "admin",
            f"{label} {preset}",
            [pack(msg)],
            msg["type"],
            rid=rid,
            bad=bad,
            message=msg,
            cost=math.inf if msg["type"] == "load" else 0.0,
        )

    def oversize_case(self, rng: random.Random) -> Case:
        rid = self.new_id()
        factor = rng.choice([1.01, 1.5, 1.9, 2.5])
        size = int(self.max_message * factor)
        msg = {"type": "status", "id": rid, "padding": b"\x00" * size}
        return Case(
            "oversize",
            f"message of {factor} x max_message_bytes",
            [pack(msg)],
            "status",
            bad=True,
            expect_reply=factor < 2,
            message={"type": "status", "padding": f"<{size} bytes>"},
        )


# -- valid base requests ---------------------------------------------------------------------------
def build_base(w: Welcome, preset: str, op: str, seed: int) -> Base:
    """The cheapest valid submit of `op` on `preset`: small images, few steps, a fixed seed."""
    spec = w.spec(preset, op)
    ps = spec["params"]
    side = min(64, w.resolution(preset))
    size = (side, max(8, side * 3 // 4 // 8 * 8)) if op != "upscale" else (32, 32)
    params: dict[str, Any] = {"seed": seed} if "seed" in ps else {}
    if "steps" in ps:
        params["steps"] = max(2, int(ps["steps"].get("min") or 1))
    for name in ("prior_steps", "super_res_steps"):
        if name in ps:
            params[name] = max(2, int(ps[name].get("min") or 1))
    if "prompt" in ps:
        params["prompt"] = "a lighthouse"
    if "instruction" in ps:
        params["instruction"] = "make it red"
    images: dict[str, Any] = {}
    for name, ispec in spec["images"].items():
        if ispec.get("required"):
            images[name] = imgs.mask(*size) if name == "mask" else imgs.raw(*size, salt=len(name))
    if "units" in ps:
        params["units"] = [{"model": w.controlnets(preset)[0], "image": "control"}]
        images["control"] = imgs.raw(*size, salt=3)
    if "items" in ps:
        params["items"] = [{"prompt": "a cat"}, {"image": "image", "weight": 0.5}]
        images["image"] = imgs.raw(*size, salt=4)
    return Base(preset, op, params, images, size)


def structure_values(name: str) -> list[Value]:
    """Values for the array-of-maps params (`units`, `items`, `models`) as a whole."""
    return [
        Value("empty", [], True),
        Value("1000 entries", [{}] * 1000, True),
        Value("not a list", {"model": "canny"}, True),
        Value("list of str", ["canny"], True),
        Value("list of nil", [None], True),
        Value("nested lists", [[[]]], True),
        Value("str", "canny", True),
        Value("nil", None, True),
        Value("nan", float("nan"), True),
    ]


def foreign_value(spec: dict[str, Any]) -> Any:
    """A value that would be valid for the preset that does take the param."""
    if spec.get("default") is not None:
        return spec["default"]
    if spec.get("choices"):
        return spec["choices"][0]
    return spec.get("min", 1)


def mutate_unit(
    rng: random.Random,
    units: list[dict],
    controlnets: list[str],
    available: list[str],
    preprocessors: list[dict],
    fixed: bool,
) -> tuple[str, bool]:
    """Change one thing about the ControlNet units (PROTOCOL.md section 8, `controlnet`)."""
    unit = units[0]
    choice = rng.randrange(9)
    if choice == 0:
        value = rng.choice(
            [Value("unknown", "pose", True), Value("empty", "", True)]
            + [Value(f"valid:{c}", c, False) for c in controlnets]
            + [v for v in wrong_kinds() if v.tag != "str"]
        )
        unit["model"] = value.value
        return f"units.0.model={value.tag}", value.bad
    if choice == 1:
        value = rng.choice(
            [Value("missing image", "nowhere", True), Value("empty", "", True)]
            + [v for v in wrong_kinds() if v.tag != "str"]
        )
        unit["image"] = value.value
        return f"units.0.image={value.tag}", value.bad
    if choice == 2:
        names = [p.get("name") for p in preprocessors]
        value = rng.choice(
            [Value(f"valid:{n}", n, False) for n in available]
            + [Value(f"unavailable:{n}", n, False) for n in names if n not in available]
            + [Value("unknown", "x-ray", True)]
            + [v for v in wrong_kinds() if v.tag != "str"]
        )
        unit["preprocessor"] = value.value
        return f"units.0.preprocessor={value.tag}", value.bad
    if choice in (3, 4, 5):
        name, high = [("scale", 2.0), ("start", 1.0), ("end", 1.0)][choice - 3]
        value = rng.choice(float_values({"min": 0.0, "max": high}))
        unit[name] = value.value
        default = {"scale": 1.0, "start": 0.0, "end": 1.0}[name]
        bad = value.bad or (fixed and not value.bad and value.value != default)
        if name == "start" and not value.bad and isinstance(value.value, int | float) and value.value > 1.0:
            bad = True
        if name == "end" and not value.bad and isinstance(value.value, int | float) and value.value < 0.0:
            bad = True
        return f"units.0.{name}={value.tag}", bad
    if choice == 6:
        unit["start"], unit["end"] = 0.8, 0.2
        return "units.0 start > end", True
    if choice == 7:
        count = rng.choice([0, 2, 4, 5, 64])
        units[:] = [dict(unit) for _ in range(count)]
        return f"{count} units", not 1 <= count <= (1 if fixed else 4)
    units[0] = rng.choice([v.value for v in wrong_kinds() if v.tag not in ("map",)])
    return "units.0 not a map", True


def mutate_items(rng: random.Random, msg: dict[str, Any]) -> tuple[str, bool]:
    """Change one thing about `mix.items` (PROTOCOL.md section 8, `mix`)."""
    items = msg["params"]["items"] = [dict(i) for i in msg["params"]["items"]]
    choice = rng.randrange(8)
    if choice == 0:
        count = rng.choice([0, 1, 8, 9, 100])
        items[:] = [{"prompt": f"thing {i}"} for i in range(count)]
        return f"{count} items", not 2 <= count <= 8
    if choice == 1:
        items[0] = {"prompt": "a cat", "image": "image"}
        return "item with prompt and image", True
    if choice == 2:
        items[0] = {"weight": 1.0}
        return "item with neither prompt nor image", True
    if choice == 3:
        value = rng.choice(float_values({"min": 0.0, "max": 10.0}))
        items[1]["weight"] = value.value
        return f"items.1.weight={value.tag}", value.bad
    if choice == 4:
        for item in items:
            item["weight"] = 0.0
        return "all weights 0", True
    if choice == 5:
        items[1]["image"] = "nowhere"
        return "item image names no image", True
    if choice == 6:
        items[0]["prompt"] = "p" * (PROMPT_CHARS + 1)
        return "item prompt over the limit", True
    items[0] = rng.choice([v.value for v in wrong_kinds() if v.tag not in ("map",)])
    return "items.0 not a map", True


# -- what a request costs and what its result must be ----------------------------------------------------
def _number(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("not a number")
    return float(value)


def estimate(w: Welcome, msg: dict[str, Any]) -> float:
    """Work units of a submit if it runs (one unit = one step at 64x64); inf when it cannot be told."""
    try:
        preset = msg.get("model") or w.raw.get("default_model")
        op = msg["op"]
        if op == "compare":
            op = msg["params"]["op"]
        spec = w.spec(preset, op)["params"]
        params = msg.get("params") or {}

        def get(name: str, fallback: float) -> float:
            return _number(params.get(name, spec.get(name, {}).get("default")), fallback)

        native = w.resolution(preset)
        steps = get("steps", 30) * (get("strength", 1.0) if "strength" in spec else 1.0)
        steps += get("prior_steps", 0) + 2 * get("super_res_steps", 0)
        if op == "upscale":
            image = msg["images"]["image"]
            side = _number(image.get("width"), native) * _number(image.get("height"), native)
            pixels = side * get("factor", 4) ** 2
        elif "width" in spec and "image" not in (msg.get("images") or {}):
            pixels = get("width", native) * get("height", native)
        else:
            pixels = get("resolution", native) ** 2
        work = pixels / 4096 * max(steps, 1) * get("variations", 1)
        return work if math.isfinite(work) else math.inf
    except (TypeError, KeyError, AttributeError, ValueError):
        return math.inf


def expectation(w: Welcome, msg: dict[str, Any]) -> dict[str, Any] | None:
    """What the result of this submit must say (section 6.4), when the request is well formed."""
    params = msg.get("params")
    if not isinstance(params, dict):
        return None
    seed = params.get("seed")
    variations = params.get("variations", 1)
    count = variations if isinstance(variations, int) and not isinstance(variations, bool) else None
    model = msg.get("model") or w.raw.get("default_model")  # absent, nil or "": the default
    if msg.get("op") == "compare":
        models = params.get("models")
        model = models[0] if isinstance(models, list) and models else None
        count = count * len(models) if count and isinstance(models, list) else None
    return {
        "op": msg.get("op"),
        "model": model,
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        "images": count,
    }
