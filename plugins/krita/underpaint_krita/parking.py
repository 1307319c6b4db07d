"""Jobs that go on while their document is not open: closed mid-job, or submitted before Krita was
restarted. Their records live in pending.py's file from `accepted` until the result is placed (or the
job ends without one); a result is placed as soon as its document is open, exactly as if the job had
finished while it was shown. The docker stays free for new jobs meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .connection import Connection
from .jobs import Job, JobState
from .pending import PendingStore
from .placing import JobContext, document_name, place_result
from .resume import bind, context_of, find_document, op_of, record_of


def file_name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1] if path else "an unsaved document"


class Parking:
    """The parked jobs of one docker, and the store that keeps them across restarts."""

    def __init__(self, krita: Any, store: PendingStore, welcome: Callable[[], dict[str, Any] | None]) -> None:
        self.krita = krita
        self.store = store
        self.welcome = welcome
        self.jobs: list[Job] = []

    # -- keeping records -------------------------------------------------------------------------
    def remember(self, job: Job, connection: Connection) -> None:
        """A job with an id and a document file: keep what placing its result needs. (Not Reword: its
        record would need the source layer's shape; it ends with Krita like a never-saved one.)"""
        context: JobContext = job.context
        if job.job_id and context.path and not job.finished and not context.reword_of:
            self.store.put(record_of(job, connection.endpoint, connection.session or ""))

    def forget(self, job: Job) -> None:
        self.store.remove(job.job_id)
        if job in self.jobs:
            self.jobs.remove(job)

    def adopt(self, connection: Connection) -> list[Job]:
        """The jobs kept for this endpoint's session before Krita was restarted, handed to the
        connection (it resumes the session and fetches what finished meanwhile)."""
        known = {job.job_id for job in self.jobs}
        adopted = []
        for record in self.store.of_session(connection.endpoint, connection.session):
            if record.job in known:
                continue
            job = connection.adopt(record.job, op_of(record.form), context_of(record))
            self.jobs.append(job)
            adopted.append(job)
        return adopted

    # -- parking and placing ---------------------------------------------------------------------
    def park(self, job: Job, why: str) -> None:
        """Its document was closed: it goes on, and its result waits for the document."""
        context: JobContext = job.context
        context.doc, context.target, context.preview, context.parked = None, None, None, why
        if job not in self.jobs:
            self.jobs.append(job)

    def waiting(self) -> list[Job]:
        """Finished jobs whose result waits for its document to be opened."""
        return [job for job in self.jobs if job.state is JobState.DONE and job.result is not None]

    def try_place(self, job: Job) -> str | None:
        """Place a parked job's result if its document is open (Upscale: always, in a new document);
        returns the message, or None when it must wait."""
        context: JobContext = job.context
        if context.mode.op != "upscale":
            doc = find_document(self.krita, context.path)
            if doc is None:
                return None
            bind(context, doc)
        text = place_result(self.krita, context, job.result or {}, self.welcome() or {})
        self.forget(job)
        return f"{text} The job went on while {context.parked}."

    def place_ready(self) -> list[str]:
        """Results whose document has been opened since they arrived."""
        return [text for job in self.waiting() if (text := self.try_place(job)) is not None]

    def describe(self, job: Job) -> str:
        context: JobContext = job.context
        where = document_name(context.doc) if context.doc is not None else file_name(context.path)
        return f"{context.label} for {where}"
