"""What every Underpaint procedure shares when GIMP asks for it: the menu, the documentation, the
attribution and the arguments from a mode's `args` (modes.Arg). procedures.py, live.py, rewording.py
and late.py each say only what is their own (name, run function, image types, sensitivity, help)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, GObject  # noqa: E402

from .modes import MENU_PATH, Arg  # noqa: E402

FLAGS = GObject.ParamFlags.READWRITE


def add_argument(procedure: Gimp.Procedure, arg: Arg) -> None:
    if arg.kind == "str":
        procedure.add_string_argument(arg.name, arg.nick, arg.blurb, arg.default, FLAGS)
    elif arg.kind == "int":
        procedure.add_int_argument(
            arg.name, arg.nick, arg.blurb, int(arg.min), int(arg.max), arg.default, FLAGS
        )
    elif arg.kind == "bool":
        procedure.add_boolean_argument(arg.name, arg.nick, arg.blurb, bool(arg.default), FLAGS)
    elif arg.kind == "float":
        procedure.add_double_argument(arg.name, arg.nick, arg.blurb, arg.min, arg.max, arg.default, FLAGS)
    elif arg.kind == "choice":
        choice = Gimp.Choice.new()
        for index, (value, label) in enumerate(arg.choices):
            choice.add(value, index, label, "")
        procedure.add_choice_argument(arg.name, arg.nick, arg.blurb, choice, arg.default, FLAGS)
    elif arg.kind == "layer":
        procedure.add_layer_argument(arg.name, arg.nick, arg.blurb, True, FLAGS)
    elif arg.kind == "strings":
        procedure.add_string_array_argument(arg.name, arg.nick, arg.blurb, FLAGS)
    else:
        raise ValueError(f"unknown argument kind {arg.kind}")


def image_procedure(
    plugin: Gimp.PlugIn,
    name: str,
    run: Callable[..., Any],
    *,
    label: str,
    blurb: str,
    help_text: str,
    image_types: str,
    sensitivity: Gimp.ProcedureSensitivityMask,
    args: Iterable[Arg] = (),
    data: Any = None,
) -> Gimp.Procedure:
    """An image procedure under Filters > Underpaint with its arguments."""
    procedure = Gimp.ImageProcedure.new(plugin, name, Gimp.PDBProcType.PLUGIN, run, data)
    procedure.set_image_types(image_types)
    procedure.set_sensitivity_mask(sensitivity)
    procedure.set_menu_label(label)
    procedure.add_menu_path(MENU_PATH)
    procedure.set_documentation(blurb, help_text, name)
    procedure.set_attribution("Underpaint", "Underpaint contributors", "2026")
    for arg in args:
        add_argument(procedure, arg)
    return procedure
