"""A job's life in the document: the preview layer while it runs, its results as layers (or a new
document for Upscale) with their stored records when it ends, the clean-up when it does not.

Split from docker.py so the docker keeps to the form, the buttons and the status; this module does
the document side through layers.py (writing) and records.py (what is kept)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from . import presets
from .document import Capture
from .jobs import Job
from .layers import Preview, Target, insert_results, layers_of, open_upscaled, save_records, target_for
from .modes import FormValues, Mode
from .progress import Progress
from .records import compare_entry, compare_problems, generation_record, layer_name

PREVIEW_INTERVAL = 0.25  # s between preview layer updates (each one recomposites the image)


@dataclass
class JobContext:
    """What the docker remembers about a submitted job to place its result later."""

    doc: Any
    form: FormValues
    mode: Mode  # the mode that reads and places (Compare: its base mode)
    label: str  # what the painter picked, for messages
    capture: Capture
    anchor: Any
    progress: Progress
    target: Target | None = None
    preview: Preview | None = None
    preview_at: float = 0.0
    submitted: float = field(default_factory=time.monotonic)
    placed: list[tuple[Any, Any]] = field(default_factory=list)
    closed: bool = False  # its document was closed while it ran
    path: str = ""  # its document's file ("" never saved): where the result goes once doc is gone
    anchor_id: str = ""  # uniqueId of `anchor`, and of the preview layer: to find them again
    preview_id: str = ""
    parked: str = ""  # why the job goes on without its document open ("" it is open)
    reword_of: str = ""  # a Reword job: uniqueId of the result layer it rewords (reword.py)


def document_name(doc: Any) -> str:
    """How the painter knows the document: its file name, else its title."""
    path = str(doc.fileName() or "")
    return path.replace("\\", "/").rsplit("/", 1)[-1] if path else str(doc.name() or "untitled")


def show_preview(context: JobContext, preview: dict[str, Any]) -> None:
    if context.doc is None or context.mode.op == "upscale":
        return
    now = time.monotonic()
    if now - context.preview_at < PREVIEW_INTERVAL and context.preview is not None:
        return
    context.preview_at = now
    if context.target is None:
        context.target = target_for(context.doc, context.anchor)
    if context.preview is None:
        context.preview = Preview(context.target, context.capture.region, context.capture.mask)
    context.preview.show(preview)


def clean_up(context: JobContext) -> None:
    """The job ended without a result: take out what it added (preview layer, a group it made)."""
    if context.doc is None:
        return
    if context.preview is not None:
        context.preview.remove()
    elif context.target is not None:
        context.target.discard(None)


def layer_names(context: JobContext, result: dict[str, Any], fallback_seed: int) -> list[str]:
    """One name per image: mode, seed, the preset that made it (Compare: its seconds; a ranked job:
    the picture's CLIP score)."""
    names = []
    for image in result.get("images") or []:
        preset = str(image.get("model") or result.get("model") or "")
        entry = compare_entry(result, preset) if context.form.mode == "compare" else None
        seconds = float(entry.get("run") or 0.0) if entry is not None else None
        label = "Reword" if context.reword_of else None
        score = float(image["score"]) if image.get("score") is not None else None
        seed = int(image.get("seed", fallback_seed))
        names.append(layer_name(context.form, seed, preset, seconds, label, score))
    return names


def record_extra(capture: Capture, result: dict[str, Any], welcome: dict[str, Any]) -> dict[str, Any]:
    """What a result layer's record says beyond the form and the result: the daemon, the model's family,
    what was read; one stamp per job, so its pictures stay in seed order in the history strip."""
    return {
        "daemon": welcome.get("daemon"),
        "device": welcome.get("device"),
        "family": presets.find(welcome, result.get("model")).get("family"),
        "source": capture.source,
        "source_layers": capture.source_layers,
        "region": capture.region.as_list(),
        "stamp": round(time.time(), 3),
    }


def place_result(krita: Any, context: JobContext, result: dict[str, Any], welcome: dict[str, Any]) -> str:
    """Put the result into the document (Upscale: a new one) with its records; returns the message."""
    images = result.get("images") or []
    seed = int(result.get("seed", 0))
    names = layer_names(context, result, seed)
    extra = record_extra(context.capture, result, welcome)
    if context.reword_of:
        extra["reword_of"] = context.reword_of
    if context.mode.op == "upscale":
        title = f"Upscaled x{context.form.factor} #{seed}"
        new_doc = open_upscaled(krita, result, title, names)
        nodes = layers_of(new_doc.rootNode())[-len(images) :]
        save_records(
            new_doc,
            {
                node.uniqueId().toString(): {
                    **generation_record(context.form, result, image, (0, 0), extra),
                    "name": node.name(),
                }
                for node, image in zip(nodes, images, strict=False)
            },
        )
        return f"Upscale: opened {title} ({images[0]['width']}x{images[0]['height']})."
    if context.target is None:
        context.target = target_for(context.doc, context.anchor)
    placed = insert_results(
        context.target,
        context.preview,
        result,
        context.capture.region,
        context.capture.mask,
        context.capture.size,
        names,
    )
    context.preview = None
    records = {}
    for (node, rect), image in zip(placed, images, strict=True):
        records[node.uniqueId().toString()] = {
            **generation_record(context.form, result, image, (rect.x, rect.y), extra),
            "name": node.name(),
        }
    save_records(context.doc, records)
    context.placed = placed
    seeds = ", ".join(str(image.get("seed")) for image in images)
    text = (
        f"{context.label}: added {len(placed)} layer(s) in the '{context.target.group.name()}' group "
        f"of {document_name(context.doc)} (seed {seeds})."
    )
    return text + "".join(f" Failed: {p}." for p in compare_problems(result))


def history_entry(job: Job) -> dict[str, Any]:
    """What the docker keeps of a finished job (for scripts and tests: docker.jobs_seen)."""
    context: JobContext = job.context
    entry: dict[str, Any] = {
        "mode": context.form.mode,
        "op": job.op,
        "state": job.state.value,
        "message": job.message,
        "error_code": job.error_code,
        "job": job.job_id,
        "events": list(job.events),
        "region": context.capture.region.as_list(),
        "seconds": round(time.monotonic() - context.submitted, 3),
        "progress": context.progress.text(),  # what the painter last read
        "calls": [job.step, job.total],  # the daemon's last progress, in model calls
    }
    if job.result is not None:
        entry["seed"] = job.result.get("seed")
        entry["model"] = job.result.get("model")
        entry["compare"] = job.result.get("compare")
        entry["images"] = [
            {k: image.get(k) for k in ("x", "y", "width", "height", "seed", "model", "score")}
            for image in job.result.get("images") or []
        ]
        entry["layers"] = [
            {"name": node.name(), "uuid": node.uniqueId().toString(), "rect": rect.as_list()}
            for node, rect in context.placed
        ]
    return entry
