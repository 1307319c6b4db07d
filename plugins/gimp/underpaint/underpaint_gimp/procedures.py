"""The GIMP plug-in class: one `Gimp.ImageProcedure` per mode, a dialog when interactive.

`run` is the whole flow of one call: check the selection, (dialog), read the pixels, talk to the daemon
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
    read_gray,
    read_mask,
    read_rgba,
    read_visible,
    read_whole,
    selection_rect,
    stack_order,
)
from .modes import (  # noqa: E402
    FILL,
    MENU_PATH,
    MODES,
    NO_PIXELS,
    SELECTED_LAYERS,
    Arg,
    Mode,
    effective,
    mode_by_procedure,
)
from .placement import LayerPlan, plan_layers  # noqa: E402
from .region import crop_region, upscale_region  # noqa: E402
from .request import MAX_ITEMS, JobRequest, Pixels, UserError, build_request  # noqa: E402

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
    elif arg.kind == "strings":
        procedure.add_string_array_argument(arg.name, arg.nick, arg.blurb, FLAGS)
    else:
        raise ValueError(f"unknown argument kind {arg.kind}")


def _sensitivity(mode: Mode) -> Gimp.ProcedureSensitivityMask:
    mask = Gimp.ProcedureSensitivityMask
    if mode.source == NO_PIXELS:
        return mask.DRAWABLE | mask.DRAWABLES | mask.NO_DRAWABLES
    if mode.source == SELECTED_LAYERS:
        return mask.DRAWABLE | mask.DRAWABLES
    return mask.DRAWABLE


def create_procedure(plugin: Gimp.PlugIn, name: str) -> Gimp.Procedure:
    mode = mode_by_procedure(name)
    procedure = Gimp.ImageProcedure.new(plugin, name, Gimp.PDBProcType.PLUGIN, run, mode)
    procedure.set_image_types("RGB*, GRAY*")
    procedure.set_sensitivity_mask(_sensitivity(mode))
    procedure.set_menu_label(mode.label)
    procedure.add_menu_path(MENU_PATH)
    op = "compare" if mode.key == "compare" else f"'{mode.op}'"
    procedure.set_documentation(
        mode.blurb,
        f"{mode.blurb}. Runs the {op} op on an Underpaint daemon (underpaint serve) and adds the "
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
    values = {arg.name: config.get_property(arg.name) for arg in mode.args}
    for arg in mode.args:
        if arg.kind == "strings":
            values[arg.name] = list(values[arg.name] or [])
    return values


def _show(image: Gimp.Image) -> None:
    """Open a view on a new image; gimp-console has no displays, and the image is returned anyway."""
    try:
        Gimp.Display.new(image)
    except TypeError:  # "constructor returned NULL" without a user interface
        pass


def _error(procedure: Gimp.Procedure, message: str) -> Gimp.ValueArray:
    error = GLib.Error.new_literal(Gimp.PlugIn.error_quark(), message, 0)
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, error)


def _as_layer(drawable: Gimp.Drawable) -> Gimp.Drawable:
    """Work on a layer mask's layer, never on the mask itself."""
    return Gimp.Layer.from_mask(drawable) if drawable.is_layer_mask() else drawable


def _selected_layers(image: Gimp.Image, drawables: list[Gimp.Drawable]) -> list[Gimp.Drawable]:
    """The selected layers (not groups, masks' layers for masks), top to bottom as the Layers dialog
    shows them, whatever order GIMP passed them in."""
    layers: dict[int, Gimp.Drawable] = {}
    for drawable in map(_as_layer, drawables):
        if drawable.is_layer() and not drawable.is_group_layer():
            layers.setdefault(drawable.get_id(), drawable)
    return sorted(layers.values(), key=lambda item: stack_order(image, item))


def _read_layers(mode: Mode, image: Gimp.Image, layers: list[Gimp.Drawable]) -> Pixels:
    """Mix: every selected layer, whole; the result fills the selection (or the image)."""
    if len(layers) > MAX_ITEMS:
        raise UserError(f"{mode.title} blends at most {MAX_ITEMS} layers: select fewer.")
    pixels = Pixels(selection_rect(image) or image_rect(image))
    for index, layer in enumerate(layers):
        pixels.layers.append(read_whole(layer))
        pixels.sources[f"layer{index + 1}"] = layer.get_name()
    return pixels


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
    pixels.sources["image"] = "the visible image" if visible else drawable.get_name()
    if selection is not None and not mode.new_image:
        pixels.mask = read_mask(image, region)
        pixels.sources["mask"] = "the selection"
    control = values.get("control-layer") if mode.has("control-layer") else None
    if control is not None:
        pixels.control = read_rgba(control, region)
    pixels.sources["control"] = control.get_name() if control is not None else pixels.sources["image"]
    depth = values.get("depth-layer") if mode.has("depth-layer") else None
    if depth is not None:
        pixels.depth = read_gray(depth, region)
        pixels.sources["depth"] = depth.get_name()
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
    masked = mode.result == FILL and selection_rect(image) is not None
    add_result_layers(image, anchor, plans, mask_with_selection=masked)
    Gimp.displays_flush()
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)


def _report_compare(result: dict[str, Any]) -> None:
    """Compare succeeds when any preset delivered; say which did not, and why."""
    failed = [e for e in result.get("compare") or [] if e.get("error")]
    if failed:
        lines = [f"{e['model']}: {e['error'].get('message', e['error'].get('code'))}" for e in failed]
        Gimp.message("Underpaint Compare: some presets gave no picture.\n" + "\n".join(lines))


def _auto_size(mode: Mode, values: dict[str, Any], request: JobRequest) -> bool:
    """Whether results are scaled to fill the selection: Generate/Mix without an explicit size, or
    a preset that paints at its own size (DDPM takes no width/height)."""
    if mode.result != FILL:
        return False
    explicit = bool(values.get("width") or values.get("height"))
    return not explicit or "width" not in request.params


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
        if mode.source == SELECTED_LAYERS and not drawables:
            raise UserError(f"{mode.title} blends the selected layers; select one or more layers.")
        if run_mode == Gimp.RunMode.INTERACTIVE:
            from .dialog import run_dialog

            if not run_dialog(procedure, config, mode):
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, None)
        values = _values(mode, config)
        base = effective(mode, values)
        if base.needs_selection and selection_rect(image) is None:
            raise UserError(f"{mode.title} of {base.title} needs a selection: select the region first.")
        drawable = _as_layer(drawables[0]) if drawables else None
        if mode.source == SELECTED_LAYERS:
            layers = _selected_layers(image, drawables)
            drawable = layers[0] if layers else drawable  # results go above the topmost one
            pixels = _read_layers(mode, image, layers)
        else:
            pixels = _read_pixels(base, image, drawable, values)
        request = build_request(mode, values, pixels)
        progress = GimpProgress(f"Underpaint: {mode.title}")
        try:
            with jobs.Session(str(values["endpoint"]).strip()) as session:
                request = session.fit(request)
                result = session.run(request, progress)
            if mode.key == "compare":
                _report_compare(result)
        finally:
            progress.end()
        fit = _auto_size(base, values, request)
        sources = {slot: where for slot, where in sorted(pixels.sources.items()) if slot in request.images}
        plans = plan_layers(mode, result, pixels.region, fit, not_sent=request.not_sent, sources=sources)
        return _place(procedure, run_mode, base, image, drawable, plans)
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
