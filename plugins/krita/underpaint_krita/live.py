"""Live mode: while it is on, every change of the canvas inside the selection (or the whole canvas)
sends a job, and the newest result shows in one "Underpaint live" layer at the top of the stack.

Krita's Python API has no "pixels changed" signal, so a timer polls: each tick hashes what the next
job would read (every top-level layer's pixels in the region but the live layer's own, the selection,
the form). A job is sent once that hash changed and then stayed the same for one tick (the painter's
debounce, `live_delay`). All live jobs of a document share one lane (PROTOCOL.md 9.6), so the daemon
drops or stops the older job itself; they use a seed fixed when Live is turned on, so the picture only
moves when the canvas does. The live layer is hidden while the input is read: it never feeds back.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from krita import Krita
from PyQt5.QtCore import QTimer

from . import presets
from .document import Capture, capture, document_problem, find_node, read_selection, selection_bounds
from .jobs import JobState, loading_text
from .layers import Target, alive, layers_of, patch_pixels, save_records, target_for
from .live_fingerprint import Fingerprint
from .modes import FormValues, build_params, validate
from .placing import record_extra
from .protocol.live import live_setting
from .protocol.regions import Rect, job_region, placement
from .records import generation_record, layer_name

LIVE_NAME = "Underpaint live"
MAX_SEED = 2**32 - 1


@dataclass
class LiveContext:
    """One live job: what it read and sent, to place (or keep) its result."""

    doc: Any
    form: FormValues
    capture: Capture
    params: dict[str, Any]
    seq: int  # order of sending: only a result newer than the one shown is shown
    anchor: Any
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class Shown:
    """The live result on the live layer now (what Keep copies)."""

    context: LiveContext
    result: dict[str, Any]
    image: dict[str, Any]
    rect: Rect
    pixels: bytes  # B,G,R,A over `rect`


class LiveSession:
    """Live mode for one document; `docker` gives the connection, the form and the message line."""

    def __init__(self, docker: Any, doc: Any) -> None:
        self.docker, self.doc = docker, doc
        form = docker.form.values()
        self.seed = form.seed if form.seed is not None else random.randint(0, MAX_SEED)
        self.lane = f"live:{doc.rootNode().uniqueId().toString()}"
        self.node: Any = None  # the live layer, made with the first result
        self.shown: Shown | None = None
        self.jobs: list[Any] = []
        self.seq = 0
        self.placed_seq = 0
        self.counts = dict.fromkeys(
            ("sent", "superseded", "placed", "failed", "stale", "loading", "paused"), 0
        )
        self.seen: bytes | None = None  # the input's hash at the last tick
        self.sent: bytes | None = None  # the input's hash of the last job sent
        self.error = ""
        self.loading_said = ""  # the last "loading ..." line shown
        self.placed_at = 0.0  # monotonic time the live layer last changed
        self.job_seconds = 0.0  # submit to result of the job shown
        self.poll_ms: list[float] = []  # what each tick's fingerprint cost (the price of polling)
        self.watch = Fingerprint()
        self.painter_layer: Any = doc.activeNode()  # given back when Krita activates the live layer
        self.last_sent: dict[str, Any] = {}  # the newest job's params and input (for scripts and tests)
        self.timer = QTimer(docker)
        self.timer.timeout.connect(self.tick)
        self.timer.start(max(50, int(form.live_delay)))

    # -- the input -----------------------------------------------------------------------------------
    def live_form(self) -> FormValues:
        """The form as a live job uses it: Refine (SDEdit) unless it is ControlNet, with the fixed seed."""
        form = self.docker.form.values()
        if form.mode != "controlnet":
            form.mode = "refine"
        form.seed, form.variations, form.rank = self.seed, 1, False
        if form.source == "layer" and self._is_live(self.doc.activeNode()):
            form.source = "visible"
        return form

    def _is_live(self, node: Any) -> bool:
        return node is not None and self.node is not None and alive(self.node) and node == self.node

    def fingerprint(self, form: FormValues) -> bytes:
        """A hash of everything the next job would read; the live layer's pixels are not part of it."""
        doc = self.doc
        canvas = Rect(0, 0, int(doc.width()), int(doc.height()))
        selected = read_selection(doc)  # read once: the region and the hash both come from it
        region = job_region(selection_bounds(doc, selected), canvas, form.padding)
        nodes = [n for n in layers_of(doc.rootNode()) if not self._is_live(n)]
        extra = (
            [find_node(doc, unit.layer_id) for unit in form.active_units()]
            if form.mode == "controlnet"
            else []
        )
        if form.source == "layer":  # the job reads that layer itself, even inside a hidden group
            extra.append(doc.activeNode())
        nodes += [
            n for n in extra if n is not None and not self._is_live(n) and not any(n == m for m in nodes)
        ]
        return self.watch(doc, form, region, nodes, selected)

    # -- the timer -------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Poll: send a job for a change once it has settled for one tick."""
        try:
            if not self.document_open():
                self.docker.live_ended(self, "its document was closed")
                return
            connection = self.docker.connection
            if connection.state.name != "CONNECTED" or document_problem(self.doc):
                return
            if self.docker.is_busy():  # a Generate job's preview is not the painter's change: its result is
                self.counts["paused"] += 1
                return
            self._give_back_active()
            form = self.live_form()
            started = time.perf_counter()
            now = self.fingerprint(form)
            self.poll_ms.append((time.perf_counter() - started) * 1000)
            # Polling takes at most a fifth of Krita's time, however big the canvas.
            self.timer.setInterval(max(50, int(form.live_delay), int(4 * self.poll_ms[-1])))
            settled, self.seen = now == self.seen, now
            if settled and now != self.sent:
                self.send(form, now)
        except Exception as exc:  # a Krita API surprise must not escape into the event loop every tick
            self.error = f"Live: {type(exc).__name__}: {exc}"
            self.docker.live_message(self.error, error=True)

    def _give_back_active(self) -> None:
        """Krita activates a layer it adds, sometimes well after the call: the painter's comes back."""
        active = self.doc.activeNode()
        if self._is_live(active) and alive(self.painter_layer):
            self.doc.setActiveNode(self.painter_layer)
        elif active is not None and not self._is_live(active):
            self.painter_layer = active

    def document_open(self) -> bool:
        try:
            return any(doc == self.doc for doc in Krita.instance().documents())
        except RuntimeError:
            return False

    def send(self, form: FormValues, fingerprint: bytes) -> None:
        """Read the input (the live layer hidden, so it never feeds back) and submit in the lane."""
        self.sent = fingerprint  # sent or refused: not again until the input changes
        docker = self.docker
        welcome, preset, mode = docker.form.welcome, docker.form.preset(), form.run_mode()
        spec = presets.op_spec(welcome, preset, mode.op)
        problem = presets.mode_problem(welcome, preset, mode) or validate(form)
        if problem:
            docker.live_message(f"Live: {problem}", error=True)
            return
        hidden = self.node is not None and alive(self.node) and self.node.visible()
        if hidden:
            self.node.setVisible(False)
            self.doc.refreshProjection()
        try:
            captured = capture(self.doc, form, int(preset.get("resolution") or 512))
        finally:
            if hidden:
                self.node.setVisible(True)
                self.doc.refreshProjection()
        live = live_setting(preset) if form.speed in ("auto", "live") else None
        params = build_params(form, size=captured.size, spec=spec, live=live)
        anchor = self.doc.activeNode()
        if self._is_live(anchor):
            anchor = None
        self.seq += 1
        context = LiveContext(self.doc, form, captured, params, self.seq, anchor)
        job = docker.connection.submit(
            mode.op,
            params,
            captured.images,
            model=form.model or None,
            preview=False,
            context=context,
            lane=self.lane,
        )
        self.jobs = [j for j in self.jobs if not j.finished] + [job]
        self.counts["sent"] += 1
        self.last_sent = {
            "params": params,
            "image": captured.images.get("image"),
            "images": list(captured.images),
            "seq": self.seq,
        }

    # -- job events ------------------------------------------------------------------------------------
    def event(self, job: Any, kind: str, message: dict[str, Any]) -> None:
        context: LiveContext = job.context
        if kind == "result":
            if job.state is not JobState.DONE:  # cancelled as its result came: nothing to show
                return
            if context.seq <= self.placed_seq:  # a superseded job that finished its step anyway
                self.counts["stale"] += 1
                return
            self.show(context, job.result or {})
            self.placed_seq = context.seq
            self.placed_at = time.monotonic()
            self.job_seconds = round(self.placed_at - context.submitted, 3)
            self.counts["placed"] += 1
            self.error = ""
            count = self.counts["placed"]
            self.docker.live_message(f"Live: result {count} in {self.job_seconds:.1f} s (seed {self.seed}).")
        elif kind == "loading" and job.loading is not None:
            self.counts["loading"] += 1
            self.loading_said = f"Live: {loading_text(job.loading)}"
            self.docker.live_message(self.loading_said)
        elif kind == "cancelled":
            if job.reason == "superseded":
                self.counts["superseded"] += 1  # a newer change replaced it: not an error
        elif kind == "error":
            self.counts["failed"] += 1
            self.error = f"Live job failed: {job.message}"
            self.docker.live_message(self.error, error=True)

    def show(self, context: LiveContext, result: dict[str, Any]) -> None:
        """The result's pixels replace the live layer's (made once, at the top of the stack)."""
        images = result.get("images") or []
        if not images or not self.document_open():
            return
        image = images[0]
        region = context.capture.region
        pixels = patch_pixels(image, context.capture.size, region, context.capture.mask)
        if context.capture.size is not None:
            rect = region
        else:
            x, y = placement(region, image.get("x", 0), image.get("y", 0))
            rect = Rect(x, y, int(image["width"]), int(image["height"]))
        doc = self.doc
        if self.node is None or not alive(self.node):
            self.node = self._make_layer()
        elif self.shown is not None and self.shown.rect != rect:  # pixels outside the new rect go
            old = self.shown.rect
            self.node.setPixelData(bytes(old.width * old.height * 4), old.x, old.y, old.width, old.height)
        self.node.setPixelData(pixels, rect.x, rect.y, rect.width, rect.height)
        doc.refreshProjection()
        self.shown = Shown(context, result, image, rect, pixels)
        self.docker.live_changed()

    def _make_layer(self) -> Any:
        """The live layer at the top of the stack: one "Add Layer" undo step, once per Live session."""
        doc = self.doc
        active = doc.activeNode()
        root = doc.rootNode()
        node = doc.createNode(LIVE_NAME, "paintlayer")
        node.setLocked(True)
        top = layers_of(root)
        root.addChildNode(node, top[-1] if top else None)
        if active is not None:  # Krita activates the new layer: give the painter theirs back
            restore = Target(doc, node, False, active, added=[node])
            restore.restore()
        return node

    # -- Keep, off -------------------------------------------------------------------------------------
    def keep(self) -> str:
        """Copy the live result into the Underpaint group as a normal result layer, with its record."""
        shown = self.shown
        if shown is None or not self.document_open():
            return "Live: no live result to keep yet."
        context = shown.context
        doc = self.doc
        anchor = context.anchor if alive(context.anchor) and not self._is_live(context.anchor) else None
        if anchor is None:
            below = [n for n in layers_of(doc.rootNode()) if not self._is_live(n)]
            anchor = below[-1] if below else None
        target = target_for(doc, anchor)
        seed = int(shown.image.get("seed", shown.result.get("seed", self.seed)))
        preset = str(shown.result.get("model") or context.form.model)
        name = layer_name(context.form, seed, preset)
        rect = shown.rect

        def fill(node: Any, _: int) -> None:
            node.setPixelData(shown.pixels, rect.x, rect.y, rect.width, rect.height)

        [node] = target.add_layers([name], fill)
        welcome = self.docker.connection.welcome or {}
        extra = {**record_extra(context.capture, shown.result, welcome), "live": True}
        record = generation_record(context.form, shown.result, shown.image, (rect.x, rect.y), extra)
        save_records(doc, {node.uniqueId().toString(): {**record, "name": node.name()}})
        doc.refreshProjection()
        return f"Kept the live result as '{name}' in the '{target.group.name()}' group."

    def stop(self, remove: bool = True) -> None:
        """Stop polling, cancel live jobs still running, and take the live layer (only it) out."""
        self.timer.stop()
        self.timer.deleteLater()
        for job in self.jobs:
            if not job.finished:
                try:
                    self.docker.connection.cancel(job)
                except Exception:  # the link is gone: the daemon drops the session's jobs itself
                    pass
        self.jobs = []
        if remove and self.node is not None and self.document_open() and alive(self.node):
            self.node.remove()
            self.doc.refreshProjection()
        self.node, self.shown = None, None

    def stats(self) -> dict[str, Any]:
        polls = sorted(self.poll_ms) or [0.0]
        return {
            **self.counts,
            "seed": self.seed,
            "lane": self.lane,
            "placed_seq": self.placed_seq,
            "job_seconds": self.job_seconds,
            "polls": len(self.poll_ms),
            "poll_ms_median": round(polls[len(polls) // 2], 2),
            "poll_ms_max": round(polls[-1], 2),
            "reads_max": max(self.watch.reads[1:], default=0),  # layers read per tick after the first
        }

    def layer(self) -> Any:
        return self.node if self.node is not None and alive(self.node) else None
