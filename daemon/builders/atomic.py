"""Build a generated model folder once, even when several processes ask for it at the same time."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def build_once(final: Path, build: Callable[[Path], Any]) -> Path:
    """Return `final`, first running `build(tmp)` into a temp folder beside it and renaming it in.

    Readers never see a half-written folder; when two processes build at once, whoever renames first
    wins and the other drops its copy.
    """
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-build-", dir=final.parent))
    try:
        build(tmp)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
