"""The "Underpaint" docker: the form, Generate/Cancel, progress, the status lines and the history
strip, and the glue between the document (placing.py, document.py) and the daemon (connection.py).

Everything runs on Krita's UI thread; the only network work is `Connection.tick()`, called from a
QTimer, which never blocks. A lost daemon shows on the status line within about 3 s; the running job
waits and resumes with the link. Closing a saved document, or quitting Krita, mid-job does not stop
the job: it is parked (parking.py) and its result is placed when the document is open again, after a
restart too (the session token and the job are kept in pending.py's file). A document that was
never saved has nowhere to be found again: closing it (or quitting) cancels its job.

What the painter reads under the buttons, one line each: the status line says why Generate is off
(also its tooltip), else the daemon's state; the message line shows the running job's progress
(naming its document when another one is shown), else the last thing that happened. An error goes
away by itself once its cause is gone (the daemon is back, the form or the selection changed).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from krita import DockWidget, Krita
from PyQt5.QtCore import QStandardPaths, Qt, QTimer
from PyQt5.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from . import form_state, history, presets
from .connection import DEFAULT_ENDPOINT, Connection, ConnState, NotConnected
from .daemon_settings import DaemonSettings
from .document import InputError, capture, document_problem
from .form import Form
from .jobs import Job, JobState, loading_text
from .layers import layers_of
from .live import LiveContext, LiveSession
from .modes import MODES_BY_KEY, FormValues, build_params, validate
from .parking import Parking, file_name
from .pending import FILE_NAME, PendingStore
from .placing import JobContext, clean_up, document_name, history_entry, place_result, show_preview
from .progress import Progress, expected
from .protocol.live import live_setting
from .resume import document_path
from .reword import RewordPanel
from .strip import HistoryStrip
from .widgets import ElidedLabel

SETTINGS_GROUP = "underpaint"
MODES_REFINE = MODES_BY_KEY["refine"]
TICK_MS = 40
CHECK_INTERVAL = 0.25  # s between checks of what Generate needs (selection, document, form)
SAVE_INTERVAL = 1.0  # s between checks whether the form's settings changed (then they are saved)
LAYER_SYNC_INTERVAL = 0.4  # s between reads of the Layers docker's selection (Mix)
GENERATE_TIP = "run the mode on the selection (or canvas): results come as new layers"
LIVE_TIP = (
    "Live: while on, every change of the canvas in the selection (or the whole canvas) re-paints it "
    "(Refine, or ControlNet from its layers) into one 'Underpaint live' layer at the top; off removes it"
)
KEEP_TIP = "copy the live result into the Underpaint group as a normal result layer (with its settings)"
TEXT_FIELDS = ("params.prompt", "params.negative_prompt", "params.instruction")
ERROR_STYLE, HINT_STYLE = "color: #e57373", "color: #d9a441"


class UnderpaintDocker(DockWidget):
    """Settings > Dockers > Underpaint."""

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("Underpaint")
        self.job: Job | None = None
        self.last_seed: int | None = None
        self.history: list[dict[str, Any]] = []  # one entry per finished job (what the painter saw)
        self._message: tuple[str, bool] = ("", False)  # the last event's text, is it an error
        self._message_until: Callable[[], bool] | None = None  # true once that error is stale
        self.blocker: str | None = None  # why Generate is off (None: it is on)
        self._last_target: Any = None  # where the last job wrote (its painter's layer is given back)
        self._handling = 0  # > 0 while a job event is being handled
        self.live: LiveSession | None = None  # Live mode, for one document
        endpoint = _setting("endpoint", DEFAULT_ENDPOINT) or DEFAULT_ENDPOINT
        key_paths = (_setting("server_key", ""), _setting("client_key", ""))
        self.store = PendingStore(store_path())
        self.parking = Parking(Krita.instance(), self.store, lambda: self.connection.welcome)
        self.connection = Connection(
            endpoint,
            keys=key_paths if any(key_paths) else None,
            session=free_session(self.store.session(endpoint)),
            on_change=self._connection_changed,
            on_job=self._job_event,
            on_session=self._session_changed,
        )
        self.form = Form(
            self._layer_choices,
            saved_model=lambda: _setting("model", ""),
            save_model=lambda name: Krita.instance().writeSetting(SETTINGS_GROUP, "model", name),
        )
        self.form.reuse_seed_button.clicked.connect(self.reuse_seed)
        self._build_ui(endpoint, key_paths)
        saved = form_state.decode(_setting("form", ""))
        if saved is not None:
            form_state.restore(self.form, saved)
        self._saved_state = form_state.encode(form_state.state_of(self.form))
        self.form.mode_combo.currentIndexChanged.connect(lambda *_: self._refresh_state())
        self.form.instruction_edit.textChanged.connect(lambda *_: self._refresh_state())
        self._checked = self._saved_at = self._layers_synced = 0.0
        self._history_key: Any = None
        self._welcome_seen: dict[str, Any] | None = None
        self.timer = QTimer(self)
        self.timer.timeout.connect(self._tick)
        self.timer.start(TICK_MS)
        # Krita may destroy the docker before announcing that it quits: close on whichever comes first.
        OPEN_CONNECTIONS.append(self.connection)
        connection = self.connection
        self.destroyed.connect(lambda *_: close_connection(connection))
        self.connection.start()
        self._adopt_pending()
        self._connection_changed()

    # -- UI ----------------------------------------------------------------------------------------
    def _build_ui(self, endpoint: str, key_paths: tuple[str, str]) -> None:
        """Model, mode and prompt on top and Generate below never scroll; the rest does."""
        self.daemon = DaemonSettings(self.form.advanced_rows, endpoint, *key_paths, on_connect=self.reconnect)
        self.endpoint_edit, self.connect_button = self.daemon.endpoint_edit, self.daemon.connect_button
        self.strip = HistoryStrip()
        self.strip.picked.connect(self.reuse_entry)
        self.form.history_section.content.layout().addWidget(self.strip)
        self.reword_panel = RewordPanel(self.reword)
        body = self.form.body.layout()
        body.insertWidget(body.indexOf(self.form.history_section) + 1, self.reword_panel.section)
        self.form.body.layout().addStretch(1)

        footer = QVBoxLayout()
        buttons = QHBoxLayout()
        self.generate_button = QPushButton("Generate")
        self.generate_button.setToolTip(GENERATE_TIP)
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("stop the running job; nothing is added")
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.generate_button)
        buttons.addWidget(self.cancel_button)
        footer.addLayout(buttons)
        live_row = QHBoxLayout()
        self.live_button = QPushButton("Live")
        self.live_button.setObjectName("underpaint_live")
        self.live_button.setCheckable(True)
        self.live_button.setToolTip(LIVE_TIP)
        self.live_button.toggled.connect(self.set_live)
        self.keep_button = QPushButton("Keep")
        self.keep_button.setObjectName("underpaint_keep")
        self.keep_button.setToolTip(KEEP_TIP)
        self.keep_button.clicked.connect(self.keep_live)
        live_row.addWidget(self.live_button)
        live_row.addWidget(self.keep_button)
        footer.addLayout(live_row)
        status_row = QHBoxLayout()
        self.status_dot = QLabel()
        self.status_dot.setToolTip("the connection: green connected, yellow connecting, red not connected")
        self.status_label = ElidedLabel()
        status_row.addWidget(self.status_dot)
        status_row.addWidget(self.status_label, 1)
        footer.addLayout(status_row)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        self.progress_bar.setValue(0)
        self.progress_bar.setToolTip(
            "the running job: the steps you asked for (after strength), for each picture; "
            "the bar is the share of the whole job"
        )
        footer.addWidget(self.progress_bar)
        # One line (the whole text is its tooltip): at Krita's default docker size every line counts.
        self.message_label = ElidedLabel()
        self.message_label.setObjectName("underpaint_message")
        self.message_label.setVisible(False)
        footer.addWidget(self.message_label)

        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.form.body)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
        self.scroll.setMinimumHeight(48)  # Krita's default layout gives dockers their minimum height
        outer = QWidget()
        outer_layout = QVBoxLayout(outer)
        outer_layout.setContentsMargins(4, 2, 4, 2)
        outer_layout.addWidget(self.form.top)
        outer_layout.addWidget(self.scroll, 1)
        outer_layout.addLayout(footer)
        self.setWidget(outer)

    def _layer_choices(self) -> list[tuple[str, str]]:
        doc = self.document()
        if doc is None:
            return []
        out: list[tuple[str, str]] = []

        def walk(parent: Any, depth: int) -> None:
            for node in reversed(layers_of(parent)):
                out.append((node.uniqueId().toString(), "  " * depth + node.name()))
                walk(node, depth + 1)

        walk(doc.rootNode(), 0)
        return out

    def selected_layers(self) -> list[tuple[str, str]]:
        """The layers selected in the Layers docker (Mix blends them), in that docker's order."""
        canvas = self.canvas()
        view = canvas.view() if canvas is not None else None
        if view is None:
            window = Krita.instance().activeWindow()
            view = window.activeView() if window is not None else None
        if view is None:
            return []
        return [(node.uniqueId().toString(), node.name()) for node in view.selectedNodes() or []]

    def document(self) -> Any | None:
        canvas = self.canvas()
        view = canvas.view() if canvas is not None else None
        doc = view.document() if view is not None else None
        return doc if doc is not None else Krita.instance().activeDocument()

    def canvasChanged(self, canvas: Any) -> None:  # noqa: N802 (Krita's name)
        if self.live is not None and not self.live.doc == self.document():
            self.live_ended(self.live, "another document is shown", remove=True)
        for unit in self.form.units:
            unit.layer_combo.refresh()
        self.form.depth_combo.refresh()
        if self._last_target is not None:  # Krita sets active layers only in the document shown
            try:
                self._last_target.restore()
            except RuntimeError:  # its document is gone
                self._last_target = None
        self._refresh_history()
        self._refresh_state()

    # -- actions -----------------------------------------------------------------------------------
    def reconnect(self) -> None:
        """Connect: the same daemon and keys resume the session (jobs go on); others cancel them."""
        endpoint, keys = self.daemon.endpoint(), self.daemon.keys()
        krita = Krita.instance()
        krita.writeSetting(SETTINGS_GROUP, "endpoint", endpoint)
        for name, value in zip(("server_key", "client_key"), self.daemon.key_paths(), strict=True):
            krita.writeSetting(SETTINGS_GROUP, name, value)
        changed = (endpoint, keys) != (self.connection.endpoint, self.connection.keys)
        if changed and self.job is not None and not self.job.finished:
            self._show(f"{self.job.op} job cancelled: switching daemons.")
        session = free_session(self.store.session(endpoint)) if changed else None
        self.connection.set_endpoint(endpoint, keys=keys, session=session, force=True)
        if changed:
            self._adopt_pending()

    def _adopt_pending(self) -> None:
        """Jobs kept from before a Krita restart for this daemon's session: resumed and fetched."""
        adopted = self.parking.adopt(self.connection)
        if adopted:
            names = sorted({self.parking.describe(job) for job in adopted})
            self._show(
                f"Resuming {len(adopted)} job(s) from before Krita was restarted ({'; '.join(names)}): each "
                "result goes into its document when it is ready and the document is open."
            )

    def _session_changed(self, token: str) -> None:
        """A welcome named our session: keep its token for the next Krita start."""
        claim_session(self.connection, token)
        try:
            self.store.set_session(self.connection.endpoint, token)
        except OSError as exc:
            self._show(f"Could not keep the session for a restart ({exc}).", error=True)

    def reuse_seed(self) -> None:
        if self.last_seed is not None:
            self.form.random_seed_check.setChecked(False)
            self.form.seed_edit.setText(str(self.last_seed))

    def reuse_entry(self, entry: history.Entry) -> None:
        """A history entry was clicked: its model, mode, prompt, settings and seed go back into the form."""
        missing = form_state.apply_values(self.form, history.form_of(entry))
        text = f"Back in the form: {entry.label} ({entry.preset or 'default model'}), seed {entry.seed}."
        if missing:
            self._show(
                text + " Could not put back " + "; ".join(missing) + ".", error=True, until=self._changed()
            )
        else:
            self._show(text)
        self._refresh_state()

    def generate(self) -> None:
        """Read the region, submit the job; the rest happens in `_job_event`."""
        if self.form.mode().key == "mix":
            self.form.mix_panel.sync(self.selected_layers())
        if self.generate_problem():  # the status line and the button's tooltip say why
            self._refresh_state()
            return
        doc = self.document()
        form = self.form.values()
        mode, label = form.run_mode(), self.form.mode().label
        try:
            captured = capture(doc, form, self._working_resolution(form))
        except InputError as exc:
            self._show(str(exc), error=True, until=self._changed())
            return
        live = live_setting(self.form.preset()) if form.speed == "live" and form.mode != "compare" else None
        params = build_params(form, size=captured.size, spec=self.form.spec(), live=live)
        anchor = doc.activeNode()
        context = JobContext(
            doc=doc,
            form=form,
            mode=mode,
            label=label,
            capture=captured,
            anchor=anchor,
            progress=Progress(expected(params)),
            path=document_path(doc),
            anchor_id=anchor.uniqueId().toString() if anchor is not None else "",
        )
        try:
            self.job = self.connection.submit(
                self.form.mode().op,
                params,
                captured.images,
                model=(form.model or None) if form.mode != "compare" else None,
                preview=mode.op != "upscale",
                context=context,
            )
        except NotConnected as exc:
            self._show(str(exc), error=True)
            return
        self.form.text_error.clear_error()
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("waiting for the daemon")
        r = captured.region
        what = "region" if not mode.sends_image else "sent"
        self._show(f"{label}: {what} {r.width}x{r.height} px at ({r.x}, {r.y}); waiting for the daemon...")
        self._refresh_state()

    # -- Live mode ---------------------------------------------------------------------------------------
    def set_live(self, on: bool) -> None:
        """The Live button: start polling the shown document, or stop and remove the live layer."""
        if not on:
            if self.live is not None:
                live, self.live = self.live, None
                live.stop()
                self._show("Live is off: the live layer was removed.")
            self._refresh_state()
            return
        problem = self.live_problem()
        if problem:
            self._set_live_button(False)
            self._show(f"Live: {problem}", error=True, until=self._changed())
            return
        if self.form.mode().key not in ("refine", "controlnet"):
            index = self.form.mode_combo.findData("refine")
            self.form.mode_combo.setCurrentIndex(index)
        self.live = LiveSession(self, self.document())
        mode = "ControlNet" if self.form.mode().key == "controlnet" else "Refine"
        self._show(f"Live is on ({mode}, seed {self.live.seed}): paint, and the live layer follows.")
        self._refresh_state()

    def live_problem(self) -> str | None:
        """Why Live cannot start now (None: it can)."""
        if self.connection.state is not ConnState.CONNECTED:
            return self.connection.describe()
        doc = self.document()
        welcome, preset = self.connection.welcome, self.form.preset()
        mode = self.form.mode() if self.form.mode().key == "controlnet" else MODES_REFINE
        return document_problem(doc) or presets.mode_problem(welcome, preset, mode)

    def _set_live_button(self, on: bool) -> None:
        self.live_button.blockSignals(True)
        self.live_button.setChecked(on)
        self.live_button.blockSignals(False)

    def live_ended(self, session: LiveSession, why: str, remove: bool = False) -> None:
        """Live stops by itself: its document was closed (nothing to remove) or another is shown."""
        session.stop(remove=remove)
        if session is self.live:
            self.live = None
            self._set_live_button(False)
            self._show(f"Live is off: {why}.")
        self._refresh_state()

    def live_message(self, text: str, error: bool = False) -> None:
        self._show(text, error=error, until=self._changed() if error else None)

    def live_changed(self) -> None:
        self._refresh_state()

    def keep_live(self) -> None:
        if self.live is None:
            return
        try:
            text = self.live.keep()
        except Exception as exc:  # a Krita API surprise: say so, Live goes on
            traceback.print_exc()
            self._show(f"Keep failed: {type(exc).__name__}: {exc}", error=True)
            return
        self._show(text)
        self._refresh_history()

    def reword(self) -> None:
        """Reword the result layer picked in the Layers docker (reword.py); placed like any result."""
        self._refresh_state()
        doc, panel = self.document(), self.reword_panel
        if panel.problem is not None or doc is None:
            return
        built = panel.build(doc, self.connection.welcome)
        if built is None:
            return
        params, context = built
        try:
            self.job = self.connection.submit(
                "reword", params, {}, model=context.form.model or None, preview=True, context=context
            )
        except NotConnected as exc:
            self._show(str(exc), error=True)
            return
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("waiting for the daemon")
        self._show(f"Reword: {panel.node.name()} with the new prompt; waiting for the daemon...")
        self._refresh_state()

    def _reword_off(self, doc: Any) -> str | None:
        """Why no Reword can start now, whatever the layer (None: it can)."""
        if self.is_busy():
            return "A job is running: wait for it, or press Cancel."
        if self.connection.state is not ConnState.CONNECTED:
            return self.connection.describe()
        return document_problem(doc)

    def generate_problem(self) -> str | None:
        """Why Generate cannot run now (None: it can)."""
        if self.is_busy():
            return "A job is running: wait for it, or press Cancel."
        if self.connection.state is not ConnState.CONNECTED:
            return self.connection.describe()
        doc = self.document()
        mode = self.form.mode()
        problem = document_problem(doc) or presets.mode_problem(
            self.connection.welcome, self.form.preset(), mode
        )
        if problem:
            return problem
        form = self.form.values()
        problem = validate(form)
        if problem:
            return problem
        run = form.run_mode()
        if run.needs_selection and doc.selection() is None:
            return f"Select a region first: {run.label} repaints the selection (any shape, soft edges ok)."
        return None

    def _working_resolution(self, form: FormValues) -> int:
        """The native size a sized job (Generate, Mix) works at: the picked model's; for Compare the
        picked model's when it is ticked, else the first ticked one's."""
        name = form.model
        if form.mode == "compare" and form.compare_models and name not in form.compare_models:
            name = form.compare_models[0]
        return int(presets.find(self.connection.welcome, name).get("resolution") or 512)

    def cancel(self) -> None:
        if self.job is not None and not self.job.finished:
            self.connection.cancel(self.job)
            self._refresh_state()

    # -- the timer ---------------------------------------------------------------------------------
    def _tick(self) -> None:
        try:
            self.connection.tick()
            now = time.monotonic()
            if self.form.mode().key == "mix" and now - self._layers_synced > LAYER_SYNC_INTERVAL:
                self._layers_synced = now
                self.form.mix_panel.sync(self.selected_layers())
            if now - self._checked > CHECK_INTERVAL:
                self._checked = now
                if self.job is not None and not self.job.finished:
                    self._follow_document(self.job)
                self._place_parked()
                self._refresh_state()
            if now - self._saved_at > SAVE_INTERVAL:
                self._saved_at = now
                self._save_settings()
                self._refresh_history()
        except Exception as exc:  # never let an exception escape into Krita's event loop every 40 ms
            self._show(f"Internal error: {type(exc).__name__}: {exc}", error=True)

    def _follow_document(self, job: Job) -> None:
        """The job's document: saved under a new name (the record follows), or closed: a saved one's
        job is parked (its result waits for the file to be opened), an unsaved one's is cancelled."""
        context: JobContext = job.context
        if context.doc is None:
            return
        if any(doc == context.doc for doc in Krita.instance().documents()):
            path = document_path(context.doc)
            if path and path != context.path:
                context.path = path
                self.parking.remember(job, self.connection)
            return
        name = file_name(context.path)  # the closed document itself can no longer say its name
        if context.path:
            self.parking.park(job, f"{name} was closed")
            self.job = None
            self._show(
                f"{name} was closed: {context.label} goes on, and its result is added when you open "
                f"{name} again."
            )
            return
        context.doc, context.closed = None, True
        context.target = context.preview = None
        self.connection.cancel(job)
        self._show("The document was closed: its job was cancelled.")

    def _place_parked(self) -> None:
        """Results that waited for their document, now that it is open."""
        for job in self.parking.waiting():
            try:
                text = self.parking.try_place(job)
            except Exception as exc:  # a Krita API surprise: say so once, do not retry every tick
                traceback.print_exc()
                self.parking.forget(job)
                self._show(f"{self.parking.describe(job)}: could not add the result: {exc}", error=True)
                continue
            if text is not None:
                self._show(text)
                self._last_target = job.context.target or self._last_target
                self._refresh_history()

    def _save_settings(self) -> None:
        """Every form field, the mode and the folded sections go to Krita's settings when they change."""
        state = form_state.encode(form_state.state_of(self.form))
        if state != self._saved_state:
            Krita.instance().writeSetting(SETTINGS_GROUP, "form", state)
            self._saved_state = state

    def _refresh_history(self) -> None:
        """Rebuild the strip when the shown document, its records or its layers changed."""
        doc = self.document()
        annotation = None
        nodes: dict[str, Any] = {}
        if doc is not None:
            if "underpaint" in doc.annotationTypes():
                annotation = bytes(doc.annotation("underpaint"))
            stack = list(doc.rootNode().childNodes())
            while stack:
                node = stack.pop()
                nodes[node.uniqueId().toString()] = node
                stack.extend(node.childNodes())
        root = doc.rootNode().uniqueId().toString() if doc is not None else None
        key = (root, hash(annotation), frozenset(nodes))
        if key == self._history_key:
            return
        self._history_key = key
        entries = history.entries(annotation)
        self.strip.show_entries(entries, nodes.get)
        self.form.history_section.set_title(f"History ({len(entries)})" if entries else "History")

    # -- what the painter reads ------------------------------------------------------------------------
    def _changed(self) -> Callable[[], bool]:
        """A test that turns true once the form, the document or its selection differ from now."""
        now = self._signature()
        return lambda: self._signature() != now

    def _signature(self) -> str:
        doc = self.document()
        where = ""
        if doc is not None:
            selection = doc.selection()
            rect = (
                (selection.x(), selection.y(), selection.width(), selection.height()) if selection else None
            )
            where = f"{doc.rootNode().uniqueId().toString()} {rect}"
        return json.dumps(asdict(self.form.values()), sort_keys=True, default=str) + where

    def _show(self, text: str, error: bool = False, until: Callable[[], bool] | None = None) -> None:
        """The last thing that happened; an error with `until` clears itself once that turns true."""
        self._message = (text, error)
        self._message_until = until if error else None
        self._render_message()

    def _refresh_state(self) -> None:
        """Generate on or off (and why), Cancel, the progress bar, stale errors, the two lines."""
        self.blocker = self.generate_problem()
        busy = self.is_busy()
        self.generate_button.setEnabled(self.blocker is None)
        self.generate_button.setToolTip(GENERATE_TIP if self.blocker is None else f"Off: {self.blocker}")
        self.cancel_button.setEnabled(busy and not (self.job is not None and self.job.cancel_requested))
        live_on = self.live is not None
        self.live_button.setText("Live: on" if live_on else "Live")
        live_off = None if live_on else self.live_problem()
        self.live_button.setEnabled(live_off is None)
        self.live_button.setToolTip(LIVE_TIP if live_off is None else f"Off: {live_off}\n\n{LIVE_TIP}")
        self.keep_button.setEnabled(live_on and self.live.shown is not None)
        off = "" if self.keep_button.isEnabled() else "Off: no live result yet. "
        self.keep_button.setToolTip(off + KEEP_TIP)
        self.progress_bar.setVisible(busy)  # room for the form while idle
        doc = self.document()
        self.reword_panel.follow(doc, self.connection.welcome, self._reword_off(doc))
        if self._message_until is not None and self._message_until():
            self._message, self._message_until = ("", False), None
        self._render_status()
        self._render_message()

    def _render_status(self) -> None:
        """Why Generate is off (not while a job runs: the progress says that), else the daemon."""
        daemon = self.connection.describe()
        why = self.blocker if self.blocker and not self.is_busy() else None
        text = why or daemon
        if self.status_label.full_text() != text:
            self.status_label.set_full_text(text)
        connected = self.connection.state is ConnState.CONNECTED
        self.status_label.setStyleSheet(HINT_STYLE if why and connected else "")
        self.status_label.setToolTip(f"Generate is off: {why}\n\n{daemon}" if why and connected else daemon)

    def _render_message(self) -> None:
        text, style = self._message[0], ERROR_STYLE if self._message[1] else ""
        if self.is_busy() and self.job is not None:
            text, style = self._job_line(), ""
        if self.message_label.full_text() != text:
            self.message_label.set_full_text(text)
        self.message_label.setStyleSheet(style)
        self.message_label.setVisible(bool(text))

    def _job_line(self) -> str:
        """The running job: its state and progress, and its document when another one is shown."""
        job = self.job
        assert job is not None
        context: JobContext = job.context
        label = context.label
        shown = self.document()
        if context.doc is not None and (shown is None or not shown == context.doc):
            label += f" in {document_name(context.doc)}"
        if not self.connection.connected and not job.cancel_requested:
            return f"{label}: the daemon is out of reach; the job goes on there and resumes when it is back."
        if job.state is JobState.SUBMITTING:
            return self._message[0] if not job.cancel_requested else f"{label}: cancelling..."
        if job.loading is not None and job.state is JobState.QUEUED:
            return f"{label}: {loading_text(job.loading)}"
        if job.state is JobState.QUEUED:
            return f"{label}: queued (position {job.position})."
        if job.state is JobState.CANCELLING:
            return f"{label}: cancelling..."
        return f"{label}: {context.progress.text()}"

    # -- connection and job events -----------------------------------------------------------------
    def _connection_changed(self) -> None:
        state = self.connection.state
        color = {ConnState.CONNECTED: "#2e7d32", ConnState.CONNECTING: "#8d6e00"}.get(state, "#c62828")
        self.status_dot.setToolTip(
            f"the connection: green connected, yellow connecting, red not connected (now: {state.value})"
        )
        self.status_dot.setText(f'<span style="color:{color}">\u25cf</span>')
        welcome = self.connection.welcome
        if state is ConnState.CONNECTED and welcome is not None and welcome is not self._welcome_seen:
            self._welcome_seen = welcome
            self.form.set_welcome(welcome)
        self._refresh_state()

    def _job_event(self, job: Job, kind: str, message: dict[str, Any]) -> None:
        # Krita's API may run the event loop while the result goes in (waitForDone): the docker is busy
        # until the job's end is fully handled, so nothing sees a finished job half-placed. (A parked
        # job's events do not make it busy: it is not the job the painter is waiting for.)
        if isinstance(job.context, LiveContext):
            try:
                if self.live is not None and job in self.live.jobs:  # not a job of an earlier session
                    self.live.event(job, kind, message)
            except Exception as exc:  # a Krita API surprise: say so, Live goes on
                traceback.print_exc()
                self._show(f"Live: could not update the document: {type(exc).__name__}: {exc}", error=True)
            if kind != "progress":
                self._refresh_state()
            return
        current = job is self.job
        self._handling += current
        try:
            if kind == "accepted":
                self._remember(job)
            try:
                self._apply_job_event(job, kind, message)
            except Exception as exc:  # a Krita API surprise must not leave the docker stuck "busy"
                traceback.print_exc()
                why = f"{type(exc).__name__}: {exc}"
                self._show(f"{job.op}: could not update the document: {why}", error=True)
                if not job.finished:
                    self.connection.cancel(job)
                else:
                    self.parking.forget(job)
            if job.finished and not (job.state is JobState.DONE and job in self.parking.waiting()):
                self.parking.forget(job)  # placed, or ended without a result: nothing left to keep
            if job.finished:
                self.history.append(history_entry(job))
                self._last_target = job.context.target or self._last_target
                self._refresh_history()
        finally:
            self._handling -= current
        self._refresh_state()

    def _remember(self, job: Job) -> None:
        """Accepted: a job of a saved document is kept (pending.py) until its result is placed."""
        context: JobContext = job.context
        if context.doc is not None:
            context.path = document_path(context.doc)
        try:
            self.parking.remember(job, self.connection)
        except OSError as exc:
            self._show(f"Could not keep the job for a restart ({exc}); it runs all the same.", error=True)

    def _apply_job_event(self, job: Job, kind: str, message: dict[str, Any]) -> None:
        context: JobContext = job.context
        if job is self.job and context.doc is not None:
            self._follow_document(job)  # closed since the last check: a closed document is never touched
        if kind == "loading" and job is self.job:
            self.progress_bar.setFormat(loading_text(job.loading or {}))
        if kind == "progress" and job is self.job:
            context.progress.update(job.step, job.total)
            self.progress_bar.setValue(context.progress.percent)
            self.progress_bar.setFormat(context.progress.text())
            if message.get("preview") and not job.cancel_requested:
                show_preview(context, message["preview"])
                node = context.preview.node if context.preview is not None else None
                if node is not None and not context.preview_id:  # found again in a document saved now
                    context.preview_id = node.uniqueId().toString()
                    self._remember(job)
        elif kind == "result" and context.parked:
            text = self.parking.try_place(job)
            where = self.parking.describe(job)
            self._show(text or f"{where} is ready: it is added when you open {file_name(context.path)}.")
        elif kind == "result":
            self.last_seed = int((job.result or {}).get("seed", 0))
            self.form.last_seed_label.setText(f"last: {self.last_seed}")
            if context.doc is None:
                self._show("The result arrived after its document was closed; it was dropped.")
                return
            text = place_result(Krita.instance(), context, job.result or {}, self.connection.welcome or {})
            self._show(text, error=" Failed: " in text, until=self._changed())
        elif kind in ("cancelled", "error"):
            clean_up(context)
            if kind == "error":
                self._job_failed(job, context)
            elif context.closed:
                self._show(f"{context.label} cancelled: its document was closed.")
            else:
                self._show(f"{context.label} cancelled: nothing was added.")

    def _job_failed(self, job: Job, context: JobContext) -> None:
        """Say why; a prompt the daemon could not read is pointed at in its box."""
        field = job.error_field
        if field.startswith("params.items.") and field.endswith(".prompt"):
            field = "params.prompt"  # Mix sends the prompt as one of its items
        box = {
            "params.prompt": self.form.prompt_edit,
            "params.negative_prompt": self.form.negative_edit,
            "params.instruction": self.form.instruction_edit,
        }.get(field)
        if box is not None and job.error_code == "invalid_value":
            if box is self.form.negative_edit:  # the negative prompt is in the scrolling part
                self.scroll.ensureWidgetVisible(box)
            self.form.text_error.show_error(box, job.message, job.error_position)
        if job.error_code == "connection_lost":
            until = self._connected_again()
        else:
            until = self._changed()
        label = self.parking.describe(job) if context.parked else context.label
        self._show(f"{label} failed: {job.message}", error=True, until=until)

    def _connected_again(self) -> Callable[[], bool]:
        seen = self.connection.welcome
        return lambda: self.connection.state is ConnState.CONNECTED and self.connection.welcome is not seen

    def is_busy(self) -> bool:
        return bool(self._handling) or (self.job is not None and not self.job.finished)


def _setting(key: str, default: str) -> str:
    return str(Krita.instance().readSetting(SETTINGS_GROUP, key, default) or "")


def store_path() -> str:
    """pending.py's file, beside Krita's own data (e.g. ~/.local/share/krita/underpaint-pending.json)."""
    folder = QStandardPaths.writableLocation(QStandardPaths.AppDataLocation)
    return f"{folder}/{FILE_NAME}"


OPEN_CONNECTIONS: list[Connection] = []  # strong references: a connection must live until it is closed
SESSIONS: dict[str, Connection] = {}  # session token -> the connection of this Krita that holds it


def free_session(token: str | None) -> str | None:
    """A kept token, unless another docker of this Krita (another window) holds that session."""
    return token if token and token not in SESSIONS else None


def claim_session(connection: Connection, token: str) -> None:
    for old in [t for t, c in SESSIONS.items() if c is connection and t != token]:
        del SESSIONS[old]
    SESSIONS[token] = connection


def _kept(job: Job) -> bool:
    """Quitting: a job of a saved document goes on (its result is placed after the restart)."""
    return bool(getattr(job.context, "path", "")) and not getattr(job.context, "reword_of", "")


def close_connection(connection: Connection) -> None:
    """Close the connection: jobs of saved documents go on on the daemon (kept in pending.py's file for
    the next start); the others are cancelled there (waiting up to 1 s for it to hear)."""
    if connection in OPEN_CONNECTIONS:
        OPEN_CONNECTIONS.remove(connection)
    for token in [t for t, c in SESSIONS.items() if c is connection]:
        del SESSIONS[token]
    live = connection.active_jobs()
    kept = sum(1 for job in live if job.job_id and _kept(job))
    connection.on_change = lambda: None  # the docker's widgets may be gone already
    connection.on_job = lambda job, kind, message: None
    connection.close(wait=1.0, keep=_kept)
    if len(live) > kept:
        print(f"underpaint: cancelled {len(live) - kept} job(s) at {connection.endpoint}", file=sys.stderr)
    if kept:
        print(
            f"underpaint: {kept} job(s) go on at {connection.endpoint}; resumed at the next start",
            file=sys.stderr,
        )


def close_all_connections() -> None:
    """Krita is quitting (Notifier.applicationClosing, or the interpreter exits)."""
    for connection in list(OPEN_CONNECTIONS):
        close_connection(connection)
