"""The LoRA rows of the form: one per LoRA the picked preset lists (its `loras` in the daemon's
welcome), a tick and a weight each. Weights are remembered by name, so switching presets and back, or
a LoRA the daemon lists again after a reconnect, keeps what the painter set."""

from __future__ import annotations

from typing import Any

from PyQt5.QtWidgets import QCheckBox, QDoubleSpinBox, QGridLayout, QGroupBox, QWidget

WEIGHT_RANGE = (-2.0, 2.0)  # PROTOCOL.md, params.loras[].weight


class LoraPanel(QGroupBox):
    """`values()` is what `params.loras` gets: the ticked LoRAs with their weights."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("LoRAs", parent)
        self.setObjectName("underpaint_loras")
        self.setToolTip(
            "styles and few-step adapters the picked model lists: tick one to use it, at its weight "
            "(1 full, 0 none, negative pushes away from it)"
        )
        self.grid = QGridLayout(self)
        self.grid.setColumnStretch(0, 1)
        self.names: list[str] = []
        self.sources: dict[str, str] = {}
        self.checks: dict[str, QCheckBox] = {}
        self.spins: dict[str, QDoubleSpinBox] = {}
        self.kept: dict[str, tuple[bool, float]] = {}  # name -> (ticked, weight), over rebuilds

    def set_loras(self, loras: list[dict[str, Any]]) -> None:
        """One row per `{name, source}`; unchanged lists keep their widgets."""
        names = [str(item.get("name")) for item in loras if isinstance(item, dict) and item.get("name")]
        sources = {str(item["name"]): str(item.get("source") or "") for item in loras if item.get("name")}
        if names == self.names and sources == self.sources:
            return
        self._keep()
        while self.grid.count():
            item = self.grid.takeAt(0)
            widget = item.widget()
            if widget is not None:
                widget.deleteLater()
        self.names, self.sources, self.checks, self.spins = names, sources, {}, {}
        for row, name in enumerate(names):
            ticked, weight = self.kept.get(name, (False, 1.0))
            check = QCheckBox(name)
            check.setObjectName(f"underpaint_lora_{name}")
            check.setChecked(ticked)
            check.setMinimumWidth(20)  # a long name is cut, the docker is not widened
            check.setToolTip(f"use the LoRA {name} ({sources[name] or 'no source given'})")
            spin = QDoubleSpinBox()
            spin.setRange(*WEIGHT_RANGE)
            spin.setSingleStep(0.1)
            spin.setDecimals(1)
            spin.setValue(weight)
            spin.setToolTip(f"weight of {name}: 1 as trained, 0 no effect, −2 … 2")
            self.grid.addWidget(check, row, 0)
            self.grid.addWidget(spin, row, 1)
            self.checks[name], self.spins[name] = check, spin

    def _keep(self) -> None:
        for name, check in self.checks.items():
            self.kept[name] = (check.isChecked(), float(self.spins[name].value()))

    def has_rows(self) -> bool:
        return bool(self.names)

    def values(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "weight": round(float(self.spins[name].value()), 2)}
            for name in self.names
            if self.checks[name].isChecked()
        ]

    def apply(self, loras: list[dict[str, Any]]) -> None:
        """Tick exactly these LoRAs at their weights; names this preset does not list are remembered
        for when it does."""
        wanted = {item["name"]: float(item["weight"]) for item in loras}
        for name in self.names:
            self.checks[name].setChecked(name in wanted)
            if name in wanted:
                self.spins[name].setValue(wanted[name])
        for name in list(self.kept):
            if name not in self.names:
                self.kept[name] = (name in wanted, wanted.get(name, self.kept[name][1]))
        for name, weight in wanted.items():
            if name not in self.names:
                self.kept[name] = (True, weight)
