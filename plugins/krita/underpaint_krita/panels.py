"""The docker's mode-specific panels: Mix's items with their weights, Compare's base mode and models,
and the picked model's own options (parameters only its family takes, built from its op spec)."""

from __future__ import annotations

from typing import Any

from PyQt5.QtCore import pyqtSignal
from PyQt5.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .modes import COMPARABLE, FORM_PARAMS, MAX_MIX_ITEMS, MODES_BY_KEY, MixLayer
from .widgets import compact, fill_combo


def weight_spin(value: float, tip: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(0.0, 10.0)
    spin.setSingleStep(0.1)
    spin.setDecimals(2)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


class MixPanel(QGroupBox):
    """Mix's items: the layers selected in the Layers docker, then the prompt, each with a weight.

    The docker calls `sync` with the current layer selection; weights are kept per layer while the
    painter changes the selection."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Mix", parent)
        self.setToolTip(
            "Mix blends pictures and text through the model's image prior: each selected layer and "
            "the prompt count with their weight (0 = left out)."
        )
        self.layers: list[tuple[str, str]] = []
        self.weights: dict[str, float] = {}
        self.spins: dict[str, QDoubleSpinBox] = {}
        outer = QVBoxLayout(self)
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.info.setToolTip("Mix follows the selection of the Layers docker; hidden layers count too")
        outer.addWidget(self.info)
        self.rows = QWidget()
        self.grid = QGridLayout(self.rows)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setColumnStretch(0, 1)
        outer.addWidget(self.rows)
        self.prompt_spin = weight_spin(1.0, "weight of the prompt in the blend (used when it is not empty)")
        self._rebuild()

    def sync(self, layers: list[tuple[str, str]]) -> None:
        """Show these (uniqueId, name) layers as items, if that changed."""
        if layers != self.layers:
            self._keep_weights()
            self.layers = list(layers)
            self._rebuild()

    def _keep_weights(self) -> None:
        for unique_id, spin in self.spins.items():
            self.weights[unique_id] = float(spin.value())

    def _rebuild(self) -> None:
        while self.grid.count():
            item = self.grid.takeAt(0)
            widget = item.widget()
            if widget is not None and widget is not self.prompt_spin:
                widget.deleteLater()
        self.spins = {}
        for row, (unique_id, name) in enumerate(self.layers):
            label = QLabel(name)
            label.setToolTip(f"the layer {name!r}: its content is one picture of the blend")
            label.setMinimumWidth(20)
            spin = weight_spin(self.weights.get(unique_id, 1.0), f"weight of {name!r} in the blend")
            self.spins[unique_id] = spin
            self.grid.addWidget(label, row, 0)
            self.grid.addWidget(spin, row, 1)
        prompt_label = QLabel("Prompt")
        prompt_label.setToolTip("the prompt above is blended in as text")
        self.grid.addWidget(prompt_label, len(self.layers), 0)
        self.grid.addWidget(self.prompt_spin, len(self.layers), 1)
        count = len(self.layers)
        self.info.setText(
            f"{count} layer(s) selected. Select up to {MAX_MIX_ITEMS - 1} layers in the Layers docker "
            "(Ctrl+click) to blend them with the prompt."
            if count < 2
            else f"Blending {count} selected layers and the prompt."
        )

    def values(self) -> tuple[list[MixLayer], float]:
        self._keep_weights()
        layers = [MixLayer(uid, name, self.weights.get(uid, 1.0)) for uid, name in self.layers]
        return layers, float(self.prompt_spin.value())


class ComparePanel(QGroupBox):
    """Compare: which mode to run, and the models (presets) to run it on."""

    changed = pyqtSignal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Compare", parent)
        self.setToolTip("one job runs the same mode, prompt and seed on every ticked model")
        self.base_combo = compact(QComboBox())
        for key in COMPARABLE:
            self.base_combo.addItem(MODES_BY_KEY[key].label, key)
        self.base_combo.setToolTip("the mode every ticked model runs (with the fields below)")
        self.base_combo.currentIndexChanged.connect(lambda *_: self.changed.emit())
        self.boxes: dict[str, QCheckBox] = {}
        self.ticked: set[str] = set()
        self.box_area = QWidget()
        self.box_layout = QVBoxLayout(self.box_area)
        self.box_layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout(self)
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)
        run_label = QLabel("Run")
        run_label.setToolTip(self.base_combo.toolTip())
        form.addRow(run_label, self.base_combo)
        form.addRow(self.box_area)

    def base_mode(self) -> str:
        return str(self.base_combo.currentData() or "generate")

    def set_models(self, models: list[tuple[str, str | None, str]], default: str) -> None:
        """(name, why it cannot run the base mode or None, help text) per preset; the painter's ticks
        are kept (a preset that cannot run the base mode is greyed out and left out)."""
        self._keep_ticks()
        if not self.ticked and default:
            self.ticked = {default}
        if [name for name, _, _ in models] != list(self.boxes):
            for box in self.boxes.values():
                box.deleteLater()
            self.boxes = {}
            for name, _, _ in models:
                box = QCheckBox(name)
                box.setMinimumWidth(20)  # a long preset name is cut, it does not widen the docker
                box.toggled.connect(self._toggled)
                self.box_layout.addWidget(box)
                self.boxes[name] = box
        for name, problem, help_text in models:
            box = self.boxes[name]
            box.blockSignals(True)
            box.setEnabled(problem is None)
            box.setChecked(name in self.ticked and problem is None)
            box.setToolTip(problem or help_text)
            box.blockSignals(False)

    def _toggled(self, *_: Any) -> None:
        self._keep_ticks()
        self.changed.emit()

    def _keep_ticks(self) -> None:
        for name, box in self.boxes.items():
            if box.isEnabled():
                self.ticked.discard(name)
                if box.isChecked():
                    self.ticked.add(name)

    def tick(self, names: list[str]) -> None:
        """Tick exactly these presets (those that can run the base mode)."""
        for box in self.boxes.values():
            box.blockSignals(True)
        for name, box in self.boxes.items():
            box.setChecked(name in names and box.isEnabled())
        for box in self.boxes.values():
            box.blockSignals(False)
        self._keep_ticks()
        self.changed.emit()

    def models(self) -> list[str]:
        return [name for name, box in self.boxes.items() if box.isEnabled() and box.isChecked()]


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


class ExtraParams(QGroupBox):
    """The picked model's own options: parameters of its op spec that the form has no field for
    (e.g. SDXL's `refine`), one widget each, sent only when set away from the model's default."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Model options", parent)
        self.setToolTip("options only this model's family takes (from the daemon's description of it)")
        self.layout_ = QFormLayout(self)
        self.layout_.setRowWrapPolicy(QFormLayout.WrapLongRows)
        self.specs: dict[str, dict[str, Any]] = {}
        self.widgets: dict[str, QWidget] = {}
        self.setVisible(False)

    def set_spec(self, params: dict[str, Any]) -> None:
        """Show a widget for each parameter of `params` the form does not cover (kept if unchanged)."""
        extra = {
            name: spec
            for name, spec in params.items()
            if name not in FORM_PARAMS and spec.get("type") in ("int", "float", "str", "bool")
        }
        if extra == self.specs:
            return
        old = self.values()
        while self.layout_.rowCount():
            self.layout_.removeRow(0)
        self.specs, self.widgets = extra, {}
        for name, spec in extra.items():
            widget = _param_widget(spec)
            tip = _param_tip(name, spec)
            widget.setToolTip(tip)
            label = QLabel(_label(name))
            label.setToolTip(tip)
            label.setWordWrap(True)
            self.layout_.addRow(label, widget)
            self.widgets[name] = widget
            if name in old:
                _set_value(widget, spec, old[name])
        self.setVisible(bool(extra))

    def apply(self, values: dict[str, Any]) -> None:
        """Set the options shown now from `values` (options of other models are left alone)."""
        for name, value in values.items():
            if name in self.widgets:
                _set_value(self.widgets[name], self.specs[name], value)

    def values(self) -> dict[str, Any]:
        """Parameters set away from their default."""
        out = {}
        for name, widget in self.widgets.items():
            spec = self.specs[name]
            value = _get_value(widget, spec)
            if value != spec.get("default"):
                out[name] = value
        return out


def _param_tip(name: str, spec: dict[str, Any]) -> str:
    parts = [f"{name}: {spec.get('doc') or ''}".rstrip(": ")]
    if spec.get("min") is not None or spec.get("max") is not None:
        parts.append(f"range {spec.get('min', '…')} … {spec.get('max', '…')}")
    default = spec.get("default")
    parts.append("default: the model's own" if default is None else f"default {default}")
    return "; ".join(parts)


def _param_widget(spec: dict[str, Any]) -> QWidget:
    kind, default, choices = spec.get("type"), spec.get("default"), spec.get("choices")
    if choices:
        combo = compact(QComboBox())
        fill_combo(combo, [(str(c) if c != "" else "(default)", c, True) for c in choices], keep=default)
        return combo
    if kind == "bool":
        box = QCheckBox()
        box.setChecked(bool(default))
        return box
    if kind in ("int", "float"):
        low = spec.get("min") if spec.get("min") is not None else -1_000_000
        high = spec.get("max") if spec.get("max") is not None else 1_000_000
        spin: QSpinBox | QDoubleSpinBox
        if kind == "int":
            spin, step = QSpinBox(), 1
        else:
            spin, step = QDoubleSpinBox(), max(0.01, round((high - low) / 20, 2)) if high - low < 1e5 else 0.1
            spin.setDecimals(2)
        if default is None:  # nullable: one step below the range means "the model's own"
            low -= step
            spin.setSpecialValueText("default")
        spin.setRange(low, high)
        spin.setSingleStep(step)
        spin.setValue(low if default is None else default)
        return spin
    edit = QLineEdit("" if default is None else str(default))
    return edit


def _get_value(widget: QWidget, spec: dict[str, Any]) -> Any:
    if isinstance(widget, QComboBox):
        return widget.currentData()
    if isinstance(widget, QCheckBox):
        return widget.isChecked()
    if isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        if spec.get("default") is None and widget.value() == widget.minimum():
            return None
        return int(widget.value()) if isinstance(widget, QSpinBox) else float(widget.value())
    assert isinstance(widget, QLineEdit)
    text = widget.text()
    return None if text == "" and spec.get("default") is None else text


def _set_value(widget: QWidget, spec: dict[str, Any], value: Any) -> None:
    if isinstance(widget, QComboBox):
        index = widget.findData(value)
        if index >= 0:
            widget.setCurrentIndex(index)
    elif isinstance(widget, QCheckBox):
        widget.setChecked(bool(value))
    elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        widget.setValue(widget.minimum() if value is None else value)
    elif isinstance(widget, QLineEdit):
        widget.setText("" if value is None else str(value))
