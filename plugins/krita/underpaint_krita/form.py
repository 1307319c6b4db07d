"""The docker's form: model picker, mode, prompt and every parameter field, shown or hidden by what
the picked model (preset) can do, and read back as `FormValues`.

Layout for a narrow docker: `top` (model, mode, prompt) never scrolls, `body` (everything else) does,
and no row is wider than the docker Krita gives by default (combos shrink, long texts wrap or are cut).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PyQt5.QtCore import QRegularExpression, Qt
from PyQt5.QtGui import QRegularExpressionValidator
from PyQt5.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import form_state, presets
from .loras_panel import LoraPanel
from .modes import (
    CONTROL,
    DEPTH,
    FACTOR,
    FEATHER,
    GUIDANCE,
    IMAGE_GUIDANCE,
    INSTRUCTION,
    LORAS,
    MIX,
    MODES,
    MODES_BY_KEY,
    NEGATIVE,
    PADDING,
    PROMPT,
    RANK,
    RESOLUTION,
    SCHEDULER,
    SEED,
    SOURCE,
    SPEEDS,
    STEPS,
    STRENGTH,
    VARIATIONS,
    FormValues,
    Mode,
    visible_fields,
)
from .panels import ComparePanel, ExtraParams, MixPanel
from .prompt_keys import WEIGHT_HELP, TextError, WeightKeys
from .widgets import LayerCombo, Section, UnitWidget, compact, fill_combo, hbox

MAX_SEED = 2**32 - 1
Layers = Callable[[], list[tuple[str, str]]]


def _double(low: float, high: float, step: float, value: float, tip: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


def _int(low: int, high: int, value: int, tip: str, step: int = 1) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


class Rows(QGridLayout):
    """Label + field rows. Unlike Qt 5's QFormLayout, a hidden row leaves no gap behind."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setColumnStretch(1, 1)

    def add(self, label: QLabel | None, widget: QWidget) -> None:
        row = self.rowCount()
        if label is None:
            self.addWidget(widget, row, 0, 1, 2)
        else:
            self.addWidget(label, row, 0)
            self.addWidget(widget, row, 1)


class Form:
    """The form's widgets; `top` and `body` are the two parts the docker lays out."""

    def __init__(
        self, layers: Layers, saved_model: Callable[[], str], save_model: Callable[[str], None]
    ) -> None:
        self.welcome: dict[str, Any] | None = None
        self._saved_model, self._save_model = saved_model, save_model
        self._rows: dict[str, list[QWidget]] = {}
        self._defaults: dict[str, float] = {}  # the default each spin box was last given
        self.pending: form_state.Pending | None = None  # saved settings waiting for the welcome
        self.top = QWidget()
        self.body = QWidget()
        self._build_top()
        self._build_body(layers)
        self.weight_keys.watch(self.prompt_edit, self.negative_edit, self.instruction_edit)
        self.refresh()

    # -- building ------------------------------------------------------------------------------------
    def _build_top(self) -> None:
        top = QVBoxLayout(self.top)
        top.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.model_combo = compact(QComboBox(), 5)
        self.model_combo.setObjectName("underpaint_model")
        self.model_combo.activated.connect(self._model_picked)
        self.mode_combo = compact(QComboBox(), 5)
        self.mode_combo.setObjectName("underpaint_mode")
        for mode in MODES:
            self.mode_combo.addItem(mode.label, mode.key)
        self.mode_combo.setToolTip("what to do (modes the picked model cannot run are greyed out)")
        self.mode_combo.currentIndexChanged.connect(lambda *_: self._mode_changed())
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.mode_combo, 1)
        top.addLayout(row)
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setObjectName("underpaint_prompt")
        self.prompt_edit.setPlaceholderText("prompt: what to paint, e.g. a red fox in the snow")
        self.prompt_edit.setToolTip(
            "the prompt: what to paint (Mix: one of the blended items). " + WEIGHT_HELP
        )
        self.prompt_edit.setFixedHeight(self.prompt_edit.fontMetrics().lineSpacing() * 2 + 14)
        self.instruction_edit = QLineEdit()
        self.instruction_edit.setPlaceholderText("instruction, e.g. make it winter")
        self.instruction_edit.setToolTip("the edit to make, said as an instruction (InstructPix2Pix)")
        self.text_error = TextError()
        top.addWidget(self.prompt_edit)
        top.addWidget(self.instruction_edit)
        top.addWidget(self.text_error)
        self._rows[PROMPT] = [self.prompt_edit]
        self._rows[INSTRUCTION] = [self.instruction_edit]
        self.weight_keys = WeightKeys(self.top)

    def _build_body(self, layers: Layers) -> None:
        """What most jobs need stays open; the rest is under Advanced, folded away by default."""
        layout = QVBoxLayout(self.body)
        self.compare_panel = ComparePanel()
        self.compare_panel.changed.connect(self._mode_changed)
        layout.addWidget(self.compare_panel)
        self.mix_panel = MixPanel()
        self._rows[MIX] = [self.mix_panel]
        layout.addWidget(self.mix_panel)

        form = Rows()
        self.negative_edit = QLineEdit()
        self.negative_edit.setPlaceholderText("what to avoid")
        self.negative_edit.setToolTip("negative prompt: what the picture should not have. " + WEIGHT_HELP)
        self._add_row(form, NEGATIVE, "Negative", self.negative_edit)
        self.strength_spin = _double(
            0.01, 1.0, 0.05, 1.0, "how much is re-painted: low keeps the picture, 1 replaces it"
        )
        self._add_row(form, STRENGTH, "Strength", self.strength_spin)
        self.image_guidance_spin = _double(
            0.0, 10.0, 0.1, 1.5, "how faithful the edit stays to the picture (image guidance)"
        )
        self._add_row(form, IMAGE_GUIDANCE, "Image guid.", self.image_guidance_spin)
        self.depth_combo = LayerCombo(layers, placeholder="(estimated)")
        self.depth_combo.setToolTip(
            "a depth layer (gray, white = near) to keep; '(estimated)' lets the model estimate depth"
        )
        self._add_row(form, DEPTH, "Depth", self.depth_combo)
        self.factor_combo = compact(QComboBox())
        self.factor_combo.addItem("x4 (diffusion upscaler)", 4)
        self.factor_combo.addItem("x2 (latent upscaler)", 2)
        self.factor_combo.setToolTip("how much larger the new document is")
        self._add_row(form, FACTOR, "Factor", self.factor_combo)
        self._build_seed(form)
        self.variations_spin = _int(1, 8, 1, "how many pictures: one layer each (the first visible)")
        self._add_row(form, VARIATIONS, "Variations", self.variations_spin)
        self.rank_check = QCheckBox("Rank by CLIP")
        self.rank_check.setObjectName("underpaint_rank")
        self.rank_check.setToolTip(
            "score each picture by how well it matches the prompt (CLIP) and show the best one: "
            "its layer is the visible one, each layer's name and stored settings keep its score"
        )
        self.rank_check.setMinimumWidth(20)  # a narrow docker cuts the text, it is not widened
        form.add(None, self.rank_check)
        self._rows[RANK] = [self.rank_check]
        self.variations_spin.valueChanged.connect(lambda *_: self._show_rank())
        layout.addLayout(form)

        self.extras = ExtraParams()
        layout.addWidget(self.extras)
        self.lora_panel = LoraPanel()
        self._rows[LORAS] = [self.lora_panel]
        layout.addWidget(self.lora_panel)

        self.units_box = QGroupBox("ControlNet units")
        self.units_box.setToolTip("layers that guide the picture, each through one ControlNet")
        units_layout = QVBoxLayout(self.units_box)
        self.units = [UnitWidget(n, layers) for n in (1, 2)]
        for unit in self.units:
            units_layout.addWidget(unit)
        self._rows[CONTROL] = [self.units_box]
        layout.addWidget(self.units_box)
        self.history_section = Section(
            "History", "this document's results, newest first: click one to reuse its settings", True
        )
        QVBoxLayout(self.history_section.content).setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.history_section)
        self._build_advanced(layout)

    def _build_seed(self, form: Rows) -> None:
        self.random_seed_check = QCheckBox("Random")
        self.random_seed_check.setChecked(True)
        self.random_seed_check.setToolTip("a new seed every time; untick to fix it and repeat a picture")
        self.seed_edit = QLineEdit("0")
        self.seed_edit.setValidator(QRegularExpressionValidator(QRegularExpression(r"\d{0,10}")))
        self.seed_edit.setEnabled(False)
        self.seed_edit.setToolTip("the seed: the same seed, model and parameters repeat the picture")
        self.seed_edit.setMinimumWidth(40)
        self.random_seed_check.toggled.connect(lambda on: self.seed_edit.setEnabled(not on))
        self._add_row(form, SEED, "Seed", hbox(self.seed_edit, self.random_seed_check))
        self.last_seed_label = QLabel("last: -")
        self.last_seed_label.setToolTip("the seed of the last result (Reuse copies it into Seed)")
        self.reuse_seed_button = QPushButton("Reuse")
        self.reuse_seed_button.setToolTip("fix the seed to the last one used, to vary only the prompt")
        self._add_row(form, SEED, "", hbox(self.last_seed_label, self.reuse_seed_button))

    def _build_advanced(self, layout: QVBoxLayout) -> None:
        """Source, steps, guidance, sampler, the region's size, context and edges, and the daemon."""
        self.advanced = Section(
            "Advanced",
            "what is sent, steps, guidance, sampler, working size, context, edges and the daemon's address",
        )
        adv = Rows(self.advanced.content)
        adv.setContentsMargins(8, 2, 0, 2)
        self.advanced_rows = adv
        self.source_combo = compact(QComboBox())
        self.source_combo.addItem("Visible image", "visible")
        self.source_combo.addItem("Active layer", "layer")
        self.source_combo.setToolTip("what is sent: the visible picture, or only the active layer")
        self._add_row(adv, SOURCE, "Source", self.source_combo)
        self.steps_spin = _int(1, 200, 30, "denoising steps: more is slower and usually finer")
        self._add_row(adv, STEPS, "Steps", self.steps_spin)
        self.guidance_spin = _double(
            0.0, 30.0, 0.5, 7.5, "how closely the prompt is followed (classifier-free guidance)"
        )
        self._add_row(adv, GUIDANCE, "Guidance", self.guidance_spin)
        self.scheduler_combo = compact(QComboBox())
        self.scheduler_combo.addItem("model's own", "")
        self.scheduler_combo.setToolTip("the sampler (scheduler) that runs the denoising steps")
        self._add_row(adv, SCHEDULER, "Sampler", self.scheduler_combo)
        self.speed_combo = compact(QComboBox())
        self.speed_combo.setObjectName("underpaint_speed")
        for key, text in zip(SPEEDS, ("Auto (Live: few steps)", "Quality", "Live (few steps)"), strict=True):
            self.speed_combo.addItem(text, key)
        self.speed_combo.setToolTip(
            "the model's live sampler setting (few steps, low guidance, its fast sampler and LoRA): "
            "Auto uses it for Live mode only, Live for every job, Quality never (Steps, Guidance and "
            "Sampler above)"
        )
        label = QLabel("Speed")
        label.setToolTip(self.speed_combo.toolTip())
        adv.add(label, self.speed_combo)
        self.live_delay_spin = _int(
            50, 5000, 300, "Live mode: how long the canvas must stay unchanged before a job is sent (ms)", 50
        )
        self.live_delay_spin.setSuffix(" ms")
        label = QLabel("Live delay")
        label.setToolTip(self.live_delay_spin.toolTip())
        adv.add(label, self.live_delay_spin)
        self.resolution_spin = _int(0, 2048, 0, "size the model works at (longer side)", step=64)
        self.resolution_spin.setSpecialValueText("model's own")
        self._add_row(adv, RESOLUTION, "Working size", self.resolution_spin)
        self.padding_spin = _int(0, 4096, 32, "context around the selection that the model sees (px)")
        self._add_row(adv, PADDING, "Padding", self.padding_spin)
        self.feather_spin = _int(0, 256, 8, "soft edge of the result inside the selection (px)")
        self._add_row(adv, FEATHER, "Feather", self.feather_spin)
        layout.addWidget(self.advanced)

    def _add_row(self, form: Rows, key: str, label: str, widget: QWidget) -> None:
        label_widget = QLabel(label)
        label_widget.setToolTip(widget.toolTip())
        form.add(label_widget, widget)
        self._rows.setdefault(key, []).extend([label_widget, widget])

    # -- what the daemon serves ----------------------------------------------------------------------
    def set_welcome(self, welcome: dict[str, Any] | None) -> None:
        """Fill the model picker from the daemon's presets (the saved choice, else its default)."""
        self.welcome = welcome
        items = presets.presets(welcome)
        saved = self._saved_model()
        names = [p["name"] for p in items]
        keep = saved if saved in names else (welcome or {}).get("default_model", "")
        fill_combo(
            self.model_combo,
            [(p["name"], p["name"], True) for p in items] or [("daemon default", "", True)],
            keep=keep,
            tips=[presets.help_text(p) for p in items] or [presets.help_text({})],
        )
        self.refresh()
        if welcome is not None:
            form_state.apply_pending(self)

    def _model_picked(self, *_: Any) -> None:
        """The painter picked a model: remember it (Krita's settings) and offer its modes."""
        self._save_model(self.model_name())
        self.refresh()

    def model_name(self) -> str:
        return str(self.model_combo.currentData() or "")

    def preset(self) -> dict[str, Any]:
        return presets.find(self.welcome, self.model_name())

    def refresh(self) -> None:
        """Offer the picked model's modes (the others greyed out, with the reason as tooltip)."""
        preset = self.preset()
        self.model_combo.setToolTip(presets.help_text(preset))
        choices = presets.mode_choices(self.welcome, preset)
        fill_combo(
            self.mode_combo,
            [(mode.label, mode.key, problem is None) for mode, problem in choices],
            tips=[problem or mode.hint for mode, problem in choices],
        )
        for unit in self.units:
            unit.set_choices(
                (self.welcome or {}).get("preprocessors") or [], list(preset.get("controlnets") or [])
            )
        self._mode_changed()

    def offered_modes(self) -> list[str]:
        """Keys of the modes the mode combo lets the painter pick now."""
        model = self.mode_combo.model()
        return [
            str(self.mode_combo.itemData(i))
            for i in range(self.mode_combo.count())
            if model.item(i).flags() & Qt.ItemIsEnabled
        ]

    # -- the mode ------------------------------------------------------------------------------------
    def mode(self) -> Mode:
        return MODES_BY_KEY[str(self.mode_combo.currentData() or "inpaint")]

    def run_mode(self) -> Mode:
        mode = self.mode()
        return MODES_BY_KEY[self.compare_panel.base_mode()] if mode.key == "compare" else mode

    def spec(self) -> dict[str, Any] | None:
        """The op spec the form follows: the picked preset's, or for Compare the ticked ones'."""
        run = self.run_mode()
        if self.mode().key == "compare":
            ticked = self.compare_panel.models()
            if ticked:
                return presets.compare_spec(self.welcome, ticked, run.op)
            return ((self.welcome or {}).get("ops") or {}).get(run.op)
        return presets.op_spec(self.welcome, self.preset(), run.op)

    def _mode_changed(self) -> None:
        mode, run = self.mode(), self.run_mode()
        compare = mode.key == "compare"
        if compare:
            base = self.compare_panel.base_mode()
            self.compare_panel.set_models(
                [
                    (name, problem, presets.help_text(presets.find(self.welcome, name)))
                    for name, problem in presets.comparable(self.welcome, base)
                ],
                self.model_name(),
            )
        self.compare_panel.setVisible(compare)
        spec = self.spec()
        shown = visible_fields(run, spec)
        for key, widgets in self._rows.items():
            for widget in widgets:
                widget.setVisible(key in shown)
        params = (spec or {}).get("params") or {}
        self._follow_spec(params, run)
        self._show_rank()
        self.lora_panel.set_loras(list(self.preset().get("loras") or []) if LORAS in shown else [])
        self.lora_panel.setVisible(LORAS in shown and self.lora_panel.has_rows())
        self.extras.set_spec(params)
        # The hints live in tooltips: a docker at Krita's default size has no room for them.
        self.mode_combo.setToolTip(f"{mode.label}: {mode.hint} (greyed out: the model cannot run it)")
        self.compare_panel.base_combo.setToolTip(f"the mode every ticked model runs; {run.label}: {run.hint}")

    def _show_rank(self) -> None:
        """Rank by CLIP only where the op spec lists `rank` and the op makes several pictures; it is
        greyed out while Variations is 1 (nothing to choose from)."""
        shown = visible_fields(self.run_mode(), self.spec())
        several = VARIATIONS in shown and self.variations_spin.maximum() > 1
        self.rank_check.setVisible(RANK in shown and several)
        self.rank_check.setEnabled(self.variations_spin.value() > 1)

    def _follow_spec(self, params: dict[str, Any], run: Mode) -> None:
        """Ranges, defaults and sampler choices of the picked preset's op. A field the painter left at
        the last default takes the new one (Kandinsky guides at 4, SD at 7.5); a value they set stays
        (clamped to the new range)."""
        limits = (self.welcome or {}).get("limits") or {}
        fields: list[tuple[str, QSpinBox | QDoubleSpinBox, float, float, float | None]] = [
            ("steps", self.steps_spin, 1, int(limits.get("max_steps") or 200), 30),
            ("variations", self.variations_spin, 1, int(limits.get("max_variations") or 8), None),
            ("guidance_scale", self.guidance_spin, 0.0, 30.0, 7.5),
            ("strength", self.strength_spin, 0.01, 1.0, run.default_strength),
            ("image_guidance_scale", self.image_guidance_spin, 0.0, 10.0, 1.5),
        ]
        for name, spin, low, high, fallback in fields:
            spec = params.get(name) or {}
            previous = self._defaults.get(name)
            untouched = previous is None or abs(spin.value() - previous) < 1e-9  # before any clamping
            spin.setRange(
                spec["min"] if spec.get("min") is not None else low,
                spec["max"] if spec.get("max") is not None else high,
            )
            default = spec.get("default", fallback)
            if default is None:
                default = fallback
            if default is None:
                continue
            if untouched:
                spin.setValue(default)
            self._defaults[name] = float(spin.value()) if untouched else float(default)
        choices = (params.get("scheduler") or {}).get("choices")
        if choices is None:
            choices = [""] + list((self.welcome or {}).get("schedulers") or [])
        fill_combo(self.scheduler_combo, [(c or "model's own", c, True) for c in choices])

    # -- reading -------------------------------------------------------------------------------------
    def values(self) -> FormValues:
        seed = None
        if not self.random_seed_check.isChecked():
            seed = min(MAX_SEED, int(self.seed_edit.text() or 0))
        mix_layers, prompt_weight = self.mix_panel.values()
        mode = self.mode()
        return FormValues(
            mode=mode.key,
            prompt=self.prompt_edit.toPlainText(),
            negative_prompt=self.negative_edit.text(),
            instruction=self.instruction_edit.text(),
            strength=float(self.strength_spin.value()),
            steps=int(self.steps_spin.value()),
            guidance=float(self.guidance_spin.value()),
            image_guidance=float(self.image_guidance_spin.value()),
            seed=seed,
            variations=int(self.variations_spin.value()),
            rank=self.rank_check.isChecked() and self.rank_check.isEnabled(),
            model=self.model_name(),
            resolution=int(self.resolution_spin.value()),
            padding=int(self.padding_spin.value()),
            feather=int(self.feather_spin.value()),
            scheduler=str(self.scheduler_combo.currentData() or ""),
            factor=int(self.factor_combo.currentData() or 4),
            source=str(self.source_combo.currentData() or "visible"),
            units=[unit.values() for unit in self.units],
            depth_layer_id=str(self.depth_combo.currentData() or ""),
            depth_layer_name=self.depth_combo.currentText(),
            mix_layers=mix_layers,
            prompt_weight=prompt_weight,
            compare_mode=self.compare_panel.base_mode(),
            compare_models=self.compare_panel.models() if mode.key == "compare" else [],
            extras=self.extras.values(),
            loras=self.lora_panel.values() if self.lora_panel.isVisibleTo(self.body) else [],
            speed=str(self.speed_combo.currentData() or "auto"),
            live_delay=int(self.live_delay_spin.value()),
        )
