"""Jobs that go on without their document: the record kept for them (pending.py), the job context
rebuilt from a record after a Krita restart, and the document found again (by its file) and bound
to the context when it is open, so the result is placed exactly as if the job had just finished.

The layer the result goes above is found by its uniqueId (kept in a .kra, new in a reopened PNG: then
the active layer, as for a new job). A preview layer saved with the document mid-job is found the
same way and becomes the first result layer, as it does when the job ends while it is shown.
"""

from __future__ import annotations

from typing import Any

from .document import Capture, find_node
from .jobs import Job
from .layers import Preview, alive, target_for
from .modes import MODES_BY_KEY, PREVIEW_NAME, form_values
from .pending import PendingJob, encode_mask, same_file
from .placing import JobContext
from .progress import Progress
from .protocol.regions import Rect


def document_path(doc: Any) -> str:
    """The document's file, "" when it has none (never saved) or is gone."""
    try:
        return str(doc.fileName() or "") if doc is not None else ""
    except RuntimeError:
        return ""


def op_of(form: dict[str, Any]) -> str:
    values = form_values(form)
    return "compare" if values.mode == "compare" else MODES_BY_KEY[values.mode].op


def record_of(job: Job, endpoint: str, session: str) -> PendingJob:
    """What is kept of a running job so its result can be placed after a restart."""
    from dataclasses import asdict

    context: JobContext = job.context
    capture = context.capture
    return PendingJob(
        job=str(job.job_id),
        endpoint=endpoint,
        session=session,
        document=context.path,
        label=context.label,
        form=asdict(context.form),
        region=capture.region.as_list(),
        size=list(capture.size) if capture.size else None,
        mask=encode_mask(capture.mask) if capture.size else None,  # only fitted results need it again
        source=capture.source,
        source_layers=list(capture.source_layers),
        anchor=context.anchor_id,
        preview=context.preview_id,
    )


def context_of(record: PendingJob) -> JobContext:
    """A job context from a kept record: no document yet (bound when it is open), no progress shown."""
    form = form_values(record.form)
    x, y, width, height = (int(v) for v in record.region)
    size = record.size
    capture = Capture(
        region=Rect(x, y, width, height),
        mask=record.mask_bytes(),
        size=(int(size[0]), int(size[1])) if size else None,
        source=record.source,
        source_layers=list(record.source_layers),
    )
    return JobContext(
        doc=None,
        form=form,
        mode=form.run_mode(),
        label=record.label,
        capture=capture,
        anchor=None,
        progress=Progress(None),
        path=record.document,
        anchor_id=record.anchor,
        preview_id=record.preview,
        parked="Krita was closed",
    )


def find_document(krita: Any, path: str) -> Any | None:
    """The document saved as `path`, once it is shown in a view (a result goes in where the painter
    sees it, and Krita keeps the active layer of shown documents only)."""
    for window in krita.windows():
        for view in window.views():
            doc = view.document()
            if doc is not None and same_file(document_path(doc), path):
                return doc
    return None


def bind(context: JobContext, doc: Any) -> None:
    """The job's document is open (again): find where its result goes, and its saved preview layer."""
    context.doc, context.target, context.preview = doc, None, None
    preview = find_node(doc, context.preview_id) if context.preview_id else None
    if preview is not None and alive(preview) and preview.name() == PREVIEW_NAME:
        active = doc.activeNode()
        context.target = target_for(doc, preview)  # the "Underpaint" group that holds it
        context.target.restore_active = active if active is not None and not active == preview else None
        context.preview = Preview(context.target, context.capture.region, context.capture.mask)
        context.preview.node = preview
        return
    anchor = find_node(doc, context.anchor_id) if context.anchor_id else None
    context.anchor = anchor if anchor is not None else doc.activeNode()
