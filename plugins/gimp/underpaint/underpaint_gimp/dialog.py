"""The interactive dialog: GIMP's procedure dialog plus a model preset picker filled from the daemon.

GIMP registers the procedures at start, when the daemon may not run, so `model` stays a plain string
argument; the dialog asks the daemon for its presets when it opens (and on Refresh), lists them with
their family, explains the picked family, greys out the settings that preset does not take, and
keeps OK disabled while the preset cannot run this mode. If the daemon does not answer, the dialog
says so and the preset can still be typed. The prompt fields' tooltips say which prompt syntax the
picked preset reads; a prompt the daemon refused reopens the dialog with the message under that field
and the cursor where the daemon points.
"""

from __future__ import annotations

from collections.abc import Callable

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gtk", "3.0")
from gi.repository import Gimp, GimpUi, GLib, GObject, Gtk  # noqa: E402

from . import job as jobs  # noqa: E402
from .connection import recall  # noqa: E402
from .keys import CLIENT_ARG, SERVER_ARG, KeyFiles  # noqa: E402
from .lora_rows import LoraRows  # noqa: E402
from .modes import LIVE, LORAS, MODEL, RANK, Arg, Mode, effective  # noqa: E402
from .presets import LIVE_FALLBACK, Catalog, Preset, help_text  # noqa: E402
from .prompt_errors import PromptError  # noqa: E402
from .request import UserError  # noqa: E402

ASK_TIMEOUT = 2.0  # s: a daemon that is up answers `hello` in milliseconds
HELP_WIDTH = 72  # characters per line of the explanation under the picker
ABOUT_HEIGHT = 118  # px: about seven lines of the family's paragraph before it scrolls
KEYS, KEYS_BOX, KEYS_TITLE = "underpaint-keys", "underpaint-keys-box", "underpaint-keys-title"
KEYS_TOOLTIP = (
    "Only for a daemon started with keys (underpaint serve --keys DIR), which encrypts the connection "
    "and lets in only the key pairs it knows; a daemon on this computer needs none"
)
SETTINGS = "family-settings"  # the argument whose tooltip lists the picked preset's own parameters
# Prompt arguments -> the wire parameter whose `syntax` the preset's op spec states.
PROMPTS = {"prompt": "prompt", "negative-prompt": "negative_prompt", "instruction": "instruction"}
SYNTAX = {
    "weighted": "Prompt syntax: (red hair:1.3) stresses a phrase, (background:0.7) softens it; write "
    "\\( and \\) for literal parentheses.",
    "plain": "Prompt syntax: plain text; this preset cannot weigh phrases, so (text:1.3) is refused; "
    "write \\( and \\) for literal parentheses.",
}


def run_dialog(
    procedure: Gimp.Procedure,
    config: Gimp.ProcedureConfig,
    mode: Mode,
    problem: PromptError | None = None,
) -> bool:
    """Show the dialog (with `problem` under its prompt field, when the daemon refused one); True when
    the user pressed OK (the config then holds the values)."""
    if not Gtk.init_check()[0]:  # GimpUi.init would end the plug-in process without a display
        raise UserError(
            f"Underpaint {mode.title} cannot open its dialog: there is no display. Call it "
            "non-interactively (RUN-NONINTERACTIVE) with its arguments instead."
        )
    GimpUi.init("underpaint")
    if problem is None:
        recall(config)
    title = f"Underpaint {mode.title}" + (f" (fix {problem.what})" if problem is not None else "")
    dialog = GimpUi.ProcedureDialog.new(procedure, config, title)
    dialog.fill(_fields(dialog, config, mode))
    kind = ComparePicker if mode.key == "compare" else PresetPicker
    picker = kind(dialog, config, mode)
    content = dialog.get_content_area()
    content.pack_start(picker.box, False, False, 0)
    content.reorder_child(picker.box, 0)
    picker.box.show_all()
    picker.refresh()
    if problem is not None:
        show_problem(dialog, problem)
    try:
        return bool(dialog.run())
    finally:
        dialog.destroy()


def _fields(dialog: GimpUi.ProcedureDialog, config: Gimp.ProcedureConfig, mode: Mode) -> list[str]:
    """The dialog's rows, the two key files folded in an expander (open when either is set): most
    painters run the daemon on their own computer and need no keys."""
    hidden = ("model", LORAS.name)  # the preset picker and the LoRA rows stand for these
    names = [arg.name for arg in mode.args if arg.kind != "strings" and arg.name not in hidden]
    keys = [name for name in names if name in (SERVER_ARG, CLIENT_ARG)]
    if not keys:
        return names
    title = dialog.get_label(KEYS_TITLE, "Keys (for a daemon on the network)", False, False)
    title.set_tooltip_text(KEYS_TOOLTIP)
    dialog.fill_box(KEYS_BOX, keys)
    expander = dialog.fill_expander(KEYS, KEYS_TITLE, False, KEYS_BOX)
    expander.set_tooltip_text(KEYS_TOOLTIP)
    expander.set_expanded(any(str(config.get_property(name) or "").strip() for name in keys))
    at = names.index(keys[0])
    return [*names[:at], KEYS, *[name for name in names[at:] if name not in keys]]


def show_problem(dialog: GimpUi.ProcedureDialog, problem: PromptError) -> None:
    """The daemon's message right under the prompt field it is about, and the cursor at its position."""
    field = dialog.get_widget(problem.argument, GObject.TYPE_NONE)
    message = _label(
        str(problem), "What the Underpaint daemon could not read in this text; fix it and press OK"
    )
    message.get_style_context().add_class("error")
    message.set_markup(f'<span foreground="#c01c28">{GLib.markup_escape_text(str(problem))}</span>')
    message.set_selectable(True)
    parent = field.get_parent() if field is not None else None
    if not isinstance(parent, Gtk.Box):
        content = dialog.get_content_area()
        content.pack_start(message, False, False, 4)
        content.reorder_child(message, 1)
        message.show()
        return
    parent.pack_start(message, False, False, 0)
    parent.reorder_child(message, parent.child_get_property(field, "position") + 1)
    message.show()
    entry = field.get_entry() if isinstance(field, GimpUi.LabelEntry) else None
    if entry is None:
        return

    def focus() -> bool:
        entry.grab_focus_without_selecting()
        if problem.position is not None:
            entry.set_position(min(problem.position, len(entry.get_text())))
        return False

    GLib.idle_add(focus)


def _label(text: str, tooltip: str = "") -> Gtk.Label:
    label = Gtk.Label(label=text)
    label.set_xalign(0.0)
    label.set_line_wrap(True)
    label.set_max_width_chars(HELP_WIDTH)
    if tooltip:
        label.set_tooltip_text(tooltip)
    return label


class _Picker:
    """What both pickers share: the daemon's catalog, the help text, greying out unused settings."""

    def __init__(self, dialog: GimpUi.ProcedureDialog, config: Gimp.ProcedureConfig, mode: Mode) -> None:
        self.dialog, self.config, self.mode = dialog, config, mode
        self.catalog: Catalog | None = None
        self.down = ""  # why the daemon gave no presets
        self.box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        self.box.set_margin_bottom(6)
        self.row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        self.box.pack_start(self.row, False, False, 0)
        self.refresh_button = Gtk.Button(label="Refresh")
        self.refresh_button.set_tooltip_text(
            "Ask the daemon at the endpoint set below for its model presets again (after starting it, "
            "or changing the endpoint or the keys)"
        )
        self.refresh_button.connect("clicked", lambda _button: self.refresh())
        self.help = _label("", "The picked preset and its model family, from the daemon")
        self.box.pack_start(self.help, False, False, 0)
        self.about = _label("", "What the picked model family is good and bad at, from the daemon")
        self.scroller = Gtk.ScrolledWindow()  # a long paragraph scrolls instead of growing the dialog
        self.scroller.set_policy(Gtk.PolicyType.NEVER, Gtk.PolicyType.AUTOMATIC)
        self.scroller.set_propagate_natural_height(True)
        self.scroller.set_propagate_natural_width(True)
        self.scroller.set_overlay_scrolling(False)  # a visible scroll bar says there is more
        self.scroller.set_max_content_height(ABOUT_HEIGHT)
        self.scroller.set_no_show_all(True)
        self.scroller.add(self.about)
        self.about.show()
        self.box.pack_start(self.scroller, False, False, 0)
        self.notes = _label("", "What the picked preset does differently in this mode")
        self.notes.set_no_show_all(True)
        self.box.pack_start(self.notes, False, False, 0)
        self.loras = LoraRows(config)
        self.box.pack_start(self.loras.box, False, False, 0)
        self.box.pack_start(Gtk.Separator(orientation=Gtk.Orientation.HORIZONTAL), False, False, 2)
        self._tooltips: dict[str, str | None] = {}

    def endpoint(self) -> str:
        return str(self.config.get_property("endpoint") or "").strip()

    def keys(self) -> KeyFiles:
        names = (SERVER_ARG, CLIENT_ARG)
        return KeyFiles.from_values({n: self.config.get_property(n) for n in names if self.mode.has(n)})

    def refresh(self) -> None:
        """Ask the daemon for its presets (a short wait when it is down) and fill the picker."""
        try:
            self.catalog = Catalog.from_welcome(jobs.fetch_welcome(self.endpoint(), ASK_TIMEOUT, self.keys()))
            self.down = ""
        except UserError as exc:
            self.catalog, self.down = None, str(exc)
        self.fill()
        self.update()

    def show_help(self, head: str, about: str = "", notes: str = "") -> None:
        self.help.set_text(head)
        self.about.set_text(about)
        self.scroller.set_visible(bool(about))
        self.notes.set_text(notes)
        self.notes.set_visible(bool(notes))

    def fill(self) -> None:
        raise NotImplementedError

    def update(self) -> None:
        raise NotImplementedError

    def explain_syntax(self, name: str, op: str) -> None:
        """Add the prompt syntax the preset reads (weighted or plain) to the prompt fields' tooltips."""
        if self.catalog is None:
            return
        for argument, param in PROMPTS.items():
            widget = self.dialog.get_widget(argument, GObject.TYPE_NONE) if self.mode.has(argument) else None
            mixed = self.mode.key == "mix" and argument == "prompt"  # Mix's prompt is one of its items
            syntax = self.catalog.syntax(name, op, "items" if mixed else param)
            if widget is None or not widget.get_sensitive() or syntax not in SYNTAX:
                continue
            widget.set_tooltip_text(f"{self._tooltips.get(argument) or ''}\n{SYNTAX[syntax]}".strip())

    def grey_out(self, takes: Callable[[Arg], bool], why: str, preset: Preset | None = None) -> None:
        """Settings the chosen preset(s) do not use are insensitive, their tooltip saying why; with the
        Live sampler, so are those the preset's live map sets (without a preset: the fallback's)."""
        live = self.mode.has("sampler") and self.config.get_property("sampler") == LIVE
        live_sets = set(preset.live_params() if preset is not None else LIVE_FALLBACK)
        for arg in self.mode.args:
            if arg.kind == "strings" or arg.name in ("model", LORAS.name):
                continue
            widget = self.dialog.get_widget(arg.name, GObject.TYPE_NONE)
            if widget is None:
                continue
            if arg.name not in self._tooltips:
                self._tooltips[arg.name] = widget.get_tooltip_text()
            used = takes(arg)
            if arg.name == RANK.name:  # shown only where it can rank: the preset lists it, 2+ variations
                used = used and int(self.config.get_property("variations") or 1) > 1
                widget.set_no_show_all(True)  # the dialog's show_all must not bring it back
                widget.set_visible(used)
            widget.set_sensitive(used)
            widget.set_tooltip_text(self._tooltips[arg.name] if used else f"{why} does not use this setting")
            if used and live and arg.param in live_sets:
                widget.set_sensitive(False)
                widget.set_tooltip_text(f"{self._tooltips[arg.name]}\nThe Live sampler sets this.")


class PresetPicker(_Picker):
    """One preset: a combo with an entry (names can be typed when the daemon is down)."""

    def __init__(self, dialog: GimpUi.ProcedureDialog, config: Gimp.ProcedureConfig, mode: Mode) -> None:
        super().__init__(dialog, config, mode)
        self.store = Gtk.ListStore(str, str, bool)  # name, family title (or why not), can run the mode
        self.combo = Gtk.ComboBox.new_with_model_and_entry(self.store)
        self.combo.set_entry_text_column(0)
        family = Gtk.CellRendererText()
        family.set_property("foreground", "#888888")
        self.combo.pack_start(family, False)
        self.combo.add_attribute(family, "text", 1)
        for cell in self.combo.get_cells():
            self.combo.add_attribute(cell, "sensitive", 2)
        self.combo.set_tooltip_text(
            f"{MODEL.blurb}. Filled from the daemon; presets that cannot run {mode.title} are greyed out. "
            "A name can also be typed."
        )
        self.entry: Gtk.Entry = self.combo.get_child()
        self.entry.set_activates_default(True)  # Return runs the dialog, as in GIMP's own entries
        self.entry.set_tooltip_text(self.combo.get_tooltip_text())
        self.config.bind_property(
            "model", self.entry, "text", GObject.BindingFlags.BIDIRECTIONAL | GObject.BindingFlags.SYNC_CREATE
        )
        label = Gtk.Label.new_with_mnemonic(MODEL.nick)
        label.set_mnemonic_widget(self.entry)
        label.set_tooltip_text(MODEL.blurb)
        self.row.pack_start(label, False, False, 0)
        self.row.pack_start(self.combo, True, True, 0)
        self.row.pack_start(self.refresh_button, False, False, 0)
        self.entry.connect("changed", lambda _entry: self.update())
        if mode.has("sampler"):
            config.connect("notify::sampler", lambda *_args: self.update())
        if mode.has(RANK.name):
            config.connect("notify::variations", lambda *_args: self.update())

    def fill(self) -> None:
        self.store.clear()
        if self.catalog is None:
            self.entry.set_placeholder_text("the daemon's default")
            return
        for preset in self.catalog.presets:
            runs = preset.runs(self.mode.op)
            note = preset.title if runs else f"{preset.title}: cannot run {self.mode.title}"
            self.store.append([preset.name, note, runs])
        self.entry.set_placeholder_text(f"the daemon's default ({self.catalog.default})")

    def update(self) -> None:
        name = self.entry.get_text().strip()
        if self.catalog is None:
            self.show_help(f"{self.down}\nPress Refresh once it runs; a preset name can also be typed.")
            self.dialog.set_response_sensitive(Gtk.ResponseType.OK, True)
            self.grey_out(lambda arg: True, "")
            return
        shown = help_text(self.catalog, name, self.mode, self.mode.op, self.mode.title)
        self.show_help(shown.head, shown.about, shown.notes)
        self.dialog.set_response_sensitive(Gtk.ResponseType.OK, shown.runnable)
        preset = self.catalog.get(name)
        if preset is None or not shown.runnable:
            self.grey_out(lambda arg: True, "")
            return
        takes_loras = self.mode.has(LORAS.name) and preset.takes(self.mode.op, LORAS)
        self.loras.show(preset.loras if takes_loras else ())
        self.grey_out(lambda arg: preset.takes(self.mode.op, arg), f"{preset.name} ({preset.title})", preset)
        self.explain_syntax(preset.name, self.mode.op)
        extra = self.catalog.family_settings(preset, self.mode.op)
        if extra and self.mode.has(SETTINGS):
            blurb, takes = self._tooltips.get(SETTINGS) or "", "\n".join(extra.values())
            widget = self.dialog.get_widget(SETTINGS, GObject.TYPE_NONE)
            widget.set_tooltip_text(f"{blurb}\n\n{preset.name} takes:\n{takes}".strip())


class ComparePicker(_Picker):
    """Several presets: one check button each, those that cannot run the base mode insensitive."""

    def __init__(self, dialog: GimpUi.ProcedureDialog, config: Gimp.ProcedureConfig, mode: Mode) -> None:
        super().__init__(dialog, config, mode)
        models = mode.arg("models")
        label = Gtk.Label.new_with_mnemonic(models.nick)
        label.set_tooltip_text(f"{models.blurb}; hover over a preset for what its family is good and bad at")
        label.set_xalign(0.0)
        self.row.pack_start(label, True, True, 0)
        self.row.pack_start(self.refresh_button, False, False, 0)
        self.checks = Gtk.FlowBox()
        self.checks.set_selection_mode(Gtk.SelectionMode.NONE)
        self.checks.set_max_children_per_line(5)
        self.checks.set_min_children_per_line(3)
        self.checks.set_row_spacing(0)
        self.checks.set_homogeneous(True)
        self.box.pack_start(self.checks, False, False, 0)
        self.box.reorder_child(self.checks, 1)
        self.mnemonic = label
        self.wanted = list(config.get_property("models") or [])
        self.buttons: dict[str, Gtk.CheckButton] = {}
        config.connect("notify::base-mode", lambda *_args: self.update())

    def base(self) -> Mode:
        return effective(self.mode, {"base-mode": self.config.get_property("base-mode")})

    def fill(self) -> None:
        for child in self.checks.get_children():
            self.checks.remove(child)
        self.buttons = {}
        for preset in self.catalog.presets if self.catalog else ():
            button = Gtk.CheckButton(label=preset.name)
            button.set_active(preset.name in self.wanted)
            button.connect("toggled", self._toggled, preset.name)
            self.checks.add(button)
            self.buttons[preset.name] = button
        if self.buttons:
            self.mnemonic.set_mnemonic_widget(next(iter(self.buttons.values())))
        self.checks.show_all()

    def _toggled(self, button: Gtk.CheckButton, name: str) -> None:
        if button.get_active() and name not in self.wanted:
            self.wanted.append(name)
        elif not button.get_active() and name in self.wanted:
            self.wanted.remove(name)
        self.update()

    def update(self) -> None:
        base = self.base()
        if self.catalog is None:
            last = ", ".join(self.wanted) or "none"
            self.show_help(f"{self.down}\nPress Refresh once it runs. Presets compared last time: {last}.")
            self.grey_out(lambda arg: True, "")
            return
        chosen: list[Preset] = []
        for preset in self.catalog.presets:
            button = self.buttons[preset.name]
            runs = preset.runs(base.op)
            button.set_sensitive(runs)
            about = f"{preset.title}: {preset.about}" if preset.about else preset.title
            button.set_tooltip_text(about if runs else self.catalog.cannot_run(preset, base.op, base.title))
            if runs and preset.name in self.wanted:
                chosen.append(preset)
        self.config.set_property("models", [p.name for p in chosen])
        names = ", ".join(f"{p.name} ({p.title})" for p in chosen) or "none yet: tick two or more"
        self.show_help(f"{base.title} on {names}. Greyed presets cannot run {base.title}.")
        self.dialog.set_response_sensitive(Gtk.ResponseType.OK, bool(chosen))
        base_args = {arg.name for arg in base.args}

        def takes(arg: Arg) -> bool:
            if arg.name in ("base-mode", "endpoint", "seed", "variations"):
                return True
            if arg.name not in base_args:
                return False
            return any(p.takes(base.op, arg) for p in chosen) if chosen else True

        self.grey_out(takes, f"{base.title} with the ticked presets")
