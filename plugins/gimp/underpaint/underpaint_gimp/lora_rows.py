"""The dialog's LoRA rows: one weight per LoRA of the picked preset, kept in the `loras` argument.

Shown only when the picked preset lists LoRAs (and takes them for the mode). Each row is a slider
with a number field, -2 … 2 in steps of 0.1, 0 = off; moving one writes the `loras` text argument
(`name:weight` pairs), so GIMP's last-values mechanism keeps the weights with the other settings.
"""

from __future__ import annotations

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gtk", "3.0")
from gi.repository import Gimp, Gtk  # noqa: E402

from .loras import MAX_WEIGHT, MIN_WEIGHT, LoraError, format_loras, parse_loras  # noqa: E402

ROW_TOOLTIP = (
    "Weight of the LoRA '{name}' of this preset: how strongly its style or subject is applied; "
    "0 = off (the preset's own weights), negative values push away from it"
)


class LoraRows:
    """A box of LoRA rows under the preset picker; `show` rebuilds it for a preset's LoRA names."""

    def __init__(self, config: Gimp.ProcedureConfig) -> None:
        self.config = config
        self.box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=2)
        self.box.set_no_show_all(True)
        self.names: tuple[str, ...] | None = None  # None: never shown (a recalled text is cleared too)
        self.weights: dict[str, Gtk.Adjustment] = {}
        self.takes_loras = any(spec.name == "loras" for spec in config.list_properties())

    def _stored(self) -> dict[str, float]:
        if not self.takes_loras:  # a procedure without LoRAs (Upscale): nothing stored, nothing shown
            return {}
        try:
            return parse_loras(str(self.config.get_property("loras") or ""))
        except LoraError:
            return {}

    def show(self, names: tuple[str, ...]) -> None:
        """Rows for `names` (none: hidden, and no LoRA is sent: another preset's would be refused)."""
        if names == self.names and (self.box.get_visible() or not names):
            return
        stored = self._stored()
        for child in self.box.get_children():
            self.box.remove(child)
        self.names, self.weights = names, {}
        if not names:
            shown = self.box.get_visible()
            self.box.hide()
            if stored:
                self.config.set_property("loras", "")
            window = self.box.get_toplevel()
            if shown and isinstance(window, Gtk.Window):  # give the rows' height back, not stretch fields
                window.resize(window.get_allocated_width(), 1)
            return
        title = Gtk.Label(label="LoRAs (weight, 0 = off)")
        title.set_xalign(0.0)
        title.set_tooltip_text("LoRAs the picked preset lists (the daemon's config names them)")
        self.box.pack_start(title, False, False, 0)
        for name in names:
            self.box.pack_start(self._row(name, stored.get(name, 0.0)), False, False, 0)
        self._write()
        for child in self.box.get_children():  # show_all stops at a box marked no_show_all
            child.show_all()
        self.box.show()

    def _row(self, name: str, weight: float) -> Gtk.Box:
        row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        tooltip = ROW_TOOLTIP.format(name=name)
        label = Gtk.Label(label=name)
        label.set_xalign(0.0)
        label.set_width_chars(10)
        label.set_tooltip_text(tooltip)
        adjustment = Gtk.Adjustment(
            value=weight, lower=MIN_WEIGHT, upper=MAX_WEIGHT, step_increment=0.1, page_increment=0.5
        )
        scale = Gtk.Scale(orientation=Gtk.Orientation.HORIZONTAL, adjustment=adjustment)
        scale.set_draw_value(False)
        scale.set_hexpand(True)
        scale.add_mark(0.0, Gtk.PositionType.BOTTOM, None)
        scale.set_tooltip_text(tooltip)
        spin = Gtk.SpinButton(adjustment=adjustment, climb_rate=0.1, digits=1)
        spin.set_tooltip_text(tooltip)
        spin.set_name(f"underpaint-lora-{name}")
        adjustment.connect("value-changed", lambda _adjustment: self._write())
        self.weights[name] = adjustment
        row.pack_start(label, False, False, 0)
        row.pack_start(scale, True, True, 0)
        row.pack_start(spin, False, False, 0)
        return row

    def _write(self) -> None:
        weights = {name: round(adj.get_value(), 1) for name, adj in self.weights.items()}
        text = format_loras(weights)
        if text != str(self.config.get_property("loras") or ""):
            self.config.set_property("loras", text)
