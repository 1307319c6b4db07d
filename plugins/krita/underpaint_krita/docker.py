"""The "Underpaint" docker: the form, Generate/Cancel, progress, the status lines and the history
strip, and the glue between the document (placing.py, document.py) and the daemon (connection.py).

Everything runs on Krita's UI thread; the only network work is `Connection.tick()`, called from a
QTimer, which never blocks. Closing the document cancels its job; quitting Krita cancels every job.

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
from PyQt5.QtCore import Qt, QTimer
from PyQt5.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from . import form_state, history, presets
from .connection import DEFAULT_ENDPOINT, Connection, ConnState, NotConnected
from .document import InputError, capture, document_problem
from .form import Form
from .jobs import Job, JobState
from .layers import layers_of
from .modes import FormValues, build_params, validate
from .placing import JobContext, clean_up, document_name, history_entry, place_result, show_preview
from .progress import Progress, expected
from .strip import HistoryStrip
from .widgets import ElidedLabel

SETTINGS_GROUP = "underpaint"
TICK_MS = 40
CHECK_INTERVAL = 0.25  # s between checks of what Generate needs (selection, document, form)
SAVE_INTERVAL = 1.0  # s between checks whether the form's settings changed (then they are saved)
LAYER_SYNC_INTERVAL = 0.4  # s between reads of the Layers docker's selection (Mix)
GENERATE_TIP = "run the mode on the selection (or canvas): results come as new layers"
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
        endpoint = _setting("endpoint", DEFAULT_ENDPOINT) or DEFAULT_ENDPOINT
        self.connection = Connection(endpoint, on_change=self._connection_changed, on_job=self._job_event)
        self.form = Form(
            self._layer_choices,
            saved_model=lambda: _setting("model", ""),
            save_model=lambda name: Krita.instance().writeSetting(SETTINGS_GROUP, "model", name),
        )
        self.form.reuse_seed_button.clicked.connect(self.reuse_seed)
        self._build_ui(endpoint)
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
        self._connection_changed()

    # -- UI ----------------------------------------------------------------------------------------
    def _build_ui(self, endpoint: str) -> None:
        """Model, mode and prompt on top and Generate below never scroll; the rest does."""
        self.endpoint_edit = QLineEdit(endpoint)
        self.endpoint_edit.setToolTip("the daemon's ZeroMQ endpoint (`underpaint serve --endpoint ...`)")
        self.endpoint_edit.setMinimumWidth(40)
        self.endpoint_edit.returnPressed.connect(self.reconnect)
        self.connect_button = QPushButton("Connect")
        self.connect_button.setToolTip("connect to the endpoint now (the docker also retries by itself)")
        self.connect_button.clicked.connect(self.reconnect)
        daemon = QWidget()
        row = QHBoxLayout(daemon)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.endpoint_edit, 1)
        row.addWidget(self.connect_button)
        label = QLabel("Daemon")
        label.setToolTip(self.endpoint_edit.toolTip())
        self.form.advanced_rows.add(label, daemon)
        self.strip = HistoryStrip()
        self.strip.picked.connect(self.reuse_entry)
        self.form.history_section.content.layout().addWidget(self.strip)
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
        endpoint = self.endpoint_edit.text().strip() or DEFAULT_ENDPOINT
        Krita.instance().writeSetting(SETTINGS_GROUP, "endpoint", endpoint)
        if self.job is not None and not self.job.finished:
            self._show(f"{self.job.op} job cancelled: switching daemons.")
        self.connection.set_endpoint(endpoint, force=True)

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
        params = build_params(form, size=captured.size, spec=self.form.spec())
        context = JobContext(
            doc=doc,
            form=form,
            mode=mode,
            label=label,
            capture=captured,
            anchor=doc.activeNode(),
            progress=Progress(expected(params)),
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
                    self._cancel_if_document_closed(self.job)
                self._refresh_state()
            if now - self._saved_at > SAVE_INTERVAL:
                self._saved_at = now
                self._save_settings()
                self._refresh_history()
        except Exception as exc:  # never let an exception escape into Krita's event loop every 40 ms
            self._show(f"Internal error: {type(exc).__name__}: {exc}", error=True)

    def _cancel_if_document_closed(self, job: Job) -> None:
        context: JobContext = job.context
        if context.doc is None:
            return
        if not any(doc == context.doc for doc in Krita.instance().documents()):
            context.doc, context.closed = None, True
            context.target = context.preview = None
            self.connection.cancel(job)
            self._show("The document was closed: its job was cancelled.")

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
        self.progress_bar.setVisible(busy)  # room for the form while idle
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
        if self.is_busy():
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
        if job.state is JobState.SUBMITTING:
            return self._message[0] if not job.cancel_requested else f"{label}: cancelling..."
        if job.state is JobState.QUEUED:
            return f"{label}: queued (position {job.position})."
        if job.state is JobState.CANCELLING:
            return f"{label}: cancelling..."
        return f"{label}: {context.progress.text()}"

    # -- connection and job events -----------------------------------------------------------------
    def _connection_changed(self) -> None:
        state = self.connection.state
        color = {ConnState.CONNECTED: "#2e7d32", ConnState.CONNECTING: "#8d6e00"}.get(state, "#c62828")
        self.status_dot.setText(f'<span style="color:{color}">\u25cf</span>')
        welcome = self.connection.welcome
        if state is ConnState.CONNECTED and welcome is not None and welcome is not self._welcome_seen:
            self._welcome_seen = welcome
            self.form.set_welcome(welcome)
        self._refresh_state()

    def _job_event(self, job: Job, kind: str, message: dict[str, Any]) -> None:
        # Krita's API may run the event loop while the result goes in (waitForDone): the docker is busy
        # until the job's end is fully handled, so nothing sees a finished job half-placed.
        self._handling += 1
        try:
            try:
                self._apply_job_event(job, kind, message)
            except Exception as exc:  # a Krita API surprise must not leave the docker stuck "busy"
                traceback.print_exc()
                why = f"{type(exc).__name__}: {exc}"
                self._show(f"{job.op}: could not update the document: {why}", error=True)
                if not job.finished:
                    self.connection.cancel(job)
            if job.finished:
                self.history.append(history_entry(job))
                self._last_target = job.context.target or self._last_target
                self._refresh_history()
        finally:
            self._handling -= 1
        self._refresh_state()

    def _apply_job_event(self, job: Job, kind: str, message: dict[str, Any]) -> None:
        context: JobContext = job.context
        if kind == "progress":
            context.progress.update(job.step, job.total)
            self.progress_bar.setValue(context.progress.percent)
            self.progress_bar.setFormat(context.progress.text())
            if message.get("preview") and not job.cancel_requested:
                show_preview(context, message["preview"])
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
        self._show(f"{context.label} failed: {job.message}", error=True, until=until)

    def _connected_again(self) -> Callable[[], bool]:
        seen = self.connection.welcome
        return lambda: self.connection.state is ConnState.CONNECTED and self.connection.welcome is not seen

    def is_busy(self) -> bool:
        return bool(self._handling) or (self.job is not None and not self.job.finished)


def _setting(key: str, default: str) -> str:
    return str(Krita.instance().readSetting(SETTINGS_GROUP, key, default) or "")


OPEN_CONNECTIONS: list[Connection] = []  # strong references: a connection must live until it is closed


def close_connection(connection: Connection) -> None:
    """Cancel the connection's jobs on the daemon (waiting up to 1 s for it to hear) and close it."""
    if connection in OPEN_CONNECTIONS:
        OPEN_CONNECTIONS.remove(connection)
    live = len(connection.active_jobs())
    connection.on_change = lambda: None  # the docker's widgets may be gone already
    connection.on_job = lambda job, kind, message: None
    connection.close(wait=1.0)
    if live:
        print(f"underpaint: cancelled {live} job(s) on the daemon at {connection.endpoint}", file=sys.stderr)


def close_all_connections() -> None:
    """Krita is quitting (Notifier.applicationClosing, or the interpreter exits)."""
    for connection in list(OPEN_CONNECTIONS):
        close_connection(connection)
