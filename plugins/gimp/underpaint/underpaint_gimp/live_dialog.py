"""Live mode's dialog: open while the painter paints; a GLib timer sends each settled change.

GIMP keeps working while a plug-in's dialog is open (the plug-in is another process), so the painter
paints on the canvas as usual. Every tick reads the source area through the PDB; once pixels and
settings have rested for the debounce delay, the change goes out in the lane (a newer one supersedes
the older job on the daemon), and the newest result replaces the live layer's pixels. The dialog's
own settings count as changes too. Keep copies the live layer as a result layer; OK or Cancel close
the dialog and remove the live layer.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gtk", "3.0")
from gi.repository import Gimp, GimpUi, GLib, Gtk  # noqa: E402

from . import job as jobs  # noqa: E402
from .connection import recall  # noqa: E402
from .dialog import PresetPicker, _fields, _label  # noqa: E402
from .keys import KeyFiles  # noqa: E402
from .live import LiveCanvas, Sent, _values  # noqa: E402
from .live_state import LIVE, Debounce, Newest  # noqa: E402
from .request import UserError  # noqa: E402

TICK_MS = 150  # how often the source is looked at
ASK_TIMEOUT = 3.0  # s: connecting to a daemon that is up takes milliseconds
RETRY_AFTER = 5.0  # s between tries while sending fails (each try may wait ASK_TIMEOUT)


class LiveLoop:
    """The timer's work: read, debounce, send in the lane, read the daemon's events, show the newest."""

    def __init__(self, config: Gimp.ProcedureConfig, canvas: LiveCanvas, status: Gtk.Label, keep: Gtk.Button):
        self.config, self.canvas, self.status, self.keep_button = config, canvas, status, keep
        self.debounce = Debounce(float(config.get_property("delay")))
        self.newest = Newest()
        self.sent: dict[str, Sent] = {}
        self.session: jobs.Session | None = None
        self.connection: tuple[str, KeyFiles] | None = None
        self.kept = 0
        self.pause_until = 0.0  # after a failed send, the next try waits until then

    def say(self, text: str) -> None:
        self.status.set_text(text)

    def connect(self, values: dict[str, Any]) -> jobs.Session:
        """The session for the endpoint and keys set now (a new one when they changed)."""
        wanted = (str(values["endpoint"]).strip(), KeyFiles.from_values(values))
        if self.session is None or self.connection != wanted:
            self.close_session()
            self.session = jobs.Session(wanted[0], timeout=ASK_TIMEOUT, keys=wanted[1])
            self.connection = wanted
        return self.session

    def tick(self) -> bool:
        values = _values(self.config)
        self.debounce.delay = float(values.get("delay") or 0.0)
        now = time.monotonic()
        try:
            if now >= self.pause_until and self.debounce.due(self.canvas.fingerprint(values), now):
                session = self.connect(values)
                sent = self.canvas.request(values, self.canvas.read(values), session)
                job = str(session.submit(sent.request)["job"])
                self.sent[job] = sent
                self.newest.add(job)
                self.say("Live: painting the change…")
            self.drain()
        except UserError as exc:  # e.g. the daemon is down: try again in a while, not every tick
            self.debounce.retry()
            self.pause_until = time.monotonic() + RETRY_AFTER  # after the try, which may have waited
            self.say(f"Live: {exc}")
        except Exception as exc:  # a bug: say it, and keep the timer (an exception here would end it)
            traceback.print_exc()
            self.say(f"Live failed: {type(exc).__name__}: {exc}")
        return True

    def drain(self) -> None:
        """Handle the daemon's events that arrived (unknown kinds are ignored, as PROTOCOL.md asks)."""
        if self.session is None:
            return
        while (event := self.session.client.poll(0)) is not None:
            job, kind = str(event.get("job") or ""), event.get("type")
            sent = self.sent.pop(job, None) if kind in jobs.FINAL_EVENTS else self.sent.get(job)
            if sent is None:
                continue
            if kind == "result" and self.newest.take(job):
                self.canvas.show(self.canvas.plan(sent, event))
                self.keep_button.set_sensitive(True)
                took = float((event.get("timings") or {}).get("total") or 0.0)
                self.say(f"Live: newest picture shown ({took:.2f} s on the daemon). Keep copies it.")
            elif kind == "progress" and job == self.newest.running:
                self.say(f"Live: step {event.get('step')} of {event.get('total')}")
            elif kind == "loading" and job == self.newest.running:
                self.say(f"Live: loading {event.get('what')}… {float(event.get('elapsed_s') or 0):.0f} s")
            elif kind == "error" and job == self.newest.running:
                self.debounce.retry()  # the same input again, but not before a pause: not every tick
                self.pause_until = time.monotonic() + RETRY_AFTER
                self.say(f"Live: {jobs.refused(event, sent.request.params)}")
            # `cancelled` (reason "superseded": a newer change replaced it) is not an error: nothing to do

    def keep(self) -> None:
        try:
            self.canvas.keep()
            self.kept += 1
            self.say(f"Live: kept ({self.kept} so far) in the Underpaint group.")
        except UserError as exc:
            self.say(f"Live: {exc}")

    def close_session(self) -> None:
        if self.session is None:
            return
        running = self.newest.running
        if running is not None:
            try:
                self.session.client.cancel(running, timeout=1.0)
            except Exception:  # the job may have ended meanwhile, or the daemon is gone: nothing to stop
                pass
        self.session.close()
        self.session = None


def run_live_dialog(procedure: Gimp.Procedure, config: Gimp.ProcedureConfig, canvas: LiveCanvas) -> bool:
    """Show Live's dialog until OK (True) or Cancel; the live layer is removed either way."""
    if not Gtk.init_check()[0]:
        raise UserError("Underpaint Live needs a display for its dialog; call it with an action instead.")
    GimpUi.init("underpaint")
    recall(config)
    dialog = GimpUi.ProcedureDialog.new(procedure, config, "Underpaint Live")
    dialog.fill([name for name in _fields(dialog, config, LIVE) if name != "action"])
    picker = PresetPicker(dialog, config, LIVE)
    content = dialog.get_content_area()
    content.pack_start(picker.box, False, False, 0)
    content.reorder_child(picker.box, 0)
    row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
    status = _label(
        "Live: starting…", "What Live is doing: the newest change is painted, older ones are dropped"
    )
    keep = Gtk.Button.new_with_mnemonic("_Keep")
    keep.set_tooltip_text("Copy the live picture into the Underpaint group as a normal result layer")
    keep.set_sensitive(False)
    row.pack_start(status, True, True, 0)
    row.pack_start(keep, False, False, 0)
    content.pack_start(row, False, False, 6)
    picker.box.show_all()
    row.show_all()
    picker.refresh()
    loop = LiveLoop(config, canvas, status, keep)
    keep.connect("clicked", lambda _button: loop.keep())
    timer = GLib.timeout_add(TICK_MS, loop.tick)
    try:
        return bool(dialog.run())
    finally:
        GLib.source_remove(timer)
        loop.close_session()
        canvas.stop()
        dialog.destroy()
