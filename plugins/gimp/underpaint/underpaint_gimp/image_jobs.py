"""The pending jobs of an image, kept in its parasites (see `pending` for what is stored and why).

`underpaint-pending` is persistent (saved in the .xcf) and attached without an undo step, so a
successful run leaves no trace in the history; when a call ends with its job still on the daemon,
it is attached once more as an undo step, which marks the image changed: GIMP then asks to save it
before closing, and the saved file keeps the job. `underpaint-live` is never saved: the sessions
that calls running right now hold, so no other call takes them over (it would get their events).
"""

from __future__ import annotations

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp  # noqa: E402

from .pending import LIVE, PENDING, PendingJob, decode, decode_live, encode, encode_live  # noqa: E402


def _read(image: Gimp.Image, name: str) -> bytes | None:
    parasite = image.get_parasite(name)
    return None if parasite is None else parasite_bytes(parasite)


def parasite_bytes(parasite: Gimp.Parasite) -> bytes:
    """A parasite's data (GObject introspection may hand it over as signed chars)."""
    return bytes(value & 0xFF for value in parasite.get_data())


def _write(image: Gimp.Image, name: str, data: bytes | None, flags: int) -> None:
    if data is None:
        if image.get_parasite(name) is not None:
            image.detach_parasite(name)
        return
    image.attach_parasite(Gimp.Parasite.new(name, flags, list(data)))


def stored(image: Gimp.Image) -> list[PendingJob]:
    return decode(_read(image, PENDING))


def store(image: Gimp.Image, jobs: list[PendingJob], undoable: bool = False) -> None:
    """Write the image's pending jobs (none: remove the parasite)."""
    flags = Gimp.PARASITE_PERSISTENT | (Gimp.PARASITE_UNDOABLE if undoable else 0)
    _write(image, PENDING, encode(jobs) if jobs else None, flags)


def add(image: Gimp.Image, job: PendingJob) -> None:
    store(image, [j for j in stored(image) if j.job != job.job] + [job])


def forget(image: Gimp.Image, ids: set[str]) -> None:
    jobs = stored(image)
    left = [j for j in jobs if j.job not in ids]
    if len(left) != len(jobs):
        store(image, left)


def keep(image: Gimp.Image, job: PendingJob) -> None:
    """The call ends with `job` still on the daemon: store it as a change the painter saves."""
    store(image, [j for j in stored(image) if j.job != job.job] + [job], undoable=True)


def live(image: Gimp.Image) -> set[str]:
    return decode_live(_read(image, LIVE))


def hold(image: Gimp.Image, token: str) -> None:
    _write(image, LIVE, encode_live(live(image) | {token}), 0)


def release(image: Gimp.Image, token: str) -> None:
    left = live(image) - {token}
    _write(image, LIVE, encode_live(left) if left else None, 0)
