"""`underpaint install-plugin krita|gimp`: copy a plugin, with a vendored copy of the protocol
package, where the editor looks for it (or into a zip for Krita's "Import Python Plugin").

Layout shipped:
- Krita: `pykrita/underpaint_krita.desktop` and `pykrita/underpaint_krita/` (the vendored protocol is
  the subpackage `underpaint_krita/protocol`), enabled in kritarc.
- GIMP 3: `plug-ins/underpaint/underpaint.py` (executable) and its modules, with the vendored
  protocol as `plug-ins/underpaint/underpaint_protocol/`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import sys
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]  # the daemon/ folder
PROTOCOL_FILES = (
    "__init__.py",
    "client.py",
    "live.py",
    "loading.py",
    "messages.py",
    "regions.py",
    "PROTOCOL.md",
)
KRITA_NAME = "underpaint_krita"
GIMP_NAME = "underpaint"


def _plugins_root() -> Path:
    """Source tree: plugins/ beside daemon/ (checkout) or underpaint/plugins (installed)."""
    import importlib.util

    spec = importlib.util.find_spec("underpaint.plugins")
    if spec and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return HERE.parent / "plugins"


def _protocol_root() -> Path:
    return HERE.parent / "protocol" if (HERE.parent / "protocol").is_dir() else _installed_protocol()


def _installed_protocol() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("underpaint.protocol")
    assert spec and spec.origin, "underpaint.protocol is not importable"
    return Path(spec.origin).parent


def default_krita_dir() -> Path:
    if sys.platform == "win32":
        return Path(os.environ["APPDATA"]) / "krita" / "pykrita"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "krita" / "pykrita"
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "krita" / "pykrita"


def default_kritarc() -> Path:
    if sys.platform == "win32":
        return Path(os.environ["LOCALAPPDATA"]) / "kritarc"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Preferences" / "kritarc"
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "kritarc"


def default_gimp_dir() -> Path:
    if sys.platform == "win32":
        return Path(os.environ["APPDATA"]) / "GIMP" / "3.0" / "plug-ins"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "GIMP" / "3.0" / "plug-ins"
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "GIMP" / "3.0" / "plug-ins"


def _copy_protocol(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROTOCOL_FILES:
        shutil.copy2(_protocol_root() / name, dest / name)


def _copy_tree(src: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests"))


def stage_krita(dest: Path) -> Path:
    """Put the Krita plugin (desktop file + package + vendored protocol) into `dest`."""
    src = _plugins_root() / "krita"
    dest.mkdir(parents=True, exist_ok=True)
    _copy_tree(src / KRITA_NAME, dest / KRITA_NAME)
    shutil.copy2(src / f"{KRITA_NAME}.desktop", dest / f"{KRITA_NAME}.desktop")
    _copy_protocol(dest / KRITA_NAME / "protocol")
    return dest / KRITA_NAME


def enable_in_kritarc(kritarc: Path, name: str = KRITA_NAME) -> None:
    """Krita loads only enabled Python plugins: set [python] enable_<name>=true.

    Edits that one line and keeps the rest of the file byte for byte: kritarc is KConfig, not INI (a
    Krita that ran once writes keys before any section and `[A][B]` groups), which configparser
    refuses to read ("File contains no section headers") or would rewrite lossily.
    """
    key = f"enable_{name}"
    text = kritarc.read_text(encoding="utf-8") if kritarc.exists() else ""
    lines = text.splitlines(keepends=True)
    section, python_at = "", -1
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
            python_at = i + 1 if stripped == "[python]" else python_at
        elif section == "[python]" and stripped.split("=", 1)[0].strip() == key:
            lines[i] = f"{key}=true\n"
            break
    else:
        if python_at >= 0:
            lines.insert(python_at, f"{key}=true\n")
        else:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines += (["\n"] if lines else []) + ["[python]\n", f"{key}=true\n"]
    kritarc.parent.mkdir(parents=True, exist_ok=True)
    kritarc.write_text("".join(lines), encoding="utf-8")


def build_krita_zip(zip_path: Path) -> Path:
    """A zip for Krita's Tools > Scripts > Import Python Plugin from File.

    Folders get their own entries ("underpaint_krita/"): Krita's importer finds a plugin's package by
    its folder entry and reports "No plugins found in archive" without one.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        stage_krita(Path(tmp))
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(Path(tmp).rglob("*")):
                if path.is_file() or path.is_dir():
                    zf.write(path, path.relative_to(tmp).as_posix())
    return zip_path


def stage_gimp(plug_ins: Path) -> Path:
    """Put the GIMP 3 plug-in folder (script + modules + vendored protocol) into `plug_ins`."""
    dest = plug_ins / GIMP_NAME
    _copy_tree(_plugins_root() / "gimp" / GIMP_NAME, dest)
    _copy_protocol(dest / "underpaint_protocol")
    script = dest / f"{GIMP_NAME}.py"
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return dest


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "install-plugin",
        help="install the Krita or GIMP 3 plugin for this user",
        description="Copy the Krita or GIMP 3 plugin, with a vendored copy of the Underpaint "
        "protocol, into the editor's plugin folder (Krita: also enable it in kritarc). The editor's "
        "own Python needs pyzmq and msgpack (Debian/Ubuntu: apt install python3-zmq python3-msgpack).",
    )
    p.add_argument("editor", choices=["krita", "gimp"], help="which editor")
    p.add_argument(
        "--dest", type=Path, help="plugin folder (default: Krita's pykrita / GIMP 3's plug-ins folder)"
    )
    p.add_argument("--kritarc", type=Path, help="Krita's kritarc to enable the plugin in")
    p.add_argument("--zip", type=Path, help="Krita: write an importable zip here instead of installing")
    p.set_defaults(func=cmd_install_plugin)


def cmd_install_plugin(args: argparse.Namespace) -> int:
    if args.editor == "krita":
        if args.zip:
            print(f"wrote {build_krita_zip(args.zip)}")
            return 0
        dest = stage_krita(args.dest or default_krita_dir())
        kritarc = args.kritarc or default_kritarc()
        enable_in_kritarc(kritarc)
        print(
            f"installed the Krita plugin in {dest} and enabled it in {kritarc}; restart Krita and "
            "open Settings > Dockers > Underpaint"
        )
        return 0
    dest = stage_gimp(args.dest or default_gimp_dir())
    print(f"installed the GIMP plug-in in {dest}; restart GIMP and look in Filters > Underpaint")
    return 0
