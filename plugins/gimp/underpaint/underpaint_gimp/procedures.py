"""The GIMP plug-in class: one `Gimp.ImageProcedure` per mode, a dialog when interactive.

`run` is the whole flow of one call: check the selection and the drawables, (dialog), read the pixels,
talk to the daemon with GIMP's progress bar moving, add the result layers. Every failure a user can fix
ends in an EXECUTION_ERROR carrying a readable message (GIMP shows it; batch callers get it from
`pdb.get_last_error()`), never in a hang or a half-made result; a prompt the daemon cannot read opens
the dialog again with the message under that prompt, so nothing typed is lost.

The dialog's values persist through GIMP's own last-values mechanism: GIMP hands `run` a config that
holds the values of the last successful interactive run (per image, then globally, kept in
plug-in-settings across sessions) and saves them again after one.
"""

from __future__ import annotations

import traceback
from typing import Any

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, GLib, GObject  # noqa: E402

from . import job as jobs  # noqa: E402
from .gimp_io import GimpProgress, add_result_layers, new_image_with, rgb_copy, twin_of  # noqa: E402
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
from .presets import Catalog  # noqa: E402
from .prompt_errors import PromptError  # noqa: E402
from .reading import selection_rect  # noqa: E402
from .request import JobRequest, UserError, build_request  # noqa: E402
from .sources import as_layer, check_call, read_layers, read_pixels, selected_layers  # noqa: E402

FLAGS = GObject.ParamFlags.READWRITE
RESULT_IMAGE = "new-image"


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
    procedure.set_image_types("RGB*, GRAY*, INDEXED*")  # indexed: the results go into an RGB copy
    procedure.set_sensitivity_mask(_sensitivity(mode))
    procedure.set_menu_label(mode.label)
    procedure.add_menu_path(MENU_PATH)
    op = "compare" if mode.key == "compare" else f"'{mode.op}'"
    procedure.set_documentation(
        mode.blurb,
        f"{mode.blurb}. Runs the {op} op on an Underpaint daemon (underpaint serve) and adds the "
        "result as new layers in an 'Underpaint' layer group above the active layer"
        + (" (Upscale: in a new image)" if mode.new_image else "")
        + "; the parameters are stored in the 'underpaint-params' parasite of each layer. An indexed "
        "image is left as it is: the results go into an RGB copy of it, returned as new-image.",
        name,
    )
    procedure.set_attribution("Underpaint", "Underpaint contributors", "2026")
    for arg in mode.args:
        _add_argument(procedure, arg)
    what = "The upscaled image" if mode.new_image else "The RGB copy of an indexed image holding the results"
    procedure.add_image_return_value(RESULT_IMAGE, "New image", f"{what} (none when no image was made)",
                                     True, FLAGS)  # fmt: skip
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


def _returns(procedure: Gimp.Procedure, new_image: Gimp.Image | None) -> Gimp.ValueArray:
    values = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)
    if new_image is not None:
        values.remove(1)
        values.insert(1, GObject.Value(Gimp.Image, new_image))
    return values


def _place(
    procedure: Gimp.Procedure,
    run_mode: Gimp.RunMode,
    mode: Mode,
    image: Gimp.Image,
    drawable: Gimp.Drawable | None,
    plans: list[LayerPlan],
) -> Gimp.ValueArray:
    """Add the result layers (Upscale: in a new image; an indexed image: in an RGB copy of it), and
    return the new image, if one was made, as `new-image`."""
    if not plans:
        raise UserError("The Underpaint daemon returned no image.")
    interactive = run_mode == Gimp.RunMode.INTERACTIVE
    if mode.new_image:
        new_image = new_image_with(image, plans)
        if interactive:
            _show(new_image)
        return _returns(procedure, new_image)
    target = image
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        target = rgb_copy(image)
        drawable = twin_of(target, image, drawable)
    anchor = drawable if drawable is not None and drawable.is_layer() else None
    masked = mode.result == FILL and selection_rect(image) is not None
    add_result_layers(target, anchor, plans, mask_with_selection=masked)
    if target is image:
        Gimp.displays_flush()
        return _returns(procedure, None)
    if interactive:
        _show(target)
        Gimp.message(
            "Underpaint: this image is indexed (a palette cannot hold the model's colours), so the "
            "results are in an RGB copy of it, opened beside it. The indexed image is unchanged."
        )
    return _returns(procedure, target)


def _report_compare(result: dict[str, Any]) -> None:
    """Compare succeeds when any preset delivered; say which did not, and why."""
    failed = [e for e in result.get("compare") or [] if e.get("error")]
    if failed:
        lines = [f"{e['model']}: {e['error'].get('message', e['error'].get('code'))}" for e in failed]
        Gimp.message("Underpaint Compare: some presets gave no picture.\n" + "\n".join(lines))


def _auto_size(mode: Mode, values: dict[str, Any], request: JobRequest) -> bool:
    """Whether results are fitted to the selection: Generate/Mix without an explicit size, or a preset
    that paints at its own size (DDPM takes no width/height)."""
    if mode.result != FILL:
        return False
    explicit = bool(values.get("width") or values.get("height"))
    return not explicit or "width" not in request.params


def _resolution(mode: Mode, values: dict[str, Any], welcome: dict[str, Any]) -> int | None:
    """The native size of the preset(s) the call runs on (Generate and Mix paint at it)."""
    names = values.get("models") if mode.key == "compare" else [values.get("model")]
    return Catalog.from_welcome(welcome).resolution([str(n or "").strip() for n in names or []])


def _job(
    mode: Mode, image: Gimp.Image, drawables: list[Gimp.Drawable], values: dict[str, Any]
) -> tuple[Mode, Gimp.Drawable | None, list[LayerPlan]]:
    """Read, submit, wait: the mode whose placement applies, the layer results go above, the layers."""
    base = effective(mode, values)
    if base.needs_selection and selection_rect(image) is None:
        raise UserError(f"{mode.title} of {base.title} needs a selection: select the region first.")
    drawable = as_layer(drawables[0]) if drawables else None
    progress = GimpProgress(f"Underpaint: {mode.title}")
    try:
        with jobs.Session(str(values["endpoint"]).strip()) as session:
            if mode.source == SELECTED_LAYERS:
                layers = selected_layers(image, drawables)
                drawable = layers[0] if layers else drawable  # results go above the topmost one
                pixels = read_layers(mode, image, layers)
            else:
                pixels = read_pixels(base, image, drawable, values)
            request = build_request(mode, values, pixels, _resolution(mode, values, session.welcome))
            request = session.fit(request)
            result = session.run(request, progress)
        if mode.key == "compare":
            _report_compare(result)
    finally:
        progress.end()
    fit = _auto_size(base, values, request)
    sources = {slot: where for slot, where in sorted(pixels.sources.items()) if slot in request.images}
    plans = plan_layers(mode, result, pixels.region, fit, not_sent=request.not_sent, sources=sources)
    return base, drawable, plans


def run(
    procedure: Gimp.Procedure,
    run_mode: Gimp.RunMode,
    image: Gimp.Image,
    drawables: list[Gimp.Drawable],
    config: Gimp.ProcedureConfig,
    mode: Mode,
) -> Gimp.ValueArray:
    """One call of one mode (see the module doc)."""
    interactive = run_mode == Gimp.RunMode.INTERACTIVE
    problem: PromptError | None = None
    try:
        check_call(mode, image, drawables)
        while True:
            if interactive:
                from .dialog import run_dialog

                if not run_dialog(procedure, config, mode, problem):
                    return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, None)
            try:
                base, drawable, plans = _job(mode, image, drawables, _values(mode, config))
                break
            except PromptError as exc:
                if not interactive:
                    raise
                problem = exc  # the dialog again, the message under that prompt
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
