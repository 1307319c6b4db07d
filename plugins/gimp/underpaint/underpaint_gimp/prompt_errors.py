"""A prompt the daemon cannot read, told the way a painter can fix it.

The daemon refuses malformed prompt syntax before accepting the job: `invalid_value` on
`params.prompt` (or `negative_prompt`, `instruction`, a Mix item's `prompt`) with `position`, the
0-based character it points at (PROTOCOL.md, "Prompt syntax"). This module turns that into a message
naming the field and the character and showing the text around it, and remembers which plug-in
argument holds the text, so the dialog can show the message under that field. Pure Python.
"""

from __future__ import annotations

from typing import Any

from .request import UserError

# Prompt fields on the wire -> (the plug-in argument that holds the text, its name for people).
PROMPT_FIELDS = {
    "prompt": ("prompt", "The prompt"),
    "negative_prompt": ("negative-prompt", "The negative prompt"),
    "instruction": ("instruction", "The instruction"),
}
EXCERPT = 24  # characters shown on each side of a syntax error


class PromptError(UserError):
    """The daemon refused a prompt's syntax; `argument` is the plug-in argument holding the text and
    `position` the 0-based character the daemon points at (None when it did not say), so a dialog can
    show the message next to that field and put the cursor there."""

    def __init__(self, message: str, argument: str, position: int | None, what: str = "the prompt") -> None:
        super().__init__(message)
        self.argument, self.position, self.what = argument, position, what


def _prompt_field(field: str) -> tuple[str, str] | None:
    """`params.prompt`, `params.items.2.prompt` -> (wire name, plug-in argument); None otherwise."""
    parts = field.split(".")
    if len(parts) < 2 or parts[0] != "params":
        return None
    name = parts[-1]
    return (name, PROMPT_FIELDS[name][0]) if name in PROMPT_FIELDS else None


def _text_at(params: dict[str, Any], field: str) -> str:
    """The text `field` (a dotted path into the submit) names, "" when it names nothing."""
    value: Any = {"params": params}
    for part in field.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return ""
    return value if isinstance(value, str) else ""


def excerpt(text: str, position: int) -> str:
    """The text around `position`, marked: 'a red fox ▶) in the snow'."""
    start, end = max(0, position - EXCERPT), min(len(text), position + EXCERPT)
    head = ("…" if start else "") + text[start:position]
    return f"{head}▶{text[position:end]}" + ("…" if end < len(text) else "")


def prompt_error(reply: dict[str, Any], params: dict[str, Any]) -> PromptError | None:
    """A PromptError for an `invalid_value` about a prompt's syntax (PROTOCOL.md "Prompt syntax"), else
    None. The message names the field and the position and shows where in the text it is."""
    field = str(reply.get("field") or "")
    which = _prompt_field(field)
    if reply.get("code") != "invalid_value" or which is None:
        return None
    name, argument = which
    label = PROMPT_FIELDS[name][1]
    detail = str(reply.get("message") or "").removeprefix(f"{field}:").strip() or "not valid prompt syntax"
    position = reply.get("position")
    if not isinstance(position, int):
        return PromptError(
            f"{label} was refused by the Underpaint daemon: {detail}", argument, None, label.lower()
        )
    text = _text_at(params, field)
    there = f"\n    {excerpt(text, position)}" if text else ""
    return PromptError(
        f"{label} has a syntax error at character {position} (the first character is 0): {detail}{there}\n"
        "Weigh a phrase with (text:1.3); write \\( and \\) for literal parentheses.",
        argument,
        position,
        label.lower(),
    )
