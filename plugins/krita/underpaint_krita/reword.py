"""Reword (issue 11) in the docker: a folding "Reword" section that follows the active layer. When it
is an Underpaint result made by Generate, its stored prompt is shown for editing, with the edit kind
and word weights; "Reword" sends the `reword` op (the same preset, params and seed, the edited
prompt: Prompt-to-Prompt keeps the composition) and the new layer goes right above its source, in
the source's group, through the selection's shape the source had (its alpha). The source layer is
never touched. A section of the docker rather than a dialog: it fits the docker's size and never
hides the canvas.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PyQt5.QtCore import Qt
from PyQt5.QtWidgets import QComboBox, QLabel, QLineEdit, QPlainTextEdit, QPushButton, QVBoxLayout

from . import presets
from .document import Capture
from .layers import Target, alive
from .modes import form_values
from .placing import JobContext
from .progress import Progress, expected
from .protocol.regions import Rect
from .resume import document_path
from .reword_text import EDIT_KINDS, parse_weights, reword_params, reword_problem
from .widgets import ElidedLabel, Section

ANNOTATION = "underpaint"


@dataclass
class RewordTarget(Target):
    """Results go right above the source layer in its group (not on top of the group)."""

    source: Any = None

    def top(self) -> Any | None:
        for node in reversed(self.added):
            if alive(node):
                return node
        return self.source if alive(self.source) else super().top()


def record_of(doc: Any, node: Any) -> dict[str, Any] | None:
    """The stored record of a result layer (records.py), or None."""
    if doc is None or node is None or ANNOTATION not in doc.annotationTypes():
        return None
    try:
        data = json.loads(bytes(doc.annotation(ANNOTATION)).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    record = (data.get("layers") or {}).get(node.uniqueId().toString()) if isinstance(data, dict) else None
    return record if isinstance(record, dict) else None


class RewordPanel:
    """The section's widgets, the layer it edits, and the job it builds."""

    def __init__(self, on_reword: Callable[[], None]) -> None:
        self.section = Section(
            "Reword",
            "edit the prompt of the Underpaint result picked in the Layers docker: the same picture "
            "again with other words, keeping its composition (Prompt-to-Prompt)",
        )
        layout = QVBoxLayout(self.section.content)
        layout.setContentsMargins(8, 2, 0, 2)
        self.source_label = ElidedLabel()
        self.source_label.setObjectName("underpaint_reword_source")
        layout.addWidget(self.source_label)
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setObjectName("underpaint_reword_prompt")
        self.prompt_edit.setToolTip(
            "the layer's prompt as it was made: change words (replace), add or remove some (refine); "
            "the seed and every setting stay"
        )
        self.prompt_edit.setFixedHeight(self.prompt_edit.fontMetrics().lineSpacing() * 3 + 10)
        layout.addWidget(self.prompt_edit)
        self.edit_combo = QComboBox()
        for kind, tip in EDIT_KINDS:
            self.edit_combo.addItem(kind.capitalize(), kind)
            self.edit_combo.setItemData(self.edit_combo.count() - 1, tip, Qt.ToolTipRole)
        kinds = "; ".join(f"{kind}: {tip}" for kind, tip in EDIT_KINDS)
        self.edit_combo.setToolTip(f"how the new prompt differs: {kinds}")
        self.weights_edit = QLineEdit()
        self.weights_edit.setPlaceholderText("word weights, e.g. snow: 2")
        self.weights_edit.setToolTip(
            "stress or soften words of the new prompt in the picture: word: weight, comma-separated "
            "(1 unchanged, 0 … 10), e.g. snow: 2, fox: 0.5"
        )
        self.weights_edit.setMinimumWidth(40)
        layout.addWidget(self.edit_combo)
        layout.addWidget(self.weights_edit)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #c62828")
        self.error_label.setVisible(False)
        layout.addWidget(self.error_label)
        self.button = QPushButton("Reword")
        self.button.setObjectName("underpaint_reword_button")
        self.button.clicked.connect(on_reword)
        layout.addWidget(self.button)
        self.weights_edit.textChanged.connect(lambda _: self.error_label.setVisible(False))
        self.node: Any = None
        self.record: dict[str, Any] | None = None
        self.problem: str | None = None

    def follow(self, doc: Any, welcome: dict[str, Any] | None, busy_reason: str | None) -> None:
        """The active layer changed or the docker's state did: load its record, say why it is off."""
        node = doc.activeNode() if doc is not None else None
        if node is None or self.node is None or not node == self.node:
            self.node = node
            self.record = record_of(doc, node)
            prompt = str(((self.record or {}).get("params") or {}).get("prompt") or "")
            self.prompt_edit.setPlainText(prompt)
            self.weights_edit.clear()
            self.edit_combo.setCurrentIndex(0)
            self.error_label.setVisible(False)
            name = node.name() if node is not None else "no layer"
            self.source_label.set_full_text(f"Layer: {name}")
        preset = presets.find(welcome, (self.record or {}).get("preset")) if welcome is not None else None
        self.problem = reword_problem(self.record, preset) or busy_reason
        self.button.setEnabled(self.problem is None)
        self.button.setToolTip(
            "run the layer's job again with the edited prompt; the new layer goes right above it"
            if self.problem is None
            else f"Off: {self.problem}"
        )
        self.prompt_edit.setEnabled(self.record is not None)

    def build(self, doc: Any, welcome: dict[str, Any] | None) -> tuple[dict[str, Any], JobContext] | None:
        """The `reword` params and the job's context, or None (the error is shown in the section)."""
        record, node = self.record, self.node
        assert record is not None and node is not None
        try:
            weights = parse_weights(self.weights_edit.text())
        except ValueError as exc:
            self.error_label.setText(f"Word weights: {exc}")
            self.error_label.setVisible(True)
            return None
        new_prompt = " ".join(self.prompt_edit.toPlainText().split())
        preset = presets.find(welcome, record.get("preset"))
        spec = presets.op_spec(welcome, preset, "reword")
        params = reword_params(record, new_prompt, str(self.edit_combo.currentData()), weights, spec)
        form = form_values(record.get("form") or {})
        form.prompt, form.model = new_prompt, str(record.get("preset") or form.model)
        x, y, width, height = (int(v) for v in record.get("region") or [0, 0, 0, 0])
        region = Rect(x, y, width, height)
        alpha = bytes(node.pixelData(x, y, width, height))[3::4]  # the source's selection shape
        size = (int(params.get("width") or width), int(params.get("height") or height))
        capture = Capture(region=region, mask=alpha, size=size, source="", source_layers=[])
        parent = node.parentNode()
        target = RewordTarget(doc, parent, False, node, source=node)
        context = JobContext(
            doc=doc,
            form=form,
            mode=form.run_mode(),
            label="Reword",
            capture=capture,
            anchor=node,
            progress=Progress(expected(params)),
            target=target,
            path=document_path(doc),
            anchor_id=node.uniqueId().toString(),
            reword_of=node.uniqueId().toString(),
        )
        return params, context
