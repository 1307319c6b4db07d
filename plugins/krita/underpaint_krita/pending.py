"""Jobs that outlive the docker: the daemon session's token and every job still owed a result, kept
in a small JSON file beside Krita's settings, so that a Krita restart (or crash) mid-job, or closing
the job's document, still delivers the layer: the docker resumes the session with the token and
fetches the results by job id (PROTOCOL.md 9.1, 5.7), then places them when their document is open.

A file rather than kritarc: Krita writes its settings when it quits, so a crash would lose them, and
a crash is one of the restarts this is for. The file is rewritten at once (read, change, write to a
temporary file, rename) whenever a job is accepted, moves or ends, and only its owner may read it:
the token is a secret that lets its holder take the session over. Pure Python, unit-tested.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

FORMAT = "underpaint-krita-pending/1"
FILE_NAME = "underpaint-pending.json"
MAX_AGE_S = 7 * 24 * 3600.0  # a record this old is dropped when read: no daemon keeps results that long


@dataclass
class PendingJob:
    """What the docker needs to place a job's result later, without the document or the form."""

    job: str
    endpoint: str
    session: str
    document: str  # the document's file ("" when it was never saved: nowhere to find it again)
    label: str  # the mode as the painter picked it ("Inpaint", "Compare", ...)
    form: dict[str, Any]  # FormValues as a dict (layer names, records, the mode that places it)
    region: list[int]  # x, y, width, height on the canvas
    size: list[int] | None = None  # txt2img working size (the result is fitted to the region)
    mask: str | None = None  # the selection over the region, zlib + base64; kept only where `size` is
    source: str = ""
    source_layers: list[str] = field(default_factory=list)
    anchor: str = ""  # uniqueId of the layer the result goes above
    preview: str = ""  # uniqueId of its preview layer (a document saved mid-job holds it)
    submitted: float = field(default_factory=time.time)

    def mask_bytes(self) -> bytes | None:
        return decode_mask(self.mask)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PendingJob | None:
        """A record as written by this or another version of the plugin, or None if unusable."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        try:
            job = cls(**values)
        except TypeError:  # a required field is missing
            return None
        if not (isinstance(job.job, str) and isinstance(job.region, list) and len(job.region) == 4):
            return None
        return job


def encode_mask(mask: bytes | None) -> str | None:
    return None if mask is None else base64.b64encode(zlib.compress(mask, 6)).decode("ascii")


def decode_mask(text: str | None) -> bytes | None:
    if not text:
        return None
    try:
        return zlib.decompress(base64.b64decode(text))
    except (ValueError, zlib.error):
        return None


def same_file(a: str, b: str) -> bool:
    """Do two paths name the same document file? ("" names none.)"""
    if not a or not b:
        return False
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


class PendingStore:
    """The file of sessions (endpoint -> token) and pending jobs (job id -> PendingJob)."""

    def __init__(self, path: Path | str, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.sessions: dict[str, str] = {}
        self.jobs: dict[str, PendingJob] = {}
        self.load()

    # -- reading ------------------------------------------------------------------------------------
    def load(self) -> None:
        """Read the file; a missing or unreadable one holds nothing (never an error for the painter)."""
        self.sessions, self.jobs = {}, {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return
        sessions = data.get("sessions")
        if isinstance(sessions, dict):
            self.sessions = {str(k): str(v) for k, v in sessions.items() if isinstance(v, str) and v}
        jobs = data.get("jobs")
        oldest = self.clock() - MAX_AGE_S
        for record in jobs.values() if isinstance(jobs, dict) else []:
            job = PendingJob.from_dict(record) if isinstance(record, dict) else None
            if job is not None and float(job.submitted or 0) >= oldest:
                self.jobs[job.job] = job

    def session(self, endpoint: str) -> str | None:
        return self.sessions.get(endpoint)

    def of_session(self, endpoint: str, session: str | None) -> list[PendingJob]:
        """The jobs of one session on one endpoint, oldest first."""
        mine = [j for j in self.jobs.values() if j.endpoint == endpoint and session and j.session == session]
        return sorted(mine, key=lambda j: j.submitted)

    # -- changing (each change is written at once) ---------------------------------------------------
    def set_session(self, endpoint: str, token: str) -> None:
        if self.sessions.get(endpoint) != token:
            self._change(lambda: self.sessions.__setitem__(endpoint, token))

    def put(self, job: PendingJob) -> None:
        self._change(lambda: self.jobs.__setitem__(job.job, job))

    def remove(self, job_id: str | None) -> None:
        if job_id and job_id in self.jobs:
            self._change(lambda: self.jobs.pop(job_id, None))

    def move(self, job_id: str | None, document: str) -> None:
        """The job's document was saved under another name (Save As): the result goes there."""
        job = self.jobs.get(job_id or "")
        if job is None or job.document == document:
            return

        def moved() -> None:
            if job.job in self.jobs:
                self.jobs[job.job].document = document

        self._change(moved)

    def _change(self, change: Callable[[], None]) -> None:
        """Read what is on disk (another Krita window or process may have written), apply, write."""
        self.load()
        change()
        self._write()

    def _write(self) -> None:
        data = {
            "format": FORMAT,
            "sessions": self.sessions,
            "jobs": {job_id: asdict(job) for job_id, job in self.jobs.items()},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".underpaint-", dir=str(self.path.parent))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
            os.chmod(tmp, 0o600)  # the session token lets its holder take the session over
            os.replace(tmp, self.path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
