"""Filters > Underpaint > Live: SDEdit of the selection re-run as the painter paints.

A GIMP plug-in runs in its own process and may keep a dialog open while GIMP stays usable: the painter
paints on the canvas, and the dialog's GLib timer reads the source layer through the PDB, sends each
settled change (debounced) as an `sdedit` job in one lane (latest wins, PROTOCOL.md 9.6) with a fixed
seed and the preset's Live sampler, and writes the newest result into one "Underpaint live" layer
above the source. The live layer is never read back (only the source layer and, where it is not
opaque, the layers below it are). Keep copies it into the Underpaint group as a normal result layer
with its parameters; closing the dialog removes it.
Non-interactive calls do one step each (`action`: update, keep, stop), for scripts and shortcuts.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from typing import Any

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, GLib  # noqa: E402

from . import job as jobs  # noqa: E402
from .connection import remember  # noqa: E402
from .gimp_io import GimpProgress, add_result_layers  # noqa: E402
from .image_jobs import parasite_bytes  # noqa: E402
from .keys import KeyFiles  # noqa: E402
from .live_below import BelowWatch  # noqa: E402
from .live_state import LANE, LIVE, LIVE_LAYER, LIVE_MARK, input_key  # noqa: E402
from .modes import LIVE as LIVE_SAMPLER  # noqa: E402
from .modes import mode_by_key  # noqa: E402
from .placement import PARASITE, LayerPlan, layer_name, plan_layers  # noqa: E402
from .presets import LIVE_FALLBACK  # noqa: E402
from .reading import (  # noqa: E402
    RGBA,
    drawable_rect,
    image_rect,
    layer_type,
    opaque,
    read_mask,
    read_rgba,
    selection_rect,
    shows_as_is,
)
from .region import crop_region  # noqa: E402
from .registration import image_procedure  # noqa: E402
from .request import JobRequest, Pixels, UserError, build_request  # noqa: E402
from .sources import as_layer, check_call, read_pixels  # noqa: E402

PROCEDURE = "plug-in-underpaint-live"
REFINE = mode_by_key("refine")  # Live reads and sends what Refine does


def create_live_procedure(plugin: Gimp.PlugIn) -> Gimp.Procedure:
    return image_procedure(
        plugin,
        PROCEDURE,
        run_live,
        label=LIVE.label,
        blurb=LIVE.blurb,
        help_text=f"{LIVE.blurb}. The dialog stays open while you paint on the source layer: each change, "
        "once it rests for the debounce delay, is sent to the Underpaint daemon as an SDEdit job (fixed "
        "seed, few-step Live sampler, one lane so only the newest counts). Keep copies the live layer "
        "into the Underpaint group; closing removes the live layer. Non-interactive: action update, keep "
        "or stop.",
        image_types="RGB*, GRAY*",
        sensitivity=Gimp.ProcedureSensitivityMask.DRAWABLE,
        args=LIVE.args,
    )


def job_values(values: dict[str, Any]) -> dict[str, Any]:
    """Refine's argument values for a live job: one picture, the Live sampler, the source layer."""
    return {
        **values,
        "steps": LIVE_FALLBACK["steps"],  # what the Live sampler sends where a preset's map has none
        "guidance": LIVE_FALLBACK["guidance_scale"],
        "variations": 1,
        "rank": False,
        "sampler": LIVE_SAMPLER,
        "source": "drawable",
    }


@dataclass
class Sent:
    """A live job's request and the pixels it was made of (placing its result needs the region)."""

    request: JobRequest
    pixels: Pixels


class LiveCanvas:
    """The image side of Live mode: reading the source, the live layer, Keep and Stop."""

    def __init__(self, image: Gimp.Image, source: Gimp.Drawable) -> None:
        self.image, self.source = image, source
        self.below = BelowWatch()

    def _check(self) -> None:
        if not self.image.is_valid() or not self.source.is_valid():
            raise UserError("The layer Live was started on is gone; close Live and start it again.")

    def fingerprint(self, values: dict[str, Any]) -> str:
        """What a live job would be made of, cheaply: the source layer's own pixels over the area it
        would send, the selection there and the settings, read every tick; where the source is not
        opaque, the layers below it too, a layer per tick (live_below.py). Compositing them is left to
        `read`, once a change is due."""
        self._check()
        selection = selection_rect(self.image)
        area = crop_region(image_rect(self.image), selection, drawable_rect(self.source),
                           int(values.get("padding") or 0))  # fmt: skip
        if area.empty:
            raise UserError("Live: the selection and the layer do not overlap the image.")
        mask = read_mask(self.image, area) if selection is not None else None
        pixels = read_rgba(self.source, area)
        seen_alone = opaque(pixels) and shows_as_is(self.source)
        below = "" if seen_alone else self.below.key(self.image, self.source, area)
        settings = {k: v for k, v in values.items() if k != "delay"}  # when to send is not what is sent
        return input_key(pixels, mask, {**settings, "area": area.as_list(), "below": below})

    def read(self, values: dict[str, Any]) -> Pixels:
        """The source as a live job sends it (as the painter sees it)."""
        self._check()
        return read_pixels(REFINE, self.image, self.source, job_values(values))

    def request(self, values: dict[str, Any], pixels: Pixels, session: jobs.Session) -> Sent:
        """The lane's next job, fitted to the preset (its Live sampler merged)."""
        request = build_request(REFINE, job_values(values), pixels)
        request.lane = LANE
        return Sent(session.fit(request), pixels)

    def plan(self, sent: Sent, result: dict[str, Any]) -> LayerPlan:
        (plan, *_) = plan_layers(LIVE, result, sent.pixels.region, not_sent=sent.request.not_sent)
        return plan

    def layer(self) -> Gimp.Layer | None:
        """The live layer of this image (a saved image may still hold one from an earlier run)."""
        return next(iter(live_layers(self.image)), None)

    def show(self, plan: LayerPlan) -> None:
        """Write the result into the live layer (made above the source the first time)."""
        layer = self.layer()
        if layer is not None and (layer.get_width(), layer.get_height()) != (plan.width, plan.height):
            self.image.remove_layer(layer)
            layer = None
        if layer is None:
            layer = Gimp.Layer.new(self.image, LIVE_LAYER, plan.width, plan.height, layer_type(self.image),
                                   100.0, Gimp.LayerMode.NORMAL)  # fmt: skip
            source = as_layer(self.source)
            selected = list(self.image.get_selected_layers())
            self.image.insert_layer(layer, source.get_parent(), self.image.get_item_position(source))
            self.image.set_selected_layers(selected)  # GIMP selects a new layer: the brush stays on yours
            layer.attach_parasite(Gimp.Parasite.new(LIVE_MARK, Gimp.PARASITE_PERSISTENT, list(b"1")))
        layer.set_offsets(plan.x, plan.y)
        buffer = layer.get_buffer()  # the pixels only: no undo step per picture
        buffer.set(Gegl.Rectangle.new(0, 0, plan.width, plan.height), RGBA, plan.data)
        buffer.flush()
        layer.update(0, 0, plan.width, plan.height)
        layer.attach_parasite(Gimp.Parasite.new(PARASITE, Gimp.PARASITE_PERSISTENT, list(plan.parasite)))
        Gimp.displays_flush()

    def keep(self) -> Gimp.Layer:
        """Copy the live layer into the Underpaint group as a normal result layer, with its parameters."""
        layer = self.layer()
        if layer is None or layer.get_parasite(PARASITE) is None:
            raise UserError("There is no live picture to keep yet: run Live (action update) first.")
        stored = parasite_bytes(layer.get_parasite(PARASITE))
        about = json.loads(stored.decode("utf-8"))
        width, height = layer.get_width(), layer.get_height()
        data = layer.get_buffer().get(
            Gegl.Rectangle.new(0, 0, width, height), 1.0, RGBA, Gegl.AbyssPolicy.NONE
        )
        _, x, y = layer.get_offsets()
        name = layer_name(LIVE, about.get("seed"), about.get("model"))
        plan = LayerPlan(name, x, y, width, height, bytes(data), stored)
        selected = list(self.image.get_selected_layers())
        (kept,) = add_result_layers(self.image, as_layer(self.source), [plan])
        self.image.set_selected_layers(selected)  # painting goes on where it was
        Gimp.displays_flush()
        return kept

    def stop(self) -> int:
        """Remove the live layer(s); nothing else changes. Returns how many were removed."""
        if not self.image.is_valid():  # the painter closed the image while Live was open
            return 0
        layers = live_layers(self.image)
        for layer in layers:
            self.image.remove_layer(layer)
        if layers:
            Gimp.displays_flush()
        return len(layers)


def live_layers(image: Gimp.Image) -> list[Gimp.Layer]:
    """Every layer marked as a live layer, anywhere in the layer tree."""
    found, stack = [], list(image.get_layers())
    while stack:
        item = stack.pop(0)
        if item.is_group_layer():
            stack.extend(item.get_children())
        elif item.get_parasite(LIVE_MARK) is not None:
            found.append(item)
    return found


def _values(config: Gimp.ProcedureConfig) -> dict[str, Any]:
    return {arg.name: config.get_property(arg.name) for arg in LIVE.args}


def update_once(canvas: LiveCanvas, values: dict[str, Any]) -> None:
    """One live picture of the source as it is now (a script's or a shortcut's Live step)."""
    progress = GimpProgress("Underpaint: Live")
    try:
        with jobs.Session(str(values["endpoint"]).strip(), keys=KeyFiles.from_values(values)) as session:
            sent = canvas.request(values, canvas.read(values), session)
            result = session.run(sent.request, progress)
        canvas.show(canvas.plan(sent, result))
    finally:
        progress.end()


def action_of(run_mode: Gimp.RunMode, config: Gimp.ProcedureConfig) -> str:
    """What a call does: the dialog (which updates, keeps and stops), or its `action`."""
    if run_mode == Gimp.RunMode.INTERACTIVE:
        return "update"
    return str(config.get_property("action") or "update")


def _error(procedure: Gimp.Procedure, message: str) -> Gimp.ValueArray:
    error = GLib.Error.new_literal(Gimp.PlugIn.error_quark(), message, 0)
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, error)


def run_live(
    procedure: Gimp.Procedure,
    run_mode: Gimp.RunMode,
    image: Gimp.Image,
    drawables: list[Gimp.Drawable],
    config: Gimp.ProcedureConfig,
    _data: object,
) -> Gimp.ValueArray:
    """The dialog (interactive), or one action (update, keep, stop)."""
    try:
        check_call(REFINE, image, drawables)
        source = as_layer(drawables[0])
        if source.get_parasite(LIVE_MARK) is not None and action_of(run_mode, config) == "update":
            raise UserError(
                "Live paints from the layer you paint on, not from its own live layer: select the layer "
                "below it in the Layers dialog, then start Live again."
            )
        canvas = LiveCanvas(image, source)
        if run_mode == Gimp.RunMode.INTERACTIVE:
            from .live_dialog import run_live_dialog

            if not run_live_dialog(procedure, config, canvas):
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, None)
            remember(_values(config))
            return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)
        values = _values(config)
        action = action_of(run_mode, config)
        if action == "keep":
            canvas.keep()
        elif action == "stop":
            canvas.stop()
        else:
            update_once(canvas, values)
        return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)
    except UserError as exc:
        return _error(procedure, str(exc))
    except Exception as exc:  # a bug: report it rather than leaving GIMP with a dead plug-in
        traceback.print_exc()
        return _error(procedure, f"Underpaint Live failed: {type(exc).__name__}: {exc}")
