"""Tiny, seeded, randomly initialised model folders, one module per model family.

Nothing here downloads anything: every component is constructed from a config and saved with
``save_pretrained``, so the daemon loads it through the very same ``from_pretrained`` path it uses for
real checkpoints. The weights are random, so pictures are noise-like; they exist to exercise every
code path on machines without weights or a GPU.

Each family module has ``FOLDERS`` (what it writes) and ``build(dest, seed, progress)``. Families are
built on first use, each into ``ROOT/tiny-v{TINY_VERSION}/<family>/`` (atomically: see ``build_once``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from ..atomic import build_once
from .common import Progress

TINY_VERSION = "4"

#: family name -> module of this package that builds it
FAMILY_MODULES = {
    "sd15": "sd15",
    "sd2": "sd2",
    "sdxl": "sdxl",
    "sd-variation": "sd_variation",
    "unclip": "unclip",
    "if": "deepfloyd_if",
    "kandinsky22": "kandinsky22",
    "ddpm": "ddpm",
}

_README = """# Underpaint tiny test models: {family} (layout v{version}, seed {seed})

Random weights built offline by `underpaint.daemon.builders.tiny.{module}` for tests and demos.
They are complete diffusers folders loadable with `from_pretrained`, but nothing was trained: any
output is noise-like, and that is expected.

Folders: {folders}.
"""


def builder(family: str) -> ModuleType:
    """The module that builds `family`'s tiny folders."""
    return importlib.import_module(f".{FAMILY_MODULES[family]}", __name__)


def build_family(family: str, dest: Path, seed: int = 0, progress: Progress | None = None) -> Path:
    """Build `family`'s folders under ``dest`` (plus a README saying what they are)."""
    module = builder(family)
    dest = Path(dest)
    module.build(dest, seed, progress)
    readme = _README.format(
        family=family,
        module=FAMILY_MODULES[family],
        version=TINY_VERSION,
        seed=seed,
        folders=", ".join(module.FOLDERS),
    )
    (dest / "README.md").write_text(readme, encoding="utf-8")
    return dest


def ensure_tiny(root: Path, family: str) -> Path:
    """Return ``root/tiny-v{TINY_VERSION}/<family>``, building it first if it is missing.

    Two processes may build at once: whoever renames first wins and the loser drops its copy.
    """
    if family not in FAMILY_MODULES:
        raise KeyError(f"no tiny models for family {family!r}; known: {sorted(FAMILY_MODULES)}")
    return build_once(Path(root) / f"tiny-v{TINY_VERSION}" / family, lambda tmp: build_family(family, tmp))
