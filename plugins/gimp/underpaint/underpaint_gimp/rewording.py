"""Filters > Underpaint > Reword Result: the selected Generate result with an edited prompt.

The source layer's stored run goes to the daemon's `reword` op with the edited prompt, edit kind
and word weights; the edited picture becomes a new layer right above the source, covering it exactly
as the source covers its region (and masked like it), so the two can be compared by toggling the top
one. The source and every other layer are left as they are.
"""

from __future__ import annotations

import json
from typing import Any

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, GLib  # noqa: E402
from underpaint_protocol.regions import Rect  # noqa: E402

from . import job as jobs  # noqa: E402
from .connection import remember  # noqa: E402
from .gimp_io import GimpProgress, add_layer_above  # noqa: E402
from .image_jobs import parasite_bytes  # noqa: E402
from .keys import KeyFiles  # noqa: E402
from .placement import PARASITE, LayerPlan, layer_name  # noqa: E402
from .reading import drawable_rect  # noqa: E402
from .registration import image_procedure  # noqa: E402
from .request import UserError  # noqa: E402
from .reword import REWORD, build, parse_weights, source_of  # noqa: E402
from .sources import as_layer  # noqa: E402


def create_reword_procedure(plugin: Gimp.PlugIn) -> Gimp.Procedure:
    return image_procedure(
        plugin,
        REWORD.procedure,
        run_reword,
        label=REWORD.label,
        blurb=REWORD.blurb,
        help_text=f"{REWORD.blurb}. Select a layer Generate made; runs the 'reword' op (Prompt-to-Prompt) "
        "on an Underpaint daemon with the layer's stored preset, parameters and seed and the edited "
        "prompt, and adds the edited picture as a new layer right above it (its parameters in the "
        "layer's 'underpaint-params' parasite). Nothing else on the image changes.",
        image_types="RGB*, GRAY*",
        sensitivity=Gimp.ProcedureSensitivityMask.DRAWABLE,
        args=REWORD.args,
    )


def _source(drawables: list[Gimp.Drawable]) -> tuple[Gimp.Layer, dict[str, Any]]:
    """The one selected result layer and its stored run."""
    if len(drawables) != 1 or not (drawables[0].is_layer() or drawables[0].is_layer_mask()):
        raise UserError("Reword works on one layer: select the Generate result to reword (only it).")
    layer = as_layer(drawables[0])
    parasite = layer.get_parasite(PARASITE)
    return layer, source_of(None if parasite is None else parasite_bytes(parasite), layer.get_name())


def _dialog(procedure: Gimp.Procedure, config: Gimp.ProcedureConfig, stored: dict[str, Any]) -> bool:
    """The edit, starting from the layer's own prompt; True on OK."""
    gi.require_version("GimpUi", "3.0")
    gi.require_version("Gtk", "3.0")
    from gi.repository import GimpUi, Gtk

    from .connection import recall
    from .dialog import _fields, _label

    if not Gtk.init_check()[0]:
        raise UserError(
            "Underpaint Reword cannot open its dialog without a display; call it non-interactively."
        )
    GimpUi.init("underpaint")
    recall(config)
    prompt = str(stored["params"].get("prompt") or "")
    if not str(config.get_property("new-prompt") or "").strip():
        config.set_property("new-prompt", prompt)
    dialog = GimpUi.ProcedureDialog.new(procedure, config, "Underpaint Reword")
    dialog.fill(_fields(dialog, config, REWORD))
    about = _label(
        f"Source: “{prompt}”, seed {stored.get('seed')}, preset {stored.get('model') or 'default'}",
        "The run stored on the selected layer; Reword runs it again with the edited prompt",
    )
    content = dialog.get_content_area()
    content.pack_start(about, False, False, 0)
    content.reorder_child(about, 0)
    about.show()
    try:
        return bool(dialog.run())
    finally:
        dialog.destroy()


def _plan(source: Gimp.Layer, stored: dict[str, Any], result: dict[str, Any]) -> LayerPlan:
    """The edited picture where the source is: scaled to cover the source layer as the source covers
    its region (a result at the size asked is placed as is)."""
    image = result["images"][0]
    width, height = int(image["width"]), int(image["height"])
    data = bytes(image["data"])
    if image.get("format", "raw") != "raw" or len(data) != width * height * 4:
        raise UserError("The Underpaint daemon returned a picture this plug-in cannot read.")
    rect = drawable_rect(source)
    seed = image.get("seed", result.get("seed"))
    payload = {
        "mode": REWORD.key,
        "op": result.get("op", "reword"),
        "model": result.get("model"),
        "seed": seed,
        "params": result.get("params", {}),
        "region": rect.as_list(),
        "job": result.get("job"),
        "source": {"layer": source.get_name(), "job": stored.get("job")},
    }
    fit = (
        None
        if (width, height) == (rect.width, rect.height)
        else Rect(rect.x, rect.y, rect.width, rect.height)
    )
    return LayerPlan(
        layer_name(REWORD, seed, result.get("model")),
        rect.x,
        rect.y,
        width,
        height,
        data,
        json.dumps(payload, sort_keys=True, default=str).encode("utf-8"),
        fit,
    )


def _reword(values: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """Send the edit and wait for it, GIMP's progress bar following."""
    request = build(
        stored, str(values["new-prompt"] or ""), str(values["edit"]), parse_weights(values["weights"])
    )
    progress = GimpProgress("Underpaint: Reword")
    try:
        with jobs.Session(str(values["endpoint"]).strip(), keys=KeyFiles.from_values(values)) as session:
            try:
                return session.run(session.fit(request), progress)
            except jobs.DaemonLost as exc:
                raise UserError(
                    f"Lost the Underpaint daemon at {session.endpoint} during Reword (it stopped, or the "
                    "network is down); nothing was changed: run Reword again once it is reachable."
                ) from exc
    finally:
        progress.end()


def run_reword(
    procedure: Gimp.Procedure,
    run_mode: Gimp.RunMode,
    image: Gimp.Image,
    drawables: list[Gimp.Drawable],
    config: Gimp.ProcedureConfig,
    data: object,
) -> Gimp.ValueArray:
    interactive = run_mode == Gimp.RunMode.INTERACTIVE
    try:
        source, stored = _source(drawables)
        if interactive and not _dialog(procedure, config, stored):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, None)
        values = {arg.name: config.get_property(arg.name) for arg in REWORD.args}
        result = _reword(values, stored)
        add_layer_above(image, source, _plan(source, stored, result))
        Gimp.displays_flush()
        if interactive:
            remember(values)
        return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)
    except UserError as exc:
        return _error(procedure, str(exc))
    except Exception as exc:  # a bug: report it rather than leaving GIMP with a dead plug-in
        return _error(procedure, f"Underpaint Reword failed unexpectedly: {type(exc).__name__}: {exc}")


def _error(procedure: Gimp.Procedure, message: str) -> Gimp.ValueArray:
    error = GLib.Error.new_literal(Gimp.PlugIn.error_quark(), message, 0)
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, error)
