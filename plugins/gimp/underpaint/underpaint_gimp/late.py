"""Results that arrive after their call ended: Fetch Pending Results, and every call's first look.

For each session that has jobs stored on the image (and that no running call holds), one connection
says `hello` with its token: if the daemon no longer knows the session (it restarted), its jobs are
lost and forgotten, with a message; otherwise each finished job's final event is fetched by id and
its result placed exactly as the call would have placed it. Jobs still queued or running are waited
for by Fetch Pending Results (holding the session, so the daemon does not give them up) and left for
later by the other procedures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, GLib, GObject  # noqa: E402

from . import image_jobs  # noqa: E402
from . import job as jobs  # noqa: E402
from .gimp_io import GimpProgress  # noqa: E402
from .keys import KeyFiles  # noqa: E402
from .modes import mode_by_key  # noqa: E402
from .pending import PendingJob, by_connection, describe  # noqa: E402
from .registration import FLAGS, image_procedure  # noqa: E402
from .request import UserError  # noqa: E402
from .results import place  # noqa: E402
from .steps import StepCount  # noqa: E402

FETCH = "plug-in-underpaint-fetch"
PICKUP_TIMEOUT = 3.0  # s: resuming a session is one `hello`; an unreachable daemon costs this much


@dataclass
class Collected:
    """What one look at an image's pending jobs did."""

    placed: list[str] = field(default_factory=list)  # descriptions of the jobs placed
    failed: list[str] = field(default_factory=list)  # "<job>: why" for jobs given up (forgotten)
    waiting: list[str] = field(default_factory=list)  # still queued or running (kept)
    unreachable: list[str] = field(default_factory=list)  # "<job>: why" for daemons not answering (kept)
    new_images: list[Gimp.Image] = field(default_factory=list)

    @property
    def left(self) -> int:
        return len(self.waiting) + len(self.unreachable)

    def summary(self) -> str:
        """A message for the painter ('' when there is nothing to say)."""
        parts = []
        if self.placed:
            parts.append(
                f"Placed {len(self.placed)} result(s) of earlier jobs: " + "; ".join(self.placed) + "."
            )
        if self.failed:
            parts.append("Gave up on: " + "; ".join(self.failed) + ".")
        if self.waiting:
            parts.append(
                "Still running on the daemon (Filters > Underpaint > Fetch Pending Results waits for "
                "them): " + "; ".join(self.waiting) + "."
            )
        if self.unreachable:
            parts.append("Kept for later: " + "; ".join(self.unreachable))
        return "\n".join(parts)


def _title(job: PendingJob) -> str:
    return describe(job, mode_by_key(job.mode).title)


def collect(image: Gimp.Image, interactive: bool, report: jobs.Progress, wait: bool) -> Collected:
    """Place every finished pending result of `image`; with `wait`, wait for unfinished ones too."""
    done = Collected()
    for connection, group in by_connection(image_jobs.stored(image), image_jobs.live(image)).items():
        endpoint, token, server, client = connection
        try:
            session = jobs.Session(
                endpoint, timeout=PICKUP_TIMEOUT, keys=KeyFiles(server, client), session=token
            )
        except UserError as exc:
            done.unreachable.extend(f"{_title(j)}: {exc}" for j in group)
            continue
        image_jobs.hold(image, token)
        try:
            with session:
                _collect_session(image, interactive, report, wait, session, group, done)
        finally:
            image_jobs.release(image, token)
    return done


def _collect_session(
    image: Gimp.Image,
    interactive: bool,
    report: jobs.Progress,
    wait: bool,
    session: jobs.Session,
    group: list[PendingJob],
    done: Collected,
) -> None:
    if not session.resumed:
        image_jobs.forget(image, {j.job for j in group})
        why = f"lost: the daemon at {session.endpoint} restarted since (it keeps no jobs across restarts)"
        done.failed.extend(f"{_title(j)}: {why}" for j in group)
        return
    known = session.jobs()
    for index, job in enumerate(group):
        entry = known.get(job.job)
        try:
            if entry is None:
                raise UserError("lost: the daemon no longer knows it")
            event = session.fetch(job.job) if entry.get("state") == "done" else None
            if event is None and not wait:
                done.waiting.append(_title(job))
                continue
            waiting = jobs.Waiting(job.job, StepCount(job.asked))
            if event is None:
                report(None, f"Underpaint: waiting for {_title(job)}")
                result = session.wait(waiting, report)
            else:
                result = session.outcome(event, waiting, report)
        except jobs.DaemonLost as exc:
            done.unreachable.extend(f"{_title(j)}: {exc}" for j in group[index:])
            return
        except UserError as exc:
            image_jobs.forget(image, {job.job})
            done.failed.append(f"{_title(job)}: {exc}")
            continue
        try:
            made = place(image, job, result, interactive)
        except UserError as exc:
            done.failed.append(f"{_title(job)}: {exc}")
        else:
            done.placed.append(_title(job))
            if made is not None:
                done.new_images.append(made)
        image_jobs.forget(image, {job.job})


# -- Filters > Underpaint > Fetch Pending Results ------------------------------------------------------


def create_fetch_procedure(plugin: Gimp.PlugIn) -> Gimp.Procedure:
    mask = Gimp.ProcedureSensitivityMask
    blurb = "Place the results of Underpaint jobs that finished after their call ended"
    procedure = image_procedure(
        plugin,
        FETCH,
        run_fetch,
        label="_Fetch Pending Results",
        blurb=blurb,
        help_text=f"{blurb} (the link to the daemon was lost, or GIMP was closed while a job ran: the job "
        "was stored on the image, in its 'underpaint-pending' parasite). Resumes each job's daemon "
        "session, places the finished results as the call would have, and waits for jobs still running. "
        "Jobs the daemon no longer has (it restarted, or the result expired) are reported and forgotten.",
        image_types="*",
        sensitivity=mask.DRAWABLE | mask.DRAWABLES | mask.NO_DRAWABLES,
    )
    procedure.add_int_return_value("placed", "Placed", "Jobs whose results were placed", 0, 1 << 30, 0, FLAGS)
    procedure.add_int_return_value(
        "pending", "Pending", "Jobs still stored on the image", 0, 1 << 30, 0, FLAGS
    )
    return procedure


def run_fetch(
    procedure: Gimp.Procedure,
    run_mode: Gimp.RunMode,
    image: Gimp.Image,
    drawables: list[Gimp.Drawable],
    config: Gimp.ProcedureConfig,
    data: object,
) -> Gimp.ValueArray:
    """Place what finished, wait for what runs; an error status when some job could not be placed
    (the message says which and why; what could be placed is placed all the same)."""
    interactive = run_mode == Gimp.RunMode.INTERACTIVE
    if not image_jobs.stored(image):
        if interactive:
            Gimp.message("Underpaint: no jobs are pending on this image.")
        return _fetched(procedure, 0, 0)
    progress = GimpProgress("Underpaint: fetching pending results")
    try:
        done = collect(image, interactive, progress, wait=True)
    except UserError as exc:
        return _failed(procedure, str(exc))
    finally:
        progress.end()
    pending = len(image_jobs.stored(image))
    if done.failed or pending:
        held = pending - done.left  # jobs of calls running right now: they place their own results
        busy = f"\n{held} job(s) belong to an Underpaint call still running on this image." if held else ""
        return _failed(procedure, f"Underpaint Fetch Pending Results: {done.summary()}{busy}".strip())
    if interactive and done.placed:
        Gimp.message("Underpaint: " + done.summary())
    return _fetched(procedure, len(done.placed), pending)


def _fetched(procedure: Gimp.Procedure, placed: int, pending: int) -> Gimp.ValueArray:
    values = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)
    values.remove(2)
    values.remove(1)
    values.insert(1, GObject.Value(GObject.TYPE_INT, placed))
    values.insert(2, GObject.Value(GObject.TYPE_INT, pending))
    return values


def _failed(procedure: Gimp.Procedure, message: str) -> Gimp.ValueArray:
    error = GLib.Error.new_literal(Gimp.PlugIn.error_quark(), message, 0)
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, error)
