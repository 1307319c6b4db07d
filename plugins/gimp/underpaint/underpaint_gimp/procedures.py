"""The GIMP plug-in class: one `Gimp.ImageProcedure` per mode, a dialog when interactive.

`run` is the whole flow of one call: check the selection and the drawables, (dialog), read the pixels,
place the image's earlier results that finished meanwhile (`late`), talk to the daemon with GIMP's
progress bar moving, add the result layers. From `accepted` until it is placed, the job is stored on
the image (`pending`), so a call that loses the daemon leaves it there for Fetch Pending Results
(registered here too). Every failure a user can fix
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

from . import image_jobs, late  # noqa: E402
from . import job as jobs  # noqa: E402
from .connection import remember  # noqa: E402
from .gimp_io import GimpProgress  # noqa: E402
from .keys import KeyFiles  # noqa: E402
from .late import Collected  # noqa: E402
from .live import PROCEDURE as LIVE_PROCEDURE  # noqa: E402
from .live import create_live_procedure  # noqa: E402
from .modes import (  # noqa: E402
    FILL,
    MODES,
    NO_PIXELS,
    SELECTED_LAYERS,
    Mode,
    effective,
    mode_by_procedure,
)
from .pending import PendingJob  # noqa: E402
from .presets import Catalog  # noqa: E402
from .prompt_errors import PromptError  # noqa: E402
from .reading import read_mask, selection_rect  # noqa: E402
from .registration import FLAGS, image_procedure  # noqa: E402
from .request import JobRequest, Pixels, UserError, build_request  # noqa: E402
from .results import place  # noqa: E402
from .reword import REWORD  # noqa: E402
from .rewording import create_reword_procedure  # noqa: E402
from .sources import as_layer, check_call, read_layers, read_pixels, selected_layers  # noqa: E402

RESULT_IMAGE = "new-image"


def _sensitivity(mode: Mode) -> Gimp.ProcedureSensitivityMask:
    mask = Gimp.ProcedureSensitivityMask
    if mode.source == NO_PIXELS:
        return mask.DRAWABLE | mask.DRAWABLES | mask.NO_DRAWABLES
    if mode.source == SELECTED_LAYERS:
        return mask.DRAWABLE | mask.DRAWABLES
    return mask.DRAWABLE


def create_procedure(plugin: Gimp.PlugIn, name: str) -> Gimp.Procedure:
    mode = mode_by_procedure(name)
    op = "compare" if mode.key == "compare" else f"'{mode.op}'"
    procedure = image_procedure(
        plugin,
        name,
        run,
        data=mode,
        label=mode.label,
        blurb=mode.blurb,
        help_text=f"{mode.blurb}. Runs the {op} op on an Underpaint daemon (underpaint serve) and adds the "
        "result as new layers in an 'Underpaint' layer group above the active layer"
        + (" (Upscale: in a new image)" if mode.new_image else "")
        + "; the parameters are stored in the 'underpaint-params' parasite of each layer. An indexed "
        "image is left as it is: the results go into an RGB copy of it, returned as new-image.",
        image_types="RGB*, GRAY*, INDEXED*",  # indexed: the results go into an RGB copy
        sensitivity=_sensitivity(mode),
        args=mode.args,
    )
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


def _error(procedure: Gimp.Procedure, message: str) -> Gimp.ValueArray:
    error = GLib.Error.new_literal(Gimp.PlugIn.error_quark(), message, 0)
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, error)


def _returns(procedure: Gimp.Procedure, new_image: Gimp.Image | None) -> Gimp.ValueArray:
    values = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)
    if new_image is not None:
        values.remove(1)
        values.insert(1, GObject.Value(Gimp.Image, new_image))
    return values


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


def _record(
    mode: Mode,
    base: Mode,
    image: Gimp.Image,
    drawable: Gimp.Drawable | None,
    values: dict[str, Any],
    request: JobRequest,
    pixels: Pixels,
    session: jobs.Session,
) -> PendingJob:
    """Everything needed to place this call's result, now or after a restart (`pending`)."""
    region = pixels.region
    masked = base.result == FILL and selection_rect(image) is not None
    return PendingJob(
        job="",
        endpoint=session.endpoint,
        session=session.token,
        mode=mode.key,
        base=base.key,
        model=request.model or "",
        region=(region.x, region.y, region.width, region.height),
        fit=_auto_size(base, values, request),
        not_sent=tuple(request.not_sent),
        sources={slot: where for slot, where in sorted(pixels.sources.items()) if slot in request.images},
        anchor=drawable.get_tattoo() if drawable is not None and drawable.is_layer() else None,
        mask=read_mask(image, region) if masked else None,
        server_key=session.keys.server,
        client_key=session.keys.client,
    )


def _job(
    mode: Mode, image: Gimp.Image, drawables: list[Gimp.Drawable], values: dict[str, Any], interactive: bool
) -> tuple[PendingJob, dict[str, Any], Collected]:
    """Read, submit, wait: the stored job (how to place it), its result, and what the look at the
    image's earlier pending jobs did. The job is on the image from `accepted` until it is placed; a
    lost link keeps it there (`DaemonLost`), any other end forgets it."""
    base = effective(mode, values)
    if base.needs_selection and selection_rect(image) is None:
        raise UserError(f"{mode.title} of {base.title} needs a selection: select the region first.")
    drawable = as_layer(drawables[0]) if drawables else None
    progress = GimpProgress(f"Underpaint: {mode.title}")
    token = ""
    try:
        keys = KeyFiles.from_values(values)
        with jobs.Session(str(values["endpoint"]).strip(), keys=keys) as session:
            if mode.source == SELECTED_LAYERS:
                layers = selected_layers(image, drawables)
                drawable = layers[0] if layers else drawable  # results go above the topmost one
                pixels = read_layers(mode, image, layers)
            else:
                pixels = read_pixels(base, image, drawable, values)
            request = build_request(mode, values, pixels, _resolution(mode, values, session.welcome))
            request = session.fit(request)
            record = _record(mode, base, image, drawable, values, request, pixels, session)
            earlier = late.collect(image, interactive, progress, wait=False)  # older results go below
            token = session.token
            image_jobs.hold(image, token)

            def accepted(job: str, asked: int) -> None:
                nonlocal record
                record = record.accepted(job, token, asked)
                image_jobs.add(image, record)

            try:
                result = session.run(request, progress, on_accepted=accepted)
            except jobs.DaemonLost:
                image_jobs.keep(image, record)
                raise
            except UserError:
                image_jobs.forget(image, {record.job})
                raise
    finally:
        if token:
            image_jobs.release(image, token)
        progress.end()
    return record, result, earlier


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
            values = _values(mode, config)
            try:
                record, result, earlier = _job(mode, image, drawables, values, interactive)
                break
            except PromptError as exc:
                if not interactive:
                    raise
                problem = exc  # the dialog again, the message under that prompt
        new_image = place(image, record, result, interactive)
        image_jobs.forget(image, {record.job})
        if interactive:
            remember(values)  # dialogs never set up start with this connection
        if earlier.summary():
            Gimp.message(f"Underpaint: {earlier.summary()}")
        return _returns(procedure, new_image)
    except UserError as exc:
        return _error(procedure, str(exc))
    except Exception as exc:  # a bug: report it rather than leaving GIMP with a dead plug-in
        traceback.print_exc()
        return _error(procedure, f"Underpaint {mode.title} failed: {type(exc).__name__}: {exc}")


class UnderpaintPlugIn(Gimp.PlugIn):
    """Registers every mode of `modes.MODES` under Filters > Underpaint."""

    def do_query_procedures(self) -> list[str]:
        return [mode.procedure for mode in MODES] + [late.FETCH, REWORD.procedure, LIVE_PROCEDURE]

    def do_set_i18n(self, name: str) -> bool:
        return False

    def do_create_procedure(self, name: str) -> Gimp.Procedure:
        if name == late.FETCH:
            return late.create_fetch_procedure(self)
        if name == REWORD.procedure:
            return create_reword_procedure(self)
        if name == LIVE_PROCEDURE:
            return create_live_procedure(self)
        return create_procedure(self, name)


def main(argv: list[str]) -> None:
    Gimp.main(UnderpaintPlugIn.__gtype__, argv)
