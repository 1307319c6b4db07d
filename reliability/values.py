"""Values to put in a field: the boundaries of its spec, just outside them, and everything of the wrong kind.

Each `Value` says whether it lies outside the spec (`bad`): such a value must be refused before
`accepted` (PROTOCOL.md 5.2), so accepting it is a finding even when the job then runs fine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack

INF = float("inf")
NAN = float("nan")
PROMPT_CHARS = 4000  # PROTOCOL.md section 8: prompts and instructions are at most 4000 characters


@dataclass(frozen=True)
class Value:
    tag: str
    value: Any
    bad: bool


def wrong_kinds() -> list[Value]:
    """One value of every msgpack kind, for a field of any type (the caller drops the right ones)."""
    return [
        Value("nil", None, True),
        Value("true", True, True),
        Value("false", False, True),
        Value("str", "7", True),
        Value("str_empty", "", True),
        Value("bin", b"\x00\x017", True),
        Value("list", [1, 2], True),
        Value("list_empty", [], True),
        Value("map", {"value": 1}, True),
        Value("map_empty", {}, True),
        Value("float", 1.5, True),
        Value("int", 1, True),
        Value("ext", msgpack.ExtType(42, b"\x00" * 4), True),
        Value("timestamp", msgpack.Timestamp(0, 0), True),
    ]


HUGE_INTS = [
    ("2^31", 2**31),
    ("2^32", 2**32),
    ("2^53+1", 2**53 + 1),
    ("2^63-1", 2**63 - 1),
    ("2^64-1", 2**64 - 1),
    ("-2^31", -(2**31)),
    ("-2^63", -(2**63)),
]


def _in(spec: dict[str, Any], number: float) -> bool:
    low, high = spec.get("min"), spec.get("max")
    if isinstance(number, float) and not math.isfinite(number):
        return False
    if spec.get("choices") is not None:
        return number in spec["choices"]
    return (low is None or number >= low) and (high is None or number <= high)


def int_values(spec: dict[str, Any]) -> list[Value]:
    low, high = spec.get("min"), spec.get("max")
    out: list[Value] = []
    if low is not None:
        out += [Value("min", low, False), Value("min-1", low - 1, True)]
    if high is not None:
        out += [Value("max", high, False), Value("max+1", high + 1, True)]
    if low is not None and high is not None:
        out.append(Value("mid", (low + high) // 2, False))
    out += [Value(tag, n, not _in(spec, n)) for tag, n in HUGE_INTS]
    out += [Value("zero", 0, not _in(spec, 0)), Value("minus_one", -1, not _in(spec, -1))]
    out += [Value("as_float", float(low if low is not None else 1), True)]
    out += [Value("nan", NAN, True), Value("inf", INF, True), Value("-inf", -INF, True)]
    out += [v for v in wrong_kinds() if v.tag not in ("int", "nil")]
    out.append(Value("nil", None, not spec.get("nullable", False)))
    return out


def float_values(spec: dict[str, Any]) -> list[Value]:
    low, high = spec.get("min"), spec.get("max")
    out: list[Value] = []
    if low is not None:
        out += [
            Value("min", float(low), False),
            Value("min_as_int", int(low), int(low) != low),
            Value("below_min", math.nextafter(float(low), -INF), True),
            Value("min-1", float(low) - 1, True),
        ]
    if high is not None:
        out += [
            Value("max", float(high), False),
            Value("max_as_int", int(high), not _in(spec, int(high))),
            Value("above_max", math.nextafter(float(high), INF), True),
            Value("max+1", float(high) + 1, True),
        ]
    if low is not None and high is not None:
        out.append(Value("mid", (low + high) / 2, False))
    out += [
        Value("nan", NAN, True),
        Value("-nan", -NAN, True),
        Value("inf", INF, True),
        Value("-inf", -INF, True),
        Value("neg_zero", -0.0, not _in(spec, -0.0)),
        Value("denormal", 5e-324, not _in(spec, 5e-324)),
        Value("1e308", 1e308, True),
        Value("-1e308", -1e308, True),
        Value("2^64-1", 2**64 - 1, True),
        Value("-2^63", -(2**63), True),
    ]
    out += [v for v in wrong_kinds() if v.tag not in ("int", "float", "nil")]
    out.append(Value("nil", None, not spec.get("nullable", False)))
    return out


PROMPTS = [
    ("plain", "a red fox in the snow", False),
    ("unicode", "ein Fuchs im Schnee \u2603 \U0001f98a \u202e\u0645\u0631\u062d\u0628\u0627", False),
    ("nul", "a\x00b", False),
    ("newline", "line one\nINFO forged: line two\r\n", False),
    ("ansi", "\x1b[31mred\x1b[0m \x1b]0;title\x07", False),
    ("weighted", "(a red fox:1.4) in (snow:0.5)", False),
    ("weight_nan", "(fox:nan) (snow:inf)", False),
    ("weight_huge", "(fox:1e309) (snow:-1e309)", False),
    ("weight_negative", "(fox:-3)", False),
    ("unbalanced", "((((fox)) (snow", False),
    ("escaped", "\\(fox\\) \\\\ (:1.2)", False),
    ("deep_parens", "(" * 1900 + "fox" + ")" * 1900, False),
    ("deep_weighted", "(fox:1.1" * 600 + ")" * 600, False),
    ("many_tokens", " ".join(["fox"] * 999), False),
    ("at_limit", "f" * PROMPT_CHARS, False),
    ("over_limit", "f" * (PROMPT_CHARS + 1), True),
    ("very_long", "fox " * 250_000, True),
    ("empty", "", False),
    ("spaces", "   \t  ", False),
]


def str_values(spec: dict[str, Any], name: str) -> list[Value]:
    choices = spec.get("choices")
    out: list[Value] = []
    if choices:
        out += [Value(f"choice:{c}", c, False) for c in choices]
        first = str(choices[-1])
        out += [
            Value("choice_upper", first.upper() + ("" if first.upper() != first else "X"), True),
            Value("choice_padded", f" {first} ", True),
            Value("not_a_choice", "warp-drive", True),
            Value("empty", "", "" not in choices),
            Value("long", "x" * 100_000, True),
        ]
    else:
        limited = name in ("prompt", "negative_prompt", "instruction")
        for tag, text, bad in PROMPTS:
            out.append(Value(f"text:{tag}", text, bad and limited))
    out += [v for v in wrong_kinds() if v.tag not in ("str", "str_empty", "nil")]
    out.append(Value("nil", None, not spec.get("nullable", False)))
    return out + [Value("nan", NAN, True)]


def choice_values(spec: dict[str, Any]) -> list[Value]:
    """Each choice of a numeric param, and a number between or beside them."""
    choices = [c for c in spec["choices"] if isinstance(c, int | float) and not isinstance(c, bool)]
    out = [Value(f"choice:{c}", c, False) for c in choices]
    if choices:
        probe = max(choices) + 1
        out.append(Value("not_a_choice", probe, probe not in choices))
        out.append(Value("choice_as_str", str(choices[0]), True))
    return out


# A word of every base request's prompt (messages.build_base: "a lighthouse"), so a `weights` or
# `blend` entry that names it is valid where the op reads its words from the prompt (`reword`).
BASE_WORD = "lighthouse"


def words_values(spec: dict[str, Any]) -> list[Value]:
    """An array of str (`reword`'s `blend`): at most 8 words or phrases of 1 ... 100 chars, each in
    the prompts (PROTOCOL.md section 8, `reword`)."""
    most = int(spec.get("max") or 8)
    out = [
        Value("empty", [], False),
        Value("a prompt word", [BASE_WORD], False),
        Value("not in the prompts", ["zebra"], True),
        Value("empty word", [""], True),
        Value("101 chars", ["x" * 101], True),
        Value(f"{most + 1} entries", [BASE_WORD] * (most + 1), True),
        Value("int entry", [1], True),
        Value("nil entry", [None], True),
        Value("nan entry", [NAN], True),
    ]
    return out + [v for v in wrong_kinds() if v.tag not in ("list_empty",)]


def weights_values(spec: dict[str, Any]) -> list[Value]:
    """A map str -> float (`reword`'s `weights`): at most 8 entries, each 0 ... 10, keyed by words
    of the new prompt (PROTOCOL.md section 8, `reword`)."""
    most = int(spec.get("max_entries") or 8)
    out = [
        Value("empty", {}, False),
        Value("a prompt word", {BASE_WORD: 2.0}, False),
        Value("zero weight", {BASE_WORD: 0.0}, False),
        Value("max weight", {BASE_WORD: 10.0}, False),
        Value("int weight", {BASE_WORD: 2}, False),
        Value("not in the prompt", {"zebra": 1.0}, True),
        Value("above max", {BASE_WORD: 10.5}, True),
        Value("negative", {BASE_WORD: -1.0}, True),
        Value("nan", {BASE_WORD: NAN}, True),
        Value("inf", {BASE_WORD: INF}, True),
        Value("str weight", {BASE_WORD: "2"}, True),
        Value("nil weight", {BASE_WORD: None}, True),
        Value("int key", {1: 1.0}, True),
        Value(f"{most + 1} entries", {f"w{i}": 1.0 for i in range(most + 1)}, True),
    ]
    return out + [v for v in wrong_kinds() if v.tag not in ("map_empty",)]


def values_for(spec: dict[str, Any], name: str) -> list[Value]:
    """Every probe value for a param spec of the welcome (types int, float, str, bool, words,
    weights; any other type gets every wrong kind)."""
    kind = spec.get("type")
    if kind == "words":
        return words_values(spec)
    if kind == "weights":
        return weights_values(spec)
    if kind == "int" and spec.get("choices"):
        return choice_values(spec) + [v for v in int_values(spec) if v.tag not in ("mid",)]
    if kind == "int":
        return int_values(spec)
    if kind == "float":
        return float_values(spec)
    if kind == "str":
        return str_values(spec, name)
    if kind == "bool":
        return [Value("true", True, False), Value("false", False, False)] + [
            v for v in wrong_kinds() if v.tag not in ("true", "false")
        ]
    return wrong_kinds()


def deep(depth: int, kind: str = "list") -> Any:
    """A value nested `depth` levels deep (built without recursion)."""
    node: Any = 1
    for _ in range(depth):
        node = [node] if kind == "list" else {"a": node}
    return node
