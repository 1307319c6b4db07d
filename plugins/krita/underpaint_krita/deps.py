"""Can Krita's Python talk to the daemon? pyzmq and msgpack are not part of Krita: say how to get them."""

from __future__ import annotations

import importlib
import sys

REQUIRED = (("zmq", "pyzmq", "python3-zmq"), ("msgpack", "msgpack", "python3-msgpack"))


def dependency_problem() -> str | None:
    """None when the plugin can run, else a message for the painter with how to fix it."""
    missing: list[tuple[str, str, str, str]] = []
    for module, pip_name, deb_name in REQUIRED:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken install raises more than ImportError
            missing.append((module, pip_name, deb_name, f"{type(exc).__name__}: {exc}"))
    if missing:
        return missing_message(missing)
    try:
        from .protocol import client  # noqa: F401  (the vendored copy installed beside this file)
    except ImportError as exc:
        return (
            f"The plugin's copy of the Underpaint protocol is missing or broken ({exc}). "
            "Reinstall the plugin with `underpaint install-plugin krita` and restart Krita."
        )
    return None


def missing_message(missing: list[tuple[str, str, str, str]]) -> str:
    pips = " ".join(pip for _, pip, _, _ in missing)
    debs = " ".join(deb for _, _, deb, _ in missing)
    why = "; ".join(f"{module}: {error}" for module, _, _, error in missing)
    version = ".".join(str(v) for v in sys.version_info[:2])
    return (
        f"Krita's Python {version} cannot import {', '.join(p for _, p, _, _ in missing)} ({why}). "
        "Underpaint needs pyzmq and msgpack inside Krita.\n"
        f"Linux with your distribution's Krita: `sudo apt install {debs}` "
        f"(Fedora: `sudo dnf install {debs}`), then restart Krita.\n"
        f"Windows, macOS or the AppImage (Krita's own Python {version}): install them into Krita's "
        "plugin folder with a Python of the same version, e.g. "
        f"`python{version} -m pip install --target <pykrita folder> --only-binary=:all: {pips}` "
        "(Settings > Manage Resources > Open Resource Folder shows where pykrita is), then restart Krita."
    )
