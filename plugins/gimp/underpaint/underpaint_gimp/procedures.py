"""The GIMP plug-in class: one `Gimp.ImageProcedure` per mode, a dialog when interactive.

`run` is the whole flow of one call: check the selection, (dialog), read the crop, talk to the daemon
with GIMP's progress bar moving, add the result layers. Every failure a user can fix ends in an
EXECUTION_ERROR carrying a readable message (GIMP shows it; batch callers get it from
`pdb.get_last_error()`), never in a hang or a half-made result.
"""

from __future__ import annotations

import traceback
from typing import Any

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, GLib, GObject  # noqa: E402

from . import job as jobs  # noqa: E402
from .gimp_io import (  # noqa: E402
    GimpProgress,
    add_result_layers,
    drawable_rect,
    image_rect,
    new_image_with,
    read_mask,
    read_rgba,
    read_visible,
    selection_rect,
)
from .modes import MENU_PATH, MODES, Arg, Mode, mode_by_procedure  # noqa: E402
from .placement import LayerPlan, plan_layers  # noqa: E402
from .region import crop_region, upscale_region  # noqa: E402
from .request import Pixels, UserError, build_request  # noqa: E402

FLAGS = GObject.ParamFlags.READWRITE


def _add_argument(procedure: Gimp.Procedure, arg: Arg) -> None:
    if arg.kind == "str":
        procedure.add_string_argument(arg.name, arg.nick, arg.blurb, arg.default, FLAGS)
    elif arg.kind == "int":
        procedure.add_int_argument(
            arg.name, arg.nick, arg.blurb, int(arg.min), int(arg.max), arg.default, FLAGS
        )
    elif arg.kind == "float":
        procedure.add_double_argument(arg.name, arg.nick, arg.blurb, arg.min, arg.max, arg.default, FLAGS)
    elif arg.kind == "choice":
        choice = Gimp.Choice.new()
        for index, (value, label) in enumerate(arg.choices):
            choice.add(value, index, label, "")
        procedure.add_choice_argument(arg.name, arg.nick, arg.blurb, choice, arg.default, FLAGS)
    elif arg.kind == "layer":
        procedure.add_layer_argument(arg.name, arg.nick, arg.blurb, True, FLAGS)
    else:
        raise ValueError(f"unknown argument kind {arg.kind}")


def create_procedure(plugin: Gimp.PlugIn, name: str) -> Gimp.Procedure:
    mode = mode_by_procedure(name)
    procedure = Gimp.ImageProcedure.new(plugin, name, Gimp.PDBProcType.PLUGIN, run, mode)
    procedure.set_image_types("RGB*, GRAY*")
    mask = Gimp.ProcedureSensitivityMask.DRAWABLE
    if not mode.uses_image:
        mask |= Gimp.ProcedureSensitivityMask.DRAWABLES | Gimp.ProcedureSensitivityMask.NO_DRAWABLES
    procedure.set_sensitivity_mask(mask)
    procedure.set_menu_label(mode.label)
    procedure.add_menu_path(MENU_PATH)
    procedure.set_documentation(
        mode.blurb,
        f"{mode.blurb}. Runs the '{mode.op}' op on an Underpaint daemon (underpaint serve) and adds the "
        "result as new layers in an 'Underpaint' layer group above the active layer"
        + (" (Upscale: in a new image)" if mode.new_image else "")
        + "; the parameters are stored in the 'underpaint-params' parasite of each layer.",
        name,
    )
    procedure.set_attribution("Underpaint", "Underpaint contributors", "2026")
    for arg in mode.args:
        _add_argument(procedure, arg)
    if mode.new_image:
        procedure.add_image_return_value("new-image", "New image", "The upscaled image", True, FLAGS)
    return procedure


def _values(mode: Mode, config: Gimp.ProcedureConfig) -> dict[str, Any]:
    return {arg.name: config.get_property(arg.name) for arg in mode.args}


def _dialog(procedure: Gimp.Procedure, config: Gimp.ProcedureConfig, mode: Mode) -> bool:
    gi.require_version("Gtk", "3.0")
    gi.require_version("GimpUi", "3.0")
    from gi.repository import GimpUi, Gtk

    if not Gtk.init_check()[0]:  # GimpUi.init would end the plug-in process without a display
        raise UserError(
            f"Underpaint {mode.title} cannot open its dialog: there is no display. Call it "
            "non-interactively (RUN-NONINTERACTIVE) with its arguments instead."
        )
    GimpUi.init("underpaint")
    dialog = GimpUi.ProcedureDialog.new(procedure, config, f"Underpaint {mode.title}")
    dialog.fill(None)
    try:
        return bool(dialog.run())
    finally:
        dialog.destroy()


def _show(image: Gimp.Image) -> None:
    """Open a view on a new image; gimp-console has no displays, and the image is returned anyway."""
    try:
        Gimp.Display.new(image)
    except TypeError:  # "constructor returned NULL" without a user interface
        pass


def _error(procedure: Gimp.Procedure, message: str) -> Gimp.ValueArray:
    error = GLib.Error.new_literal(Gimp.PlugIn.error_quark(), message, 0)
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, error)


def _read_pixels(mode: Mode, image: Gimp.Image, drawable: Gimp.Drawable | None, values: dict) -> Pixels:
    selection = selection_rect(image)
    whole = image_rect(image)
    if not mode.uses_image:
        return Pixels(selection or whole)
    if drawable is None:
        raise UserError(f"{mode.title} needs an active layer.")
    visible = values.get("source") == "visible"
    extent = None if visible else drawable_rect(drawable)
    if mode.new_image:
        region = upscale_region(whole, selection, extent)
    else:
        region = crop_region(whole, selection, extent, int(values.get("padding") or 0))
    if region.empty:
        raise UserError(f"{mode.title}: the selection and the layer do not overlap the image.")
    pixels = Pixels(region)
    pixels.image = read_visible(image, region) if visible else read_rgba(drawable, region)
    if selection is not None and not mode.new_image:
        pixels.mask = read_mask(image, region)
    control = values.get("control-layer")
    if control is not None:
        pixels.control = read_rgba(control, region)
    return pixels


def _place(
    procedure: Gimp.Procedure,
    run_mode: Gimp.RunMode,
    mode: Mode,
    image: Gimp.Image,
    drawable: Gimp.Drawable | None,
    plans: list[LayerPlan],
) -> Gimp.ValueArray:
    """Add the result layers (Upscale: in a new image, returned as `new-image`)."""
    if not plans:
        raise UserError("The Underpaint daemon returned no image.")
    if mode.new_image:
        new_image = new_image_with(image, plans)
        if run_mode == Gimp.RunMode.INTERACTIVE:
            _show(new_image)
        values = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)
        values.remove(1)
        values.insert(1, GObject.Value(Gimp.Image, new_image))
        return values
    anchor = drawable if drawable is not None and drawable.is_layer() else None
    masked = mode.op == "txt2img" and selection_rect(image) is not None
    add_result_layers(image, anchor, plans, mask_with_selection=masked)
    Gimp.displays_flush()
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)


def run(
    procedure: Gimp.Procedure,
    run_mode: Gimp.RunMode,
    image: Gimp.Image,
    drawables: list[Gimp.Drawable],
    config: Gimp.ProcedureConfig,
    mode: Mode,
) -> Gimp.ValueArray:
    """One call of one mode (see the module doc)."""
    try:
        if mode.needs_selection and selection_rect(image) is None:
            raise UserError(
                f"{mode.title} needs a selection: select the region to repaint first "
                "(e.g. with the Ellipse Select tool), then run it again."
            )
        if mode.uses_image and len(drawables) != 1:
            raise UserError(f"{mode.title} works on exactly one layer; select one layer.")
        if run_mode == Gimp.RunMode.INTERACTIVE and not _dialog(procedure, config, mode):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, None)
        values = _values(mode, config)
        drawable = drawables[0] if drawables else None
        if drawable is not None and drawable.is_layer_mask():
            drawable = Gimp.Layer.from_mask(drawable)  # work on the mask's layer, not on the mask
        pixels = _read_pixels(mode, image, drawable, values)
        request = build_request(mode, values, pixels)
        progress = GimpProgress(f"Underpaint: {mode.title}")
        try:
            with jobs.Session(str(values["endpoint"]).strip()) as session:
                result = session.run(request, progress)
        finally:
            progress.end()
        auto_size = mode.op == "txt2img" and not values.get("width") and not values.get("height")
        plans = plan_layers(mode, result, pixels.region, fit=auto_size)
        return _place(procedure, run_mode, mode, image, drawable, plans)
    except UserError as exc:
        return _error(procedure, str(exc))
    except Exception as exc:  # a bug: report it rather than leaving GIMP with a dead plug-in
        traceback.print_exc()
        return _error(procedure, f"Underpaint {mode.title} failed: {type(exc).__name__}: {exc}")


class UnderpaintPlugIn(Gimp.PlugIn):
    """Registers every mode of `modes.MODES` under Filters > Underpaint."""

    def do_query_procedures(self) -> list[str]:
        return [mode.procedure for mode in MODES]

    def do_set_i18n(self, name: str) -> bool:
        return False

    def do_create_procedure(self, name: str) -> Gimp.Procedure:
        return create_procedure(self, name)


def main(argv: list[str]) -> None:
    Gimp.main(UnderpaintPlugIn.__gtype__, argv)
