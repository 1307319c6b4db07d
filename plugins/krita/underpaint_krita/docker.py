"""The "Underpaint" docker: the form, Generate/Cancel, progress, and the glue between the document
(document.py, layers.py) and the daemon (connection.py).

Everything runs on Krita's UI thread; the only network work is `Connection.tick()`, called from a
QTimer, which never blocks. Closing the document cancels its job; quitting Krita cancels every job.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from krita import DockWidget, Krita
from PyQt5.QtCore import Qt, QTimer
from PyQt5.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from . import presets
from .connection import DEFAULT_ENDPOINT, Connection, ConnState, NotConnected
from .document import Capture, InputError, capture, document_problem
from .form import Form
from .jobs import Job, JobState
from .layers import Preview, Target, insert_results, layers_of, open_upscaled, save_records, target_for
from .modes import FormValues, Mode, build_params, validate
from .records import compare_entry, compare_problems, generation_record, layer_name
from .widgets import ElidedLabel

SETTINGS_GROUP = "underpaint"
TICK_MS = 40
PREVIEW_INTERVAL = 0.25  # s between preview layer updates (each one recomposites the image)
LAYER_SYNC_INTERVAL = 0.4  # s between reads of the Layers docker's selection (Mix)


@dataclass
class JobContext:
    """What the docker remembers about a submitted job to place its result later."""

    doc: Any
    form: FormValues
    mode: Mode  # the mode that reads and places (Compare: its base mode)
    label: str  # what the painter picked, for messages
    capture: Capture
    anchor: Any
    target: Target | None = None
    preview: Preview | None = None
    preview_at: float = 0.0
    submitted: float = field(default_factory=time.monotonic)
    placed: list[tuple[Any, Any]] = field(default_factory=list)
    closed: bool = False  # its document was closed while it ran


class UnderpaintDocker(DockWidget):
    """Settings > Dockers > Underpaint."""

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("Underpaint")
        self.job: Job | None = None
        self.last_seed: int | None = None
        self.history: list[dict[str, Any]] = []  # one entry per finished job (what the painter saw)
        endpoint = _setting("endpoint", DEFAULT_ENDPOINT) or DEFAULT_ENDPOINT
        self.connection = Connection(endpoint, on_change=self._connection_changed, on_job=self._job_event)
        self.form = Form(
            self._layer_choices,
            saved_model=lambda: _setting("model", ""),
            save_model=lambda name: Krita.instance().writeSetting(SETTINGS_GROUP, "model", name),
        )
        self.form.reuse_seed_button.clicked.connect(self.reuse_seed)
        self._build_ui(endpoint)
        self._docs_checked = 0.0
        self._layers_synced = 0.0
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
        connection_box = QGroupBox("Daemon")
        connection_box.setToolTip("the Underpaint daemon this docker talks to")
        box = QVBoxLayout(connection_box)
        row = QHBoxLayout()
        self.endpoint_edit = QLineEdit(endpoint)
        self.endpoint_edit.setToolTip("the daemon's ZeroMQ endpoint (`underpaint serve --endpoint ...`)")
        self.endpoint_edit.returnPressed.connect(self.reconnect)
        self.connect_button = QPushButton("Connect")
        self.connect_button.setToolTip("connect to the endpoint now (the docker also retries by itself)")
        self.connect_button.clicked.connect(self.reconnect)
        row.addWidget(self.endpoint_edit, 1)
        row.addWidget(self.connect_button)
        box.addLayout(row)
        self.form.body.layout().addWidget(connection_box)
        self.form.body.layout().addStretch(1)

        footer = QVBoxLayout()
        buttons = QHBoxLayout()
        self.generate_button = QPushButton("Generate")
        self.generate_button.setToolTip(
            "run the mode on the selection (or canvas): results come as new layers"
        )
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
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setToolTip("progress of the running job (denoising steps)")
        footer.addWidget(self.progress_bar)
        self.message_label = QLabel()
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.message_label.setToolTip("what happened last")
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
        self._update_buttons()

    # -- actions -----------------------------------------------------------------------------------
    def reconnect(self) -> None:
        endpoint = self.endpoint_edit.text().strip() or DEFAULT_ENDPOINT
        Krita.instance().writeSetting(SETTINGS_GROUP, "endpoint", endpoint)
        if self.job is not None and not self.job.finished:
            self._show(f"{self.job.op} job cancelled: switching daemons.", error=False)
        self.connection.set_endpoint(endpoint, force=True)

    def reuse_seed(self) -> None:
        if self.last_seed is not None:
            self.form.random_seed_check.setChecked(False)
            self.form.seed_edit.setText(str(self.last_seed))

    def generate(self) -> None:
        """Read the region, submit the job; the rest happens in `_job_event`."""
        if self.job is not None and not self.job.finished:
            self._show("A job is already running: wait for it or press Cancel.", error=True)
            return
        if self.connection.state is not ConnState.CONNECTED:
            self._show(self.connection.describe(), error=True)
            return
        doc = self.document()
        if self.form.mode().key == "mix":
            self.form.mix_panel.sync(self.selected_layers())
        form = self.form.values()
        welcome = self.connection.welcome
        problem = (
            document_problem(doc)
            or presets.mode_problem(welcome, self.form.preset(), self.form.mode())
            or validate(form)
        )
        if problem:
            self._show(problem, error=True)
            return
        mode, label = form.run_mode(), self.form.mode().label
        try:
            captured = capture(doc, form, self._working_resolution(form))
        except InputError as exc:
            self._show(str(exc), error=True)
            return
        context = JobContext(
            doc=doc, form=form, mode=mode, label=label, capture=captured, anchor=doc.activeNode()
        )
        try:
            self.job = self.connection.submit(
                self.form.mode().op,
                build_params(form, size=captured.size, spec=self.form.spec()),
                captured.images,
                model=(form.model or None) if form.mode != "compare" else None,
                preview=mode.op != "upscale",
                context=context,
            )
        except NotConnected as exc:
            self._show(str(exc), error=True)
            return
        self.progress_bar.setRange(0, 0)  # busy until the first progress event
        r = captured.region
        what = "region" if not mode.sends_image else "sent"
        self._show(f"{label}: {what} {r.width}x{r.height} px at ({r.x}, {r.y}); waiting for the daemon...")
        self._update_buttons()

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
            self._show("Cancelling...")
            self._update_buttons()

    # -- the timer ---------------------------------------------------------------------------------
    def _tick(self) -> None:
        try:
            self.connection.tick()
            now = time.monotonic()
            if self.job is not None and not self.job.finished and now - self._docs_checked > 0.25:
                self._docs_checked = now
                self._cancel_if_document_closed(self.job)
            if self.form.mode().key == "mix" and now - self._layers_synced > LAYER_SYNC_INTERVAL:
                self._layers_synced = now
                self.form.mix_panel.sync(self.selected_layers())
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

    # -- connection and job events -----------------------------------------------------------------
    def _connection_changed(self) -> None:
        state = self.connection.state
        color = {ConnState.CONNECTED: "#2e7d32", ConnState.CONNECTING: "#8d6e00"}.get(state, "#c62828")
        self.status_dot.setText(f'<span style="color:{color}">\u25cf</span>')
        self.status_label.set_full_text(self.connection.describe())
        welcome = self.connection.welcome
        if state is ConnState.CONNECTED and welcome is not None and welcome is not self._welcome_seen:
            self._welcome_seen = welcome
            self.form.set_welcome(welcome)
        self._update_buttons()

    def _job_event(self, job: Job, kind: str, message: dict[str, Any]) -> None:
        try:
            self._apply_job_event(job, kind, message)
        except Exception as exc:  # a Krita API surprise must not leave the docker stuck "busy"
            traceback.print_exc()
            self._show(f"{job.op}: could not update the document: {type(exc).__name__}: {exc}", error=True)
            if not job.finished:
                self.connection.cancel(job)
        if job.finished:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(1 if job.state is JobState.DONE else 0)
            self.history.append(self._history_entry(job))
        self._update_buttons()

    def _apply_job_event(self, job: Job, kind: str, message: dict[str, Any]) -> None:
        context: JobContext = job.context
        if kind == "accepted":
            self._show(f"{context.label}: queued (position {job.position}).")
        elif kind == "progress":
            self.progress_bar.setRange(0, max(1, job.total))
            self.progress_bar.setValue(job.step)
            if job.state is JobState.RUNNING:
                self._show(f"{context.label}: step {job.step}/{job.total}")
            if message.get("preview") and not job.cancel_requested:
                self._show_preview(context, message["preview"])
        elif kind == "result":
            self._finish_result(job)
        elif kind in ("cancelled", "error"):
            self._clean_up(context)
            if kind == "error":
                self._show(f"{context.label} failed: {job.message}", error=True)
            elif context.closed:
                self._show(f"{context.label} cancelled: its document was closed.")
            else:
                self._show(f"{context.label} cancelled: nothing was added.")

    def _show_preview(self, context: JobContext, preview: dict[str, Any]) -> None:
        if context.doc is None or context.mode.op == "upscale":
            return
        now = time.monotonic()
        if now - context.preview_at < PREVIEW_INTERVAL and context.preview is not None:
            return
        context.preview_at = now
        if context.target is None:
            context.target = target_for(context.doc, context.anchor)
        if context.preview is None:
            context.preview = Preview(context.target, context.capture.region, context.capture.mask)
        context.preview.show(preview)

    def _clean_up(self, context: JobContext) -> None:
        if context.doc is None:
            return
        if context.preview is not None:
            context.preview.remove()
        if context.target is not None:
            context.target.remove_group_if_unused()

    def _layer_names(self, context: JobContext, result: dict[str, Any]) -> list[str]:
        """One name per image: mode, seed, the preset that made it (and for Compare its seconds)."""
        names = []
        for image in result.get("images") or []:
            preset = str(image.get("model") or result.get("model") or "")
            entry = compare_entry(result, preset) if context.form.mode == "compare" else None
            seconds = float(entry.get("run") or 0.0) if entry is not None else None
            names.append(layer_name(context.form, int(image.get("seed", self.last_seed)), preset, seconds))
        return names

    def _finish_result(self, job: Job) -> None:
        context: JobContext = job.context
        result = job.result or {}
        images = result.get("images") or []
        self.last_seed = int(result.get("seed", 0))
        self.form.last_seed_label.setText(f"last: {self.last_seed}")
        if context.doc is None:
            self._show("The result arrived after its document was closed; it was dropped.")
            return
        names = self._layer_names(context, result)
        welcome = self.connection.welcome or {}
        extra = {
            "daemon": welcome.get("daemon"),
            "device": welcome.get("device"),
            "family": presets.find(welcome, result.get("model")).get("family"),
            "source": context.capture.source,
            "source_layers": context.capture.source_layers,
            "region": context.capture.region.as_list(),
        }
        if context.mode.op == "upscale":
            title = f"Upscaled x{context.form.factor} #{self.last_seed}"
            new_doc = open_upscaled(Krita.instance(), result, title, names)
            save_records(
                new_doc,
                {
                    node.uniqueId().toString(): {
                        **generation_record(context.form, result, image, (0, 0), extra),
                        "name": node.name(),
                    }
                    for node, image in zip(
                        layers_of(new_doc.rootNode())[-len(images) :], images, strict=False
                    )
                },
            )
            self._show(f"Upscale: opened {title} ({images[0]['width']}x{images[0]['height']}).")
            return
        if context.target is None:
            context.target = target_for(context.doc, context.anchor)
        placed = insert_results(
            context.target,
            context.preview,
            result,
            context.capture.region,
            context.capture.mask,
            context.capture.size,
            names,
        )
        context.preview = None
        records = {}
        for (node, rect), image in zip(placed, images, strict=True):
            records[node.uniqueId().toString()] = {
                **generation_record(context.form, result, image, (rect.x, rect.y), extra),
                "name": node.name(),
            }
        save_records(context.doc, records)
        context.placed = placed
        seeds = ", ".join(str(image.get("seed")) for image in images)
        problems = compare_problems(result)
        text = (
            f"{context.label}: added {len(placed)} layer(s) in the '{context.target.group.name()}' "
            f"group (seed {seeds})."
        )
        self._show(text + "".join(f" Failed: {p}." for p in problems), error=bool(problems))

    def _history_entry(self, job: Job) -> dict[str, Any]:
        context: JobContext = job.context
        entry: dict[str, Any] = {
            "mode": context.form.mode,
            "op": job.op,
            "state": job.state.value,
            "message": job.message,
            "job": job.job_id,
            "events": list(job.events),
            "region": context.capture.region.as_list(),
            "seconds": round(time.monotonic() - context.submitted, 3),
        }
        if job.result is not None:
            entry["seed"] = job.result.get("seed")
            entry["model"] = job.result.get("model")
            entry["compare"] = job.result.get("compare")
            entry["images"] = [
                {k: image.get(k) for k in ("x", "y", "width", "height", "seed", "model")}
                for image in job.result.get("images") or []
            ]
            entry["layers"] = [
                {"name": node.name(), "uuid": node.uniqueId().toString(), "rect": rect.as_list()}
                for node, rect in context.placed
            ]
        return entry

    # -- small helpers -------------------------------------------------------------------------------
    def _show(self, text: str, error: bool = False) -> None:
        self.message_label.setText(text)
        self.message_label.setStyleSheet("color: #c62828" if error else "")
        self.message_label.setVisible(bool(text))

    def _update_buttons(self) -> None:
        busy = self.job is not None and not self.job.finished
        connected = self.connection.state is ConnState.CONNECTED
        self.generate_button.setEnabled(connected and not busy)
        self.cancel_button.setEnabled(busy and not (self.job is not None and self.job.cancel_requested))
        self.progress_bar.setVisible(busy)  # room for the form while idle

    def is_busy(self) -> bool:
        return self.job is not None and not self.job.finished


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
