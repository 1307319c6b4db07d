"""Helpers for the scenarios run inside Krita by the test runner plugin (runner/underpaint_scenario).

They drive the real docker the way a painter does: set its widgets, click its buttons, and wait
(by yielding, never blocking Krita's event loop) for what the docker shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from krita import Krita, Selection
from PyQt5.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QAbstractSpinBox,
    QComboBox,
    QLineEdit,
    QPlainTextEdit,
    QWidget,
)

GROUP = "Underpaint"
PREVIEW = "Underpaint preview"


def swap_red_blue(data: bytes) -> bytes:
    out = bytearray(data)
    out[0::4] = data[2::4]
    out[2::4] = data[0::4]
    return bytes(out)


def wait_for_docker(ctx: Any, timeout: float = 30.0) -> Any:
    """The Underpaint docker of the main window, once Krita made it."""
    yield ctx.wait(lambda: ctx.docker() is not None, timeout, "the Underpaint docker to exist")
    docker = ctx.docker()
    docker.show()
    docker.raise_()
    return docker


def connect(ctx: Any, docker: Any, endpoint: str, timeout: float = 30.0) -> Any:
    docker.endpoint_edit.setText(endpoint)
    docker.connect_button.click()
    yield ctx.wait(
        lambda: docker.connection.state.name == "CONNECTED",
        timeout,
        f"the docker to connect to {endpoint} (status: {docker.status_label.full_text()!r})",
    )
    ctx.log(f"connected: {docker.connection.describe()}")


def open_picture(ctx: Any, path: str) -> Any:
    """Open a file the way File > Open does, in a view of the main window."""
    krita = Krita.instance()
    doc = krita.openDocument(path)
    assert doc is not None, f"Krita could not open {path}"
    krita.activeWindow().addView(doc)
    yield ctx.wait(lambda: krita.activeDocument() == doc, 20, f"{path} to become the active document")
    return doc


def new_document(ctx: Any, path: str, name: str = "unsaved") -> Any:
    """A document that was never saved (no file), holding the picture at `path`, shown in a view."""
    krita = Krita.instance()
    source = krita.openDocument(path)
    assert source is not None, f"Krita could not open {path}"
    width, height = source.width(), source.height()
    pixels = bytes(source.pixelData(0, 0, width, height))
    source.close()
    doc = krita.createDocument(width, height, name, "RGBA", "U8", "", 72.0)
    background = [n for n in doc.rootNode().childNodes() if n.type() == "paintlayer"][0]
    background.setPixelData(pixels, 0, 0, width, height)
    doc.refreshProjection()
    krita.activeWindow().addView(doc)
    yield ctx.wait(lambda: krita.activeDocument() == doc, 20, "the new document to become the active one")
    assert not doc.fileName(), doc.fileName()
    return doc


def start_job(ctx: Any, docker: Any, mode: str, **fields: Any) -> Any:
    """Press Generate and wait until the job runs (its first step and preview layer); returns the job."""
    configure(docker, mode, **fields)
    yield ctx.wait(
        lambda: docker.generate_button.isEnabled(),
        30,
        f"Generate to be enabled (it says {docker.generate_button.toolTip()!r})",
    )
    docker.generate_button.click()
    assert docker.is_busy(), f"the job did not start: {docker.message_label.full_text()}"
    job = docker.job
    yield ctx.wait(
        lambda: job.step >= 1 and bool(job.context.preview and job.context.preview.node),
        90,
        f"the {mode} job to run (docker: {docker.message_label.full_text()!r})",
    )
    ctx.log(f"{mode}: running {job.job_id} (step {job.step} of {job.total})")
    return job


def add_paint_layer(doc: Any, name: str, bgra: bytes, above: Any, visible: bool = True) -> Any:
    node = doc.createNode(name, "paintlayer")
    above.parentNode().addChildNode(node, above)
    node.setPixelData(bgra, 0, 0, doc.width(), doc.height())
    node.setVisible(visible)
    doc.refreshProjection()
    return node


def node_pixels(node: Any, doc: Any) -> bytes:
    """A layer's pixels over the whole canvas: compared before and after a job (never modified)."""
    return bytes(node.pixelData(0, 0, doc.width(), doc.height()))


def select_mask(doc: Any, mask: bytes) -> None:
    """Any shape, soft edges: a full-canvas 8-bit selection."""
    selection = Selection()
    selection.setPixelData(mask, 0, 0, doc.width(), doc.height())
    doc.setSelection(selection)


def select_mask_file(ctx: Any, doc: Any, path: str) -> Any:
    """The selection from an 8-bit mask file of the canvas's size, once Krita has taken it."""
    select_mask(doc, Path(path).read_bytes())
    yield ctx.wait(lambda: doc.selection() is not None, 10, "the selection to be set")


def set_combo(combo: Any, data: Any) -> None:
    index = combo.findData(data)
    assert index >= 0, f"{data!r} is not among {[combo.itemData(i) for i in range(combo.count())]}"
    combo.setCurrentIndex(index)


def _select_layer(combo: Any, unique_id: str) -> None:
    """A LayerCombo: the layer with this uniqueId, or its placeholder entry for ""."""
    if unique_id:
        assert combo.select_layer(unique_id), f"layer {unique_id} not listed"
    else:
        set_combo(combo, "")


def pick_model(docker: Any, name: str) -> None:
    """Pick a model the way a painter does (the combo's `activated` signal saves and applies it)."""
    combo = docker.form.model_combo
    set_combo(combo, name)
    combo.activated.emit(combo.currentIndex())


def configure(docker: Any, mode: str, **fields: Any) -> None:
    """Fill the docker's form like a painter would (only the fields given; seed None = random)."""
    form = docker.form
    if "model" in fields:
        pick_model(docker, fields.pop("model"))
    set_combo(form.mode_combo, mode)
    widgets = {
        "prompt": lambda v: form.prompt_edit.setPlainText(v),
        "negative": lambda v: form.negative_edit.setText(v),
        "instruction": lambda v: form.instruction_edit.setText(v),
        "strength": lambda v: form.strength_spin.setValue(v),
        "steps": lambda v: form.steps_spin.setValue(v),
        "guidance": lambda v: form.guidance_spin.setValue(v),
        "image_guidance": lambda v: form.image_guidance_spin.setValue(v),
        "variations": lambda v: form.variations_spin.setValue(v),
        "resolution": lambda v: form.resolution_spin.setValue(v),
        "padding": lambda v: form.padding_spin.setValue(v),
        "source": lambda v: set_combo(form.source_combo, v),
        "factor": lambda v: set_combo(form.factor_combo, v),
        "depth_layer": lambda v: _select_layer(form.depth_combo, v),
        "compare_mode": lambda v: set_combo(form.compare_panel.base_combo, v),
        "compare_models": lambda v: form.compare_panel.tick(v),
    }
    for key, value in fields.items():
        if key == "seed":
            form.random_seed_check.setChecked(value is None)
            if value is not None:
                form.seed_edit.setText(str(value))
        elif key == "units":
            for unit_widget, unit in zip(
                form.units, value + [None] * (len(form.units) - len(value)), strict=True
            ):
                unit_widget.setChecked(unit is not None)
                if unit is None:
                    continue
                assert unit_widget.layer_combo.select_layer(unit["layer"]), (
                    f"layer {unit['layer']} not listed"
                )
                set_combo(unit_widget.preprocessor_combo, unit["preprocessor"])
                set_combo(unit_widget.model_combo, unit["model"])
                unit_widget.weight_spin.setValue(unit.get("weight", 1.0))
                unit_widget.invert_check.setChecked(unit.get("invert", False))
        else:
            widgets[key](value)


def generate(ctx: Any, docker: Any, mode: str, timeout: float = 120.0, **fields: Any) -> Any:
    """Press Generate and wait for the job to end; returns the docker's history entry for it."""
    configure(docker, mode, **fields)
    before = len(docker.history)
    yield ctx.wait(
        lambda: docker.generate_button.isEnabled(),
        30,
        f"the Generate button to be enabled (it says {docker.generate_button.toolTip()!r})",
    )

    docker.generate_button.click()
    if not docker.is_busy():
        raise AssertionError(f"{mode}: Generate did not start a job: {docker.message_label.full_text()!r}")
    ctx.log(f"{mode}: submitted ({docker.message_label.full_text()})")
    yield ctx.wait(
        lambda: len(docker.history) > before,
        timeout,
        f"the {mode} job to end (docker says {docker.message_label.full_text()!r})",
    )
    entry = docker.history[-1]
    ctx.log(f"{mode}: {entry['state']} in {entry['seconds']} s: {docker.message_label.full_text()}")
    return entry


def group_layers(doc: Any) -> list[Any]:
    for node in doc.rootNode().childNodes():
        if node.type() == "grouplayer" and node.name() == GROUP:
            return list(node.childNodes())
    return []


def all_names(doc: Any) -> list[str]:
    names: list[str] = []
    stack = list(doc.rootNode().childNodes())
    while stack:
        node = stack.pop()
        names.append(node.name())
        stack.extend(node.childNodes())
    return names


def preview_layers(doc: Any) -> list[str]:
    return [name for name in all_names(doc) if name == PREVIEW]


CONTROLS = (QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit, QPlainTextEdit, QAbstractItemView)


def fully_visible(widget: Any) -> bool:
    """Shown and not clipped by a scroll area or the docker's edge (reachable without scrolling)."""
    return widget.isVisible() and widget.visibleRegion().boundingRect().size() == widget.size()


def untipped(docker: Any) -> list[str]:
    """Visible controls of the docker without a tooltip (a spin box's inner line edit is its own)."""
    out = []
    for widget in docker.widget().findChildren(QWidget):
        if not isinstance(widget, CONTROLS) or isinstance(widget.parent(), QAbstractSpinBox):
            continue
        if widget.isVisible() and not widget.toolTip():
            out.append(f"{type(widget).__name__} {widget.objectName() or widget.property('text') or ''}")
    return out


def layout_report(ctx: Any, docker: Any, tag: str) -> dict[str, Any]:
    """What the painter sees in this mode at the docker's current size; a screenshot goes to screens/."""
    form = docker.form
    mode = form.mode()
    text = form.instruction_edit if mode.key == "instruct" else form.prompt_edit
    folder = ctx.out / "screens"
    folder.mkdir(exist_ok=True)
    docker.grab().save(str(folder / f"{tag}.png"))
    form.body.grab().save(str(folder / f"{tag}-all.png"))  # the whole scrolling part
    return {
        "hscroll": docker.scroll.horizontalScrollBar().maximum(),
        "body_width": form.body.minimumSizeHint().width(),
        "viewport_width": docker.scroll.viewport().width(),
        "text_shown": fully_visible(text) if text.isVisibleTo(docker) else None,
        "generate_shown": fully_visible(docker.generate_button),
        "mode_shown": fully_visible(form.mode_combo) and fully_visible(form.model_combo),
        "docker": [docker.width(), docker.height()],
        "untipped": untipped(docker),
    }
