"""Weighted prompt syntax in the prompt boxes: Ctrl+Up / Ctrl+Down raise or lower the weight of the
phrase under the cursor (or of the selection) in steps of 0.1, writing `(phrase:1.1)`.

Pure text, no Qt: the key handling is in `prompt_keys.py`. The syntax is the daemon's (PROTOCOL.md,
"Prompt syntax"): `(text:w)` weighs `text` by w (0 … 3), `(text)` by 1.1, groups nest, and `\\(`, `\\)`
are literal parentheses. Which phrase: the innermost group around the cursor if there is one (so a
second press adjusts what the first one wrote), else the word under the cursor, as in the Krita
plugin painters know best. A weight that comes back to 1.0 loses its parentheses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STEP = 0.1
MIN_WEIGHT, MAX_WEIGHT = 0.0, 3.0  # the daemon refuses weights outside this range
EMPHASIS = 1.1  # `(text)` without a number
WORD_DELIMITERS = frozenset(' \t\r\n,.;:!?()[]{}<>|"=/`~\\')  # \ too: `\(` is no part of a word
_NUMBER = re.compile(r"\s*[+]?(\d+\.?\d*|\.\d+)\s*\Z")


@dataclass(frozen=True)
class Group:
    """One `( … )` of the text: `start` is the index of '(', `end` the index after ')'; the phrase is
    text[inner_start:inner_end] (without `:w`)."""

    start: int
    end: int
    inner_start: int
    inner_end: int
    weight: float


@dataclass(frozen=True)
class Edit:
    """Replace text[start:end] by `replacement`; afterwards select new_text[select_start:select_end]."""

    start: int
    end: int
    replacement: str
    select_start: int
    select_end: int

    def apply(self, text: str) -> str:
        return text[: self.start] + self.replacement + text[self.end :]


def groups(text: str) -> list[Group]:
    """Every balanced, unescaped group of `text`, inner groups before the groups around them."""
    found: list[Group] = []
    opened: list[int] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in "()\\":
            i += 2
            continue
        if char == "(":
            opened.append(i)
        elif char == ")" and opened:
            start = opened.pop()
            found.append(_group(text, start, i + 1, found))
        i += 1
    return found


def _group(text: str, start: int, end: int, inner_groups: list[Group]) -> Group:
    """The group text[start:end]; its weight is a number after its last colon outside inner groups."""
    close = end - 1
    colon = text.rfind(":", start + 1, close)
    while colon >= 0 and any(g.start < colon < g.end for g in inner_groups if g.start > start):
        colon = text.rfind(":", start + 1, colon)
    if colon >= 0 and _NUMBER.match(text[colon + 1 : close]):
        return Group(start, end, start + 1, colon, float(text[colon + 1 : close]))
    return Group(start, end, start + 1, close, EMPHASIS)


def word_at(text: str, cursor: int) -> tuple[int, int]:
    """The word around `cursor` (delimited by spaces, commas, parentheses and other punctuation)."""
    start = end = max(0, min(cursor, len(text)))
    while start > 0 and text[start - 1] not in WORD_DELIMITERS:
        start -= 1
    while end < len(text) and text[end] not in WORD_DELIMITERS:
        end += 1
    return start, end


def format_weight(weight: float) -> str:
    """1.1, 0.9, 2.0, 1.25: one decimal unless the weight needs two."""
    text = f"{weight:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def adjust(text: str, sel_start: int, sel_end: int, up: bool, step: float = STEP) -> Edit | None:
    """The edit that raises (`up`) or lowers the weight of the selection, or of the phrase under the
    cursor when nothing is selected; None when there is nothing to weigh or the weight is at its limit."""
    sel_start, sel_end = sorted((max(0, sel_start), min(len(text), sel_end)))
    all_groups = groups(text)
    target: Group | None = None
    if sel_start == sel_end:
        around = [g for g in all_groups if g.start < sel_start < g.end]
        target = min(around, key=lambda g: g.end - g.start) if around else None
        start, end = (target.inner_start, target.inner_end) if target else word_at(text, sel_start)
    else:
        start, end = _trimmed(text, sel_start, sel_end)
        target = next(
            (
                g
                for g in all_groups
                if (g.start, g.end) == (start, end) or (g.inner_start, g.inner_end) == (start, end)
            ),
            None,
        )
        if target is not None:
            start, end = target.inner_start, target.inner_end
    phrase = text[start:end]
    if not phrase.strip():
        return None
    old = target.weight if target is not None else 1.0
    new = round(min(MAX_WEIGHT, max(MIN_WEIGHT, old + (step if up else -step))), 2)
    if new == round(old, 2):
        return None  # at the limit already
    outer = (target.start, target.end) if target is not None else (start, end)
    if new == 1.0:
        return Edit(outer[0], outer[1], phrase, outer[0], outer[0] + len(phrase))
    replacement = f"({phrase}:{format_weight(new)})"
    return Edit(outer[0], outer[1], replacement, outer[0] + 1, outer[0] + 1 + len(phrase))


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


# -- Qt counts UTF-16 code units, Python counts characters (they differ for emoji and the like) ------
def to_qt(text: str, index: int) -> int:
    """The Qt cursor position of Python index `index` in `text`."""
    return len(text[:index].encode("utf-16-le")) // 2


def from_qt(text: str, position: int) -> int:
    """The Python index of Qt cursor position `position` in `text`."""
    units = 0
    for i, char in enumerate(text):
        if units >= position:
            return i
        units += 2 if ord(char) > 0xFFFF else 1
    return len(text)
