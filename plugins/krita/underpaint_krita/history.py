"""The history strip's entries, read from the records the docker keeps in the document (records.py):
one per result layer, newest first, with what the strip shows (mode, seed, preset) and what a click
puts back into the form. Pure Python, unit-tested outside Krita.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .modes import MODES_BY_KEY, FormValues, form_values


@dataclass(frozen=True)
class Entry:
    """One result of the document."""

    uuid: str  # the result layer's Node.uniqueId()
    mode: str  # the mode that made this layer (for Compare: the mode each model ran)
    seed: int | None
    preset: str
    name: str  # the layer's name when it was made
    created: str
    record: dict[str, Any] = field(repr=False, hash=False, compare=False)

    @property
    def mode_label(self) -> str:
        mode = MODES_BY_KEY.get(self.mode)
        return mode.label if mode else self.mode

    @property
    def label(self) -> str:
        return f"{self.mode_label} #{self.seed if self.seed is not None else '?'}"

    def caption(self) -> str:
        """The strip's text under the thumbnail: mode, seed, preset (one line each)."""
        seed = f"#{self.seed}" if self.seed is not None else "#?"
        return f"{self.mode_label}\n{seed}\n{self.preset or 'default model'}"

    def tooltip(self) -> str:
        form = self.record.get("form") or {}
        text = form.get("instruction") if self.mode == "instruct" else form.get("prompt")
        lines = [self.name or self.label, f"model: {self.preset or '?'}  \u00b7  seed: {self.seed}"]
        if text:
            lines.append(f"{'instruction' if self.mode == 'instruct' else 'prompt'}: {text}")
        if self.created:
            lines.append(f"made {self.created}")
        lines.append("Click: put its model, mode, prompt, settings and seed back into the form.")
        return "\n".join(lines)


def entries(annotation: bytes | None) -> list[Entry]:
    """The document's results, newest first (records of a broken annotation are skipped)."""
    if not annotation:
        return []
    try:
        data = json.loads(bytes(annotation).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return []
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, dict):
        return []
    out = []
    for uuid, record in layers.items():
        if not isinstance(record, dict):
            continue
        form = record.get("form") if isinstance(record.get("form"), dict) else {}
        mode = str(form.get("mode") or record.get("mode") or "")
        if mode == "compare":
            mode = str(form.get("compare_mode") or "generate")
        seed = record.get("seed")
        out.append(
            Entry(
                uuid=str(uuid),
                mode=mode,
                seed=int(seed) if isinstance(seed, int) else None,
                preset=str(record.get("preset") or record.get("model") or ""),
                name=str(record.get("name") or ""),
                created=str(record.get("created") or ""),
                record=record,
            )
        )
    # Newest job first (`stamp`: seconds, missing in older records), its pictures in seed order.
    out.sort(key=lambda e: (float(e.record.get("stamp") or 0.0), e.created, -(e.seed or 0)), reverse=True)
    return out


def form_of(entry: Entry) -> FormValues:
    """The form that makes this result again: its own mode, model and seed (a Compare result: the
    mode its model ran, on that model alone); layers it read are kept by uniqueId."""
    saved = entry.record.get("form")
    form = form_values(saved if isinstance(saved, dict) else {})
    form.mode = entry.mode if entry.mode in MODES_BY_KEY else form.mode
    form.compare_models = []
    form.model = entry.preset or form.model
    form.seed = entry.seed
    extras = form.extras
    used = entry.record.get("params")
    if isinstance(used, dict):  # Compare: only the options this preset took, as it took them
        extras = {name: used[name] for name in extras if name in used}
    form.extras = extras
    return form
