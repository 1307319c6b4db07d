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
from PyQt5.QtCore import QRegularExpression, Qt, QTimer
from PyQt5.QtGui import QRegularExpressionValidator
from PyQt5.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .connection import DEFAULT_ENDPOINT, Connection, ConnState, NotConnected
from .document import Capture, InputError, capture, document_problem
from .jobs import Job, JobState
from .layers import Preview, Target, insert_results, layers_of, open_upscaled, save_records, target_for
from .modes import (
    CONTROL,
    FACTOR,
    IMAGE_GUIDANCE,
    INSTRUCTION,
    MODES,
    MODES_BY_KEY,
    NEGATIVE,
    PROMPT,
    REGION,
    STRENGTH,
    FormValues,
    Mode,
    build_params,
    generation_record,
    layer_name,
    validate,
)
from .widgets import UnitWidget, fill_combo

SETTINGS_GROUP = "underpaint"
TICK_MS = 40
PREVIEW_INTERVAL = 0.25  # s between preview layer updates (each one recomposites the image)
MAX_SEED = 2**32 - 1


@dataclass
class JobContext:
    """What the docker remembers about a submitted job to place its result later."""

    doc: Any
    form: FormValues
    mode: Mode
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
        endpoint = (
            Krita.instance().readSetting(SETTINGS_GROUP, "endpoint", DEFAULT_ENDPOINT) or DEFAULT_ENDPOINT
        )
        self.connection = Connection(endpoint, on_change=self._connection_changed, on_job=self._job_event)
        self._build_ui(endpoint)
        self._mode_changed()
        self._docs_checked = 0.0
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
        body = QWidget()
        layout = QVBoxLayout(body)

        row = QHBoxLayout()
        self.endpoint_edit = QLineEdit(endpoint)
        self.endpoint_edit.setToolTip("the daemon's ZeroMQ endpoint (`underpaint serve --endpoint ...`)")
        self.endpoint_edit.returnPressed.connect(self.reconnect)
        self.connect_button = QPushButton("Connect")
        self.connect_button.clicked.connect(self.reconnect)
        row.addWidget(self.endpoint_edit)
        row.addWidget(self.connect_button)
        layout.addLayout(row)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.status_label)

        form = QFormLayout()
        self._rows: dict[str, list[QWidget]] = {}
        self.mode_combo = QComboBox()
        for mode in MODES:
            self.mode_combo.addItem(mode.label, mode.key)
        self.mode_combo.currentIndexChanged.connect(self._mode_changed)
        form.addRow("Mode", self.mode_combo)
        self.mode_hint = QLabel()
        self.mode_hint.setWordWrap(True)
        form.addRow(self.mode_hint)
        self.source_combo = QComboBox()
        self.source_combo.addItem("Visible image", "visible")
        self.source_combo.addItem("Active layer", "layer")
        self._add_row(form, REGION, "Source", self.source_combo)
        self.model_combo = QComboBox()
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        form.addRow("Model", self.model_combo)
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("what to paint, e.g. a red fox in the snow")
        self.prompt_edit.setMaximumHeight(70)
        self._add_row(form, PROMPT, "Prompt", self.prompt_edit)
        self.negative_edit = QLineEdit()
        self.negative_edit.setPlaceholderText("what to avoid")
        self._add_row(form, NEGATIVE, "Negative", self.negative_edit)
        self.instruction_edit = QLineEdit()
        self.instruction_edit.setPlaceholderText("e.g. make it winter")
        self._add_row(form, INSTRUCTION, "Instruction", self.instruction_edit)
        self.strength_spin = self._double(0.01, 1.0, 0.05, 1.0)
        self._add_row(form, STRENGTH, "Strength", self.strength_spin)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 200)
        self.steps_spin.setValue(30)
        form.addRow("Steps", self.steps_spin)
        self.guidance_spin = self._double(0.0, 30.0, 0.5, 7.5)
        form.addRow("Guidance", self.guidance_spin)
        self.image_guidance_spin = self._double(0.0, 10.0, 0.1, 1.5)
        self._add_row(form, IMAGE_GUIDANCE, "Image guidance", self.image_guidance_spin)

        seed_row = QHBoxLayout()
        self.random_seed_check = QCheckBox("Random")
        self.random_seed_check.setChecked(True)
        self.seed_edit = QLineEdit("0")
        self.seed_edit.setValidator(QRegularExpressionValidator(QRegularExpression(r"\d{0,10}")))
        self.seed_edit.setEnabled(False)
        self.random_seed_check.toggled.connect(lambda on: self.seed_edit.setEnabled(not on))
        seed_row.addWidget(self.random_seed_check)
        seed_row.addWidget(self.seed_edit)
        form.addRow("Seed", seed_row)
        last_row = QHBoxLayout()
        self.last_seed_label = QLabel("last seed: -")
        self.reuse_seed_button = QPushButton("Reuse")
        self.reuse_seed_button.setToolTip("fix the seed to the last one used, to vary only the prompt")
        self.reuse_seed_button.clicked.connect(self.reuse_seed)
        last_row.addWidget(self.last_seed_label)
        last_row.addWidget(self.reuse_seed_button)
        form.addRow("", last_row)
        self.variations_spin = QSpinBox()
        self.variations_spin.setRange(1, 8)
        form.addRow("Variations", self.variations_spin)
        self.factor_combo = QComboBox()
        self.factor_combo.addItem("x4 (diffusion upscaler)", 4)
        self.factor_combo.addItem("x2 (latent upscaler)", 2)
        self._add_row(form, FACTOR, "Factor", self.factor_combo)
        layout.addLayout(form)

        advanced = QGroupBox("Advanced")
        adv = QFormLayout(advanced)
        self.resolution_spin = QSpinBox()
        self.resolution_spin.setRange(0, 2048)
        self.resolution_spin.setSingleStep(64)
        self.resolution_spin.setSpecialValueText("model's own")
        adv.addRow("Working size", self.resolution_spin)
        self.padding_spin = QSpinBox()
        self.padding_spin.setRange(0, 4096)
        self.padding_spin.setValue(32)
        adv.addRow("Context padding", self.padding_spin)
        self.feather_spin = QSpinBox()
        self.feather_spin.setRange(0, 256)
        self.feather_spin.setValue(8)
        adv.addRow("Feather", self.feather_spin)
        self.scheduler_combo = QComboBox()
        self.scheduler_combo.addItem("model's own", "")
        adv.addRow("Sampler", self.scheduler_combo)
        layout.addWidget(advanced)

        self.units_box = QGroupBox("ControlNet units")
        units_layout = QVBoxLayout(self.units_box)
        self.units = [UnitWidget(n, self._layer_choices) for n in (1, 2)]
        for unit in self.units:
            units_layout.addWidget(unit)
        self._rows.setdefault(CONTROL, []).append(self.units_box)
        layout.addWidget(self.units_box)

        layout.addStretch(1)

        # Generate/Cancel, progress and messages stay visible below the scrolling form.
        footer = QVBoxLayout()
        buttons = QHBoxLayout()
        self.generate_button = QPushButton("Generate")
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.generate_button)
        buttons.addWidget(self.cancel_button)
        footer.addLayout(buttons)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        footer.addWidget(self.progress_bar)
        self.message_label = QLabel()
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        footer.addWidget(self.message_label)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        outer = QWidget()
        outer_layout = QVBoxLayout(outer)
        outer_layout.setContentsMargins(0, 0, 0, 0)
        outer_layout.addWidget(scroll, 1)
        outer_layout.addLayout(footer)
        self.setWidget(outer)

    @staticmethod
    def _double(low: float, high: float, step: float, value: float) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(low, high)
        spin.setSingleStep(step)
        spin.setValue(value)
        return spin

    def _add_row(self, form: QFormLayout, key: str, label: str, widget: QWidget) -> None:
        label_widget = QLabel(label)
        form.addRow(label_widget, widget)
        self._rows.setdefault(key, []).extend([label_widget, widget])

    def current_mode(self) -> Mode:
        return MODES_BY_KEY[str(self.mode_combo.currentData())]

    def _mode_changed(self) -> None:
        mode = self.current_mode()
        for key, widgets in self._rows.items():
            for widget in widgets:
                widget.setVisible(key in mode.fields)
        if mode.default_strength is not None:
            self.strength_spin.setValue(mode.default_strength)
        self.mode_hint.setText(mode.hint)
        self._fill_models()

    def _fill_models(self) -> None:
        welcome = self.connection.welcome or {}
        op = self.current_mode().op
        presets = [p for p in welcome.get("models") or [] if op in (p.get("ops") or [])]
        fill_combo(
            self.model_combo,
            [(p["name"], p["name"], True) for p in presets] or [("daemon default", "", True)],
            keep=self.model_combo.currentData() or welcome.get("default_model"),
        )
        self._model_changed()

    def _model_changed(self) -> None:
        welcome = self.connection.welcome or {}
        preset = self._preset()
        for unit in self.units:
            unit.set_choices(welcome.get("preprocessors") or [], list(preset.get("controlnets") or []))
        schedulers = [("model's own", "", True)] + [(s, s, True) for s in welcome.get("schedulers") or []]
        fill_combo(self.scheduler_combo, schedulers)

    def _preset(self) -> dict[str, Any]:
        welcome = self.connection.welcome or {}
        name = self.model_combo.currentData() or welcome.get("default_model")
        return next((p for p in welcome.get("models") or [] if p.get("name") == name), {})

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

    # -- reading the form ----------------------------------------------------------------------------
    def form_values(self) -> FormValues:
        seed = None
        if not self.random_seed_check.isChecked():
            seed = min(MAX_SEED, int(self.seed_edit.text() or 0))
        return FormValues(
            mode=self.current_mode().key,
            prompt=self.prompt_edit.toPlainText(),
            negative_prompt=self.negative_edit.text(),
            instruction=self.instruction_edit.text(),
            strength=float(self.strength_spin.value()),
            steps=int(self.steps_spin.value()),
            guidance=float(self.guidance_spin.value()),
            image_guidance=float(self.image_guidance_spin.value()),
            seed=seed,
            variations=int(self.variations_spin.value()),
            model=str(self.model_combo.currentData() or ""),
            resolution=int(self.resolution_spin.value()),
            padding=int(self.padding_spin.value()),
            feather=int(self.feather_spin.value()),
            scheduler=str(self.scheduler_combo.currentData() or ""),
            factor=int(self.factor_combo.currentData() or 4),
            source=str(self.source_combo.currentData() or "visible"),
            units=[unit.values() for unit in self.units],
        )

    def document(self) -> Any | None:
        canvas = self.canvas()
        view = canvas.view() if canvas is not None else None
        doc = view.document() if view is not None else None
        return doc if doc is not None else Krita.instance().activeDocument()

    def canvasChanged(self, canvas: Any) -> None:  # noqa: N802 (Krita's name)
        for unit in self.units:
            unit.layer_combo.refresh()
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
            self.random_seed_check.setChecked(False)
            self.seed_edit.setText(str(self.last_seed))

    def generate(self) -> None:
        """Read the region, submit the job; the rest happens in `_job_event`."""
        if self.job is not None and not self.job.finished:
            self._show("A job is already running: wait for it or press Cancel.", error=True)
            return
        if self.connection.state is not ConnState.CONNECTED:
            self._show(self.connection.describe(), error=True)
            return
        doc = self.document()
        form = self.form_values()
        problem = document_problem(doc) or validate(form)
        if problem:
            self._show(problem, error=True)
            return
        mode = MODES_BY_KEY[form.mode]
        resolution = int(self._preset().get("resolution") or 512)
        try:
            captured = capture(doc, form, resolution)
        except InputError as exc:
            self._show(str(exc), error=True)
            return
        context = JobContext(doc=doc, form=form, mode=mode, capture=captured, anchor=doc.activeNode())
        try:
            self.job = self.connection.submit(
                mode.op,
                build_params(form, size=captured.size),
                captured.images,
                model=form.model or None,
                preview=mode.op != "upscale",
                context=context,
            )
        except NotConnected as exc:
            self._show(str(exc), error=True)
            return
        self.progress_bar.setRange(0, 0)  # busy until the first progress event
        r = captured.region
        what = "region" if mode.op == "txt2img" else "sent"
        self._show(
            f"{mode.label}: {what} {r.width}x{r.height} px at ({r.x}, {r.y}); waiting for the daemon..."
        )
        self._update_buttons()

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
        self.status_label.setText(
            f'<span style="color:{color}">\u25cf</span> {_escape(self.connection.describe())}'
        )
        self.status_label.setToolTip(self.connection.describe())
        welcome = self.connection.welcome
        if state is ConnState.CONNECTED and welcome is not None and welcome is not self._welcome_seen:
            self._welcome_seen = welcome
            limits = (self.connection.welcome or {}).get("limits") or {}
            self.steps_spin.setMaximum(int(limits.get("max_steps") or 200))
            self.variations_spin.setMaximum(int(limits.get("max_variations") or 8))
            self._fill_models()
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
            self._show(f"{context.mode.label}: queued (position {job.position}).")
        elif kind == "progress":
            self.progress_bar.setRange(0, max(1, job.total))
            self.progress_bar.setValue(job.step)
            if job.state is JobState.RUNNING:
                self._show(f"{context.mode.label}: step {job.step}/{job.total}")
            if message.get("preview") and not job.cancel_requested:
                self._show_preview(context, message["preview"])
        elif kind == "result":
            self._finish_result(job)
        elif kind in ("cancelled", "error"):
            self._clean_up(context)
            if kind == "error":
                self._show(f"{context.mode.label} failed: {job.message}", error=True)
            elif context.closed:
                self._show(f"{context.mode.label} cancelled: its document was closed.")
            else:
                self._show(f"{context.mode.label} cancelled: nothing was added.")

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

    def _finish_result(self, job: Job) -> None:
        context: JobContext = job.context
        result = job.result or {}
        images = result.get("images") or []
        self.last_seed = int(result.get("seed", 0))
        self.last_seed_label.setText(f"last seed: {self.last_seed}")
        if context.doc is None:
            self._show("The result arrived after its document was closed; it was dropped.")
            return
        names = [layer_name(context.form, int(image.get("seed", self.last_seed))) for image in images]
        welcome = self.connection.welcome or {}
        extra = {
            "daemon": welcome.get("daemon"),
            "device": welcome.get("device"),
            "source": context.capture.source,
            "control_layers": context.capture.control_layers,
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
        self._show(
            f"{context.mode.label}: added {len(placed)} layer(s) in the '{context.target.group.name()}' "
            f"group (seed {seeds})."
        )

    def _history_entry(self, job: Job) -> dict[str, Any]:
        context: JobContext = job.context
        entry: dict[str, Any] = {
            "mode": context.mode.key,
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
            entry["images"] = [
                {k: image.get(k) for k in ("x", "y", "width", "height", "seed")}
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

    def _update_buttons(self) -> None:
        busy = self.job is not None and not self.job.finished
        connected = self.connection.state is ConnState.CONNECTED
        self.generate_button.setEnabled(connected and not busy)
        self.cancel_button.setEnabled(busy and not (self.job is not None and self.job.cancel_requested))

    def is_busy(self) -> bool:
        return self.job is not None and not self.job.finished


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


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
