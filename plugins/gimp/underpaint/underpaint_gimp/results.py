"""Placing a job's result on its image: the same whether it arrives while the call waits or later.

Everything a placement needs was stored when the daemon accepted the job (`pending.PendingJob`), so a
result fetched after a dropped link or a GIMP restart lands exactly where it would have: above the
layer the call ran on (found again by its tattoo), in the Underpaint group, with the selection of
that time as the mask of a picture that fills it. Existing layers are never touched; a result that
is already on the image (the same job id in a layer's parasite) is not placed twice.
"""

from __future__ import annotations

import json
from typing import Any

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp  # noqa: E402

from .gimp_io import add_result_layers, new_image_with, rgb_copy, twin_of  # noqa: E402
from .image_jobs import parasite_bytes  # noqa: E402
from .modes import mode_by_key  # noqa: E402
from .pending import PendingJob  # noqa: E402
from .placement import PARASITE, plan_layers  # noqa: E402
from .request import UserError  # noqa: E402


def show(image: Gimp.Image) -> None:
    """Open a view on a new image; gimp-console has no displays, and the image is returned anyway."""
    try:
        Gimp.Display.new(image)
    except TypeError:  # "constructor returned NULL" without a user interface
        pass


def report_compare(result: dict[str, Any]) -> None:
    """Compare succeeds when any preset delivered; say which did not, and why."""
    failed = [e for e in result.get("compare") or [] if e.get("error")]
    if failed:
        lines = [f"{e['model']}: {e['error'].get('message', e['error'].get('code'))}" for e in failed]
        Gimp.message("Underpaint Compare: some presets gave no picture.\n" + "\n".join(lines))


def placed_jobs(image: Gimp.Image) -> set[str]:
    """Job ids whose results are already layers of `image` (from their `underpaint-params`)."""
    found: set[str] = set()
    stack = list(image.get_layers())
    while stack:
        item = stack.pop()
        if item.is_group_layer():
            stack.extend(item.get_children())
        parasite = item.get_parasite(PARASITE)
        if parasite is None:
            continue
        try:
            job = json.loads(parasite_bytes(parasite).decode("utf-8")).get("job")
        except (UnicodeDecodeError, ValueError, AttributeError):
            continue
        if isinstance(job, str):
            found.add(job)
    return found


def place(image: Gimp.Image, job: PendingJob, result: dict[str, Any], interactive: bool) -> Gimp.Image | None:
    """Add the result layers of `job` (Upscale: in a new image; an indexed image: in an RGB copy of
    it) and return the new image, if one was made."""
    mode, base = mode_by_key(job.mode), mode_by_key(job.base)
    plans = plan_layers(mode, result, job.rect, job.fit, not_sent=job.not_sent, sources=dict(job.sources))
    if not plans:
        raise UserError("The Underpaint daemon returned no image.")
    if mode.key == "compare":
        report_compare(result)
    if base.new_image:
        new_image = new_image_with(image, plans)
        if interactive:
            show(new_image)
        return new_image
    if job.job and job.job in placed_jobs(image):
        return None  # placed before (a run that ended between placing and forgetting the job)
    anchor = image.get_layer_by_tattoo(job.anchor) if job.anchor is not None else None
    target = image
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        target = rgb_copy(image)
        anchor = twin_of(target, image, anchor)
    mask = (job.rect, job.mask) if job.mask is not None else None
    add_result_layers(target, anchor, plans, mask)
    if target is image:
        Gimp.displays_flush()
        return None
    if interactive:
        show(target)
        Gimp.message(
            "Underpaint: this image is indexed (a palette cannot hold the model's colours), so the "
            "results are in an RGB copy of it, opened beside it. The indexed image is unchanged."
        )
    return target
