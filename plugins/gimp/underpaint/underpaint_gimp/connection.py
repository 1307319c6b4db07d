"""The last connection that worked, offered to dialogs that were never set up.

GIMP keeps each procedure's last values on its own, so a painter who set the endpoint and keys in
one Underpaint dialog would have to type them again in every other. After a successful interactive
run, the endpoint and key paths are kept in a global GIMP parasite (saved in GIMP's parasiterc); a
dialog whose connection settings are still the defaults starts with them.
"""

from __future__ import annotations

import json
from typing import Any

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp  # noqa: E402

from .modes import CONNECTION  # noqa: E402

PARASITE = "underpaint-connection"


def remember(values: dict[str, Any]) -> None:
    """Keep the connection settings of a run that worked."""
    data = {arg.name: str(values.get(arg.name) or "") for arg in CONNECTION}
    blob = json.dumps(data, sort_keys=True).encode()
    Gimp.attach_parasite(Gimp.Parasite.new(PARASITE, Gimp.PARASITE_PERSISTENT, list(blob)))


def recall(config: Gimp.ProcedureConfig) -> bool:
    """Fill a dialog's connection settings from the last working connection when they are still
    the defaults; True when it did."""
    if any(str(config.get_property(arg.name) or "") != arg.default for arg in CONNECTION):
        return False
    parasite = Gimp.get_parasite(PARASITE)
    if parasite is None:
        return False
    try:
        data = json.loads(bytes(parasite.get_data()).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    if not isinstance(data, dict) or all(data.get(a.name, a.default) == a.default for a in CONNECTION):
        return False
    for arg in CONNECTION:
        config.set_property(arg.name, str(data.get(arg.name) or arg.default))
    return True
