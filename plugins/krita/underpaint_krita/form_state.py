"""Putting values back into the docker's form: the painter's settings after a Krita restart, and a
history entry's parameters when it is clicked. (Reading the form is `Form.values()`.)

Settings are one JSON value in Krita's settings (kritarc, group "underpaint", key "form"): every form
field and the mode; the model keeps its own key. Fields that name layers (ControlNet unit layers, the
depth layer, Mix's layers) belong to one document and are not kept. Before the daemon's welcome the
model's samplers, options, ControlNets and the compared models are unknown: those wait in `pending`
and are put back once the daemon has said what it serves.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .modes import FormValues, form_values

if TYPE_CHECKING:
    from .form import Form

STATE_VERSION = 1
SPINS = (
    "strength",
    "steps",
    "guidance",
    "image_guidance",
    "variations",
    "resolution",
    "padding",
    "feather",
    "live_delay",
)


@dataclass
class Pending:
    """Saved values the form could not take yet (no welcome), and the spin values right after the
    restore (a spin the painter has not touched since gets its saved value once its range is known)."""

    values: FormValues
    spins_after: dict[str, float] = field(default_factory=dict)


def _spin(form: Form, name: str) -> Any:
    return getattr(form, f"{name}_spin")


def state_of(form: Form) -> dict[str, Any]:
    """The form as saved settings (JSON-able)."""
    values = asdict(form.values())
    for key in ("model", "mix_layers", "depth_layer_id", "depth_layer_name"):
        values.pop(key, None)
    for unit in values["units"]:
        unit.pop("layer_id", None)
        unit.pop("layer_name", None)
    values["compare_models"] = sorted(form.compare_panel.ticked)
    pending = form.pending
    if pending is not None:  # not known yet: keep what was saved
        saved = asdict(pending.values)
        values["scheduler"], values["extras"] = saved["scheduler"], saved["extras"]
        values["loras"] = saved["loras"]
        values["compare_models"] = saved["compare_models"]
        for unit, old in zip(values["units"], saved["units"], strict=False):
            unit["preprocessor"], unit["model"] = old["preprocessor"], old["model"]
    return {
        "version": STATE_VERSION,
        "form": values,
        "seed_text": form.seed_edit.text(),
        "defaults": dict(form._defaults),
        "open": {"advanced": form.advanced.is_open(), "history": form.history_section.is_open()},
    }


def encode(state: dict[str, Any]) -> str:
    return json.dumps(state, sort_keys=True, default=str)


def decode(text: str) -> dict[str, Any] | None:
    """The saved state, or None when there is none or it cannot be read (then the form keeps its
    defaults)."""
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("form"), dict):
        return None
    return data


def restore(form: Form, state: dict[str, Any]) -> None:
    """Put saved settings back at start (before any welcome)."""
    values = form_values(state["form"])
    opened = state.get("open") or {}
    form.advanced.set_open(bool(opened.get("advanced", False)))
    form.history_section.set_open(bool(opened.get("history", True)))
    apply_values(form, values, seed_text=str(state.get("seed_text") or ""))
    defaults = state.get("defaults")
    if isinstance(defaults, dict):
        form._defaults.update({k: float(v) for k, v in defaults.items() if isinstance(v, (int, float))})
    form.pending = Pending(values, {name: _spin(form, name).value() for name in SPINS})


def apply_pending(form: Form) -> None:
    """After the first welcome: what had to wait for the daemon's presets."""
    pending, form.pending = form.pending, None
    if pending is None:
        return
    values = pending.values
    for name in SPINS:  # ranges are the preset's now: a value clamped before the welcome fits
        spin = _spin(form, name)
        if spin.value() == pending.spins_after.get(name):
            spin.setValue(getattr(values, name))
    _apply_late(form, values)


def apply_values(form: Form, values: FormValues, *, seed_text: str = "") -> list[str]:
    """Set every field from `values` (model first, then mode, then the fields whose range the mode
    decides); returns what could not be put back, for the painter."""
    missing: list[str] = []
    if values.model and form.welcome is not None:
        if form.model_combo.findData(values.model) < 0:
            missing.append(f"the model {values.model} (this daemon does not serve it)")
        elif form.model_name() != values.model:
            form.model_combo.setCurrentIndex(form.model_combo.findData(values.model))
            form._model_picked()
    _set_data(form.compare_panel.base_combo, values.compare_mode)
    if values.compare_models:
        form.compare_panel.ticked = set(values.compare_models)
    index = form.mode_combo.findData(values.mode)
    if index >= 0 and values.mode in form.offered_modes():
        form.mode_combo.setCurrentIndex(index)
    else:
        missing.append(f"the mode {values.mode} (not offered for this model)")
    form.prompt_edit.setPlainText(values.prompt)
    form.negative_edit.setText(values.negative_prompt)
    form.instruction_edit.setText(values.instruction)
    for name in SPINS:
        _spin(form, name).setValue(getattr(values, name))
    form.rank_check.setChecked(values.rank)
    form.random_seed_check.setChecked(values.seed is None)
    form.seed_edit.setText(str(values.seed) if values.seed is not None else (seed_text or "0"))
    _set_data(form.factor_combo, values.factor)
    _set_data(form.speed_combo, values.speed)
    _set_data(form.source_combo, values.source)
    for widget, unit in zip(form.units, values.units, strict=False):
        widget.setChecked(unit.enabled)
        widget.weight_spin.setValue(unit.weight)
        widget.invert_check.setChecked(unit.invert)
        if unit.layer_id and not widget.layer_combo.select_layer(unit.layer_id):
            missing.append(f"the layer {unit.layer_name!r} of a ControlNet unit")
    if values.depth_layer_id and not form.depth_combo.select_layer(values.depth_layer_id):
        missing.append(f"the depth layer {values.depth_layer_name!r}")
    form.mix_panel.prompt_spin.setValue(values.prompt_weight)
    form.mix_panel.weights.update({m.layer_id: m.weight for m in values.mix_layers})
    if form.welcome is not None:
        _apply_late(form, values)
        shown = form.lora_panel.names if form.lora_panel.isVisibleTo(form.body) else []
        missing += [
            f"the LoRA {x['name']} (not offered here)" for x in values.loras if x["name"] not in shown
        ]
    return missing


def _apply_late(form: Form, values: FormValues) -> None:
    """The fields whose choices come from the daemon: sampler, model options, compared models,
    ControlNet preprocessors and models."""
    _set_data(form.scheduler_combo, values.scheduler)
    form.extras.apply(values.extras)
    form.lora_panel.apply(values.loras)
    if values.compare_models and form.mode().key == "compare":
        form.compare_panel.tick(values.compare_models)
    for widget, unit in zip(form.units, values.units, strict=False):
        _set_data(widget.preprocessor_combo, unit.preprocessor)
        _set_data(widget.model_combo, unit.model)


def _set_data(combo: Any, data: Any) -> bool:
    index = combo.findData(data)
    if index >= 0:
        combo.setCurrentIndex(index)
    return index >= 0
