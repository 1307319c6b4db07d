"""Small Qt widgets of the docker: a layer picker that refreshes itself, a ControlNet unit editor, a
section that folds away, and helpers that keep combo boxes narrow enough for a docker at Krita's
default width."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PyQt5.QtCore import Qt, pyqtSignal
from PyQt5.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .modes import UnitForm


def hbox(*widgets: QWidget) -> QWidget:
    """Widgets side by side as one field (the first one stretches)."""
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for i, widget in enumerate(widgets):
        layout.addWidget(widget, 1 if i == 0 else 0)
    return box


def compact(combo: QComboBox, chars: int = 6) -> QComboBox:
    """Let a combo shrink to a few characters: long item texts must not widen the docker."""
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    return combo


class LayerCombo(QComboBox):
    """Lists the document's layers (by uniqueId); re-reads them every time it opens."""

    def __init__(
        self,
        layers: Callable[[], list[tuple[str, str]]],
        parent: QWidget | None = None,
        placeholder: str = "(choose a layer)",
    ) -> None:
        super().__init__(parent)
        compact(self)
        self._layers = layers
        self._placeholder = placeholder
        self.refresh()

    def refresh(self) -> None:
        current = self.currentData()
        self.blockSignals(True)
        self.clear()
        self.addItem(self._placeholder, "")
        for unique_id, label in self._layers():
            self.addItem(label, unique_id)
        index = self.findData(current) if current else 0
        self.setCurrentIndex(max(0, index))
        self.blockSignals(False)

    def showPopup(self) -> None:  # noqa: N802 (Qt's name)
        self.refresh()
        super().showPopup()

    def select_layer(self, unique_id: str) -> bool:
        self.refresh()
        index = self.findData(unique_id)
        if index >= 0:
            self.setCurrentIndex(index)
        return index >= 0


def fill_combo(
    combo: QComboBox,
    items: list[tuple[str, Any, bool]],
    keep: Any = None,
    tips: list[str] | None = None,
) -> None:
    """Replace a combo's items (label, data, enabled; an optional tooltip each), keeping the current
    choice when it is still there and enabled, else taking the first enabled item."""
    current = keep if keep is not None else combo.currentData()
    combo.blockSignals(True)
    combo.clear()
    for i, (label, data, enabled) in enumerate(items):
        combo.addItem(label, data)
        if tips is not None and tips[i]:
            combo.setItemData(combo.count() - 1, tips[i], Qt.ToolTipRole)
        if not enabled:
            item = combo.model().item(combo.count() - 1)
            item.setFlags(item.flags() & ~Qt.ItemIsEnabled)
    index = combo.findData(current)
    if index < 0 or not items[index][2]:
        index = next((i for i, (_, _, enabled) in enumerate(items) if enabled), 0)
    combo.setCurrentIndex(index)
    combo.blockSignals(False)


class UnitWidget(QGroupBox):
    """One ControlNet unit: control layer, preprocessor, ControlNet model, weight."""

    def __init__(
        self, number: int, layers: Callable[[], list[tuple[str, str]]], parent: QWidget | None = None
    ):
        super().__init__(f"Unit {number}", parent)
        self.setCheckable(True)
        self.setChecked(number == 1)
        self.setToolTip("tick to use this unit; every ticked unit with a layer and a model guides the job")
        self.setObjectName(f"underpaint_unit{number}")
        self.layer_combo = LayerCombo(layers)
        self.layer_combo.setToolTip("the layer used as control image, e.g. a sketch layer (it may be hidden)")
        self.preprocessor_combo = compact(QComboBox())
        self.preprocessor_combo.setToolTip("'none' uses the layer as it is (a sketch or a ready control map)")
        self.model_combo = compact(QComboBox())
        self.model_combo.setToolTip("the ControlNet: which kind of control map it follows (the model's own)")
        self.weight_spin = QDoubleSpinBox()
        self.weight_spin.setToolTip("how strongly this unit steers the picture (conditioning scale)")
        self.weight_spin.setRange(0.0, 2.0)
        self.weight_spin.setSingleStep(0.05)
        self.weight_spin.setValue(1.0)
        self.invert_check = QCheckBox("Invert (dark lines on paper)")
        self.invert_check.setToolTip("scribble/lineart ControlNets expect white lines on black")
        grid = QGridLayout(self)
        for row, (label, widget) in enumerate(
            [
                ("Layer", self.layer_combo),
                ("Preprocessor", self.preprocessor_combo),
                ("Model", self.model_combo),
                ("Weight", self.weight_spin),
            ]
        ):
            grid.addWidget(QLabel(label), row, 0)
            grid.addWidget(widget, row, 1)
        grid.addWidget(self.invert_check, 4, 0, 1, 2)

    def set_choices(self, preprocessors: list[dict[str, Any]], controlnets: list[str]) -> None:
        fill_combo(
            self.preprocessor_combo,
            [
                (
                    p["name"] if p.get("available", True) else f"{p['name']} (weights missing)",
                    p["name"],
                    bool(p.get("available", True)),
                )
                for p in preprocessors
            ]
            or [("none", "none", True)],
        )
        fill_combo(self.model_combo, [(name, name, True) for name in controlnets])

    def values(self) -> UnitForm:
        return UnitForm(
            enabled=self.isChecked(),
            layer_id=str(self.layer_combo.currentData() or ""),
            layer_name=self.layer_combo.currentText(),
            preprocessor=str(self.preprocessor_combo.currentData() or "none"),
            model=str(self.model_combo.currentData() or ""),
            weight=float(self.weight_spin.value()),
            invert=self.invert_check.isChecked(),
        )


class ElidedLabel(QLabel):
    """One line that never widens the docker: the text is cut with '…' and shown whole as tooltip."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._full = ""
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.setTextInteractionFlags(Qt.TextSelectableByMouse)

    def set_full_text(self, text: str) -> None:
        self._full = text
        self.setToolTip(text)
        self._elide()

    def full_text(self) -> str:
        return self._full

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        self.setText(self.fontMetrics().elidedText(self._full, Qt.ElideRight, max(10, self.width())))


class Section(QWidget):
    """A titled part of the form that folds away behind its title button (closed: one line high)."""

    toggled = pyqtSignal(bool)

    def __init__(self, title: str, tip: str, opened: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.button = QToolButton()
        self.button.setCheckable(True)
        self.button.setAutoRaise(True)
        self.button.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.button.setToolTip(tip)
        self.button.setObjectName(f"underpaint_section_{title.lower()}")
        self.button.toggled.connect(self._toggled)
        self.content = QWidget()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.button)
        layout.addWidget(self.content)
        self.button.setChecked(opened)
        self._toggled(opened)

    def is_open(self) -> bool:
        return self.button.isChecked()

    def set_open(self, opened: bool) -> None:
        self.button.setChecked(opened)

    def set_title(self, title: str) -> None:
        self.title = title
        self.button.setText(title)

    def _toggled(self, opened: bool) -> None:
        self.button.setArrowType(Qt.DownArrow if opened else Qt.RightArrow)
        self.button.setText(self.title)
        self.content.setVisible(opened)
        self.toggled.emit(opened)
