"""What is kept of a result: the layer's name (mode, seed, preset, prompt) and the record stored in
the document, enough to reproduce the layer later. Pure Python, unit-tested outside Krita."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from .modes import INSTRUCTION, PROMPT, FormValues


def text_head(form: FormValues, limit: int = 40) -> str:
    """The prompt (or instruction) in a few words, for layer names."""
    mode = form.run_mode()
    if INSTRUCTION in mode.fields:
        text = form.instruction
    elif PROMPT in mode.fields:
        text = form.prompt
    else:
        text = ""
    words = " ".join(text.split())
    return words if len(words) <= limit else words[: limit - 1].rstrip() + "\u2026"


def layer_name(
    form: FormValues,
    seed: int,
    preset: str = "",
    seconds: float | None = None,
    label: str | None = None,
    score: float | None = None,
) -> str:
    """e.g. 'Inpaint #1234 (sd15): a red fox', or with Compare's time: 'Refine #7 (sdxl, 2.1 s): ...',
    a ranked one's CLIP score: 'Generate #5 (sd15, score 0.312): ...'; `label` replaces the mode's
    (Reword)."""
    head = text_head(form)
    label = label or form.run_mode().label
    timed = f"{seconds:.2f} s" if seconds is not None else ""
    scored = f"score {score:.3f}" if score is not None else ""
    tags = [t for t in (preset, timed, scored) if t]
    name = f"{label} #{seed}" + (f" ({', '.join(tags)})" if tags else "")
    return f"{name}: {head}" if head else name


def generation_record(
    form: FormValues, result: dict[str, Any], image: dict[str, Any], placed_at: tuple[int, int], extra: dict
) -> dict[str, Any]:
    """What is kept with the document so a result layer can be reproduced later: the preset that
    made it, and its own parameters (for Compare: that preset's part of the job)."""
    seed = image.get("seed", result.get("seed"))
    preset = image.get("model") or result.get("model")
    record: dict[str, Any] = {
        "mode": form.mode,
        "op": result.get("op"),
        "model": preset,
        "preset": preset,
        "params": {**(result.get("params") or {}), "seed": seed},
        "seed": seed,
        "x": placed_at[0],
        "y": placed_at[1],
        "width": image.get("width"),
        "height": image.get("height"),
        "form": asdict(form),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stamp": round(time.time(), 3),  # orders the history strip (newest job first)
        **extra,
    }
    if image.get("score") is not None:  # a ranked job (rank: true): this picture's CLIP score
        record["score"] = float(image["score"])
    entry = compare_entry(result, preset)
    if entry is not None:
        record["op"] = form.run_mode().op
        record["params"] = {**(entry.get("params") or {}), "seed": seed}
        record["compare"] = {k: v for k, v in entry.items() if k != "params"}
        record["family"] = entry.get("family")
    return record


def best_image(images: list[dict[str, Any]]) -> int:
    """The index of the picture to show: the highest CLIP score of a ranked result (the daemon sends
    them best first, so 0), else the first."""
    scores = [image.get("score") for image in images]
    if not images or any(score is None for score in scores):
        return 0
    return max(range(len(images)), key=lambda i: (float(scores[i]), -i))


def compare_entry(result: dict[str, Any], preset: str | None) -> dict[str, Any] | None:
    """Compare's summary of one preset (model, family, load, run, images, params, ignored, error)."""
    for entry in result.get("compare") or []:
        if entry.get("model") == preset:
            return entry
    return None


def compare_problems(result: dict[str, Any]) -> list[str]:
    """What went wrong for some presets of a Compare job (the others still delivered)."""
    out = []
    for entry in result.get("compare") or []:
        error = entry.get("error")
        if error:
            out.append(f"{entry.get('model')}: {error.get('message') or error.get('code')}")
    return out


def merge_records(existing: bytes | None, new: dict[str, dict[str, Any]]) -> bytes:
    """Add layer records (uuid -> record) to the document's JSON annotation, keeping the old ones."""
    data: dict[str, Any] = {}
    if existing:
        try:
            data = json.loads(bytes(existing).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            data = {}
    if not isinstance(data, dict) or not isinstance(data.get("layers"), dict):
        data = {"format": "underpaint-krita/1", "layers": {}}
    data["layers"].update(new)
    return json.dumps(data, indent=1, sort_keys=True, default=str).encode("utf-8")
