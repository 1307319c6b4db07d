"""`loading` events (PROTOCOL.md 6.10): while a job waits for a model to build, download or load, its
client hears what it waits for, about once a second, so no editor sits silent for minutes.

A watch runs beside one load of one component (or LoRA): it reports once when the load starts and
then every `EVERY_S` until it ends. Warm models never start a watch, so a job whose models are all
loaded gets no `loading` event. Byte counts are given only where they are cheap: the weight files of
a local folder or file (`total_bytes`), and the growth of a hub repo's cache folder while it
downloads (`bytes`; the repo's total would need a hub request, so it is left out).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import FULLSIZE_PREFIX, TINY_PREFIX

#: Where a job's `loading` fields go (the worker adds `type` and `job`).
LoadingSink = Callable[[dict[str, Any]], None]
#: Seconds between two events of one load (the first is sent when the load starts).
EVERY_S = 1.0

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(source: str) -> bool:
    """`org/name` that is not a path on this machine: from_pretrained looks it up on the hub (or in
    its cache)."""
    return bool(_HUB_ID.match(source)) and not Path(source).expanduser().exists()


def describe(preset: str, role: str, source: str, folder_built: bool = True) -> str:
    """What a painter is told is loading: the preset's role and where it comes from."""
    if source.startswith(TINY_PREFIX):
        family = source[len(TINY_PREFIX) :].partition("/")[0]
        how = "loading" if folder_built else "building"
        return f"{preset} {role} ({how} the tiny {family} models)"
    if source.startswith(FULLSIZE_PREFIX):
        how = "loading" if folder_built else "building (about 2.8 GB)"
        return f"{preset} {role} ({how} the full-size random SD 1.5 models)"
    if is_hub_id(source):
        return f"{preset} {role} from {source} (Hugging Face hub or its cache)"
    return f"{preset} {role} from {source}"


def byte_counter(source: str, local: Path | None = None) -> Callable[[], dict[str, int]]:
    """A cheap reading of how far the load of `source` got: `total_bytes` of its weight files when they
    are on this machine (`local`, or the source itself), or `bytes` downloaded into the hub cache so
    far (the first reading is the baseline). Readings list a folder or two: milliseconds."""
    if is_hub_id(source):
        folder = _hub_cache_folder(source)
        start: list[int] = []

        def downloaded() -> dict[str, int]:
            now = _folder_bytes(folder / "blobs") if folder is not None else 0
            if not start:
                start.append(now)
            grown = now - start[0]
            return {"bytes": grown} if grown > 0 else {}

        return downloaded
    total: list[int] = []

    def on_disk() -> dict[str, int]:
        if not total:  # read again until known: a folder being built has no weights yet
            from .models import weight_file_bytes

            try:
                found = weight_file_bytes(local if local is not None else Path(source).expanduser())
            except OSError:
                found = 0
            if found:
                total.append(found)
        return {"total_bytes": total[0]} if total else {}

    return on_disk


def _hub_cache_folder(repo: str) -> Path | None:
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name
    except ImportError:
        return None
    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")


def _folder_bytes(folder: Path) -> int:
    """Bytes of the files directly in `folder` (a hub cache's blobs, including `.incomplete` ones)."""
    total = 0
    try:
        for entry in folder.iterdir():
            try:
                total += entry.stat().st_size
            except OSError:  # renamed from .incomplete meanwhile
                continue
    except OSError:
        return 0
    return total


class LoadWatch:
    """Reports one load to `sink` while it runs: at its start, then every `every` seconds."""

    def __init__(
        self,
        sink: LoadingSink,
        what: str,
        counter: Callable[[], dict[str, int]] | None = None,
        every: float = EVERY_S,
    ) -> None:
        self.sink = sink
        self.what = what
        self.counter = counter
        self.every = every
        self.started = 0.0
        self.sent = 0  # events sent (tests and logs)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LoadWatch:
        """The first event is sent from the loading thread itself, so it always precedes what the
        job sends after the load (its `progress`); the ticker thread sends the rest."""
        self.started = time.monotonic()
        self._report()
        self._thread = threading.Thread(target=self._tick, name="underpaint-loading", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """No event of this load is sent after it returns."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _tick(self) -> None:
        """One event per period until the load is over."""
        while not self._done.wait(self.every):
            self._report()

    def _report(self) -> None:
        fields: dict[str, Any] = {"what": self.what, "elapsed_s": round(time.monotonic() - self.started, 3)}
        if self.counter is not None:
            try:
                fields.update(self.counter())
            except Exception:  # a reading is a nicety: never let it break a load
                self.counter = None
        try:
            self.sink(fields)
            self.sent += 1
        except Exception:  # the link went away: the load itself goes on
            pass
