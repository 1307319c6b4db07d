"""Test-only Krita plugin: runs one scripted scenario against the real Underpaint docker, then quits.

Installed by tests/test_krita_plugin.py beside the real plugin. The scenario (UNDERPAINT_SCENARIO, a
.py file with `scenario(ctx)` returning a generator) yields waits instead of blocking, so Krita's event
loop (and the docker's QTimer) keeps running between steps. The outcome goes to result.json in
UNDERPAINT_SCENARIO_OUT: Krita's exit code says nothing. Unexpected dialogs are logged and dismissed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from krita import Extension, Krita
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QApplication, QDialog, QMessageBox


class Wait:
    """Yielded by a scenario: resume when `predicate()` is true, fail after `timeout` s."""

    def __init__(self, predicate: Any, timeout: float, what: str) -> None:
        self.predicate, self.what = predicate, what
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout


class Context:
    """What a scenario gets: config, output folder, logging, waits, and the docker."""

    def __init__(self, out: Path, config: dict[str, Any]) -> None:
        self.out, self.config = out, config
        self.results: dict[str, Any] = {}
        self.keep_documents_on_quit = False  # True: quit with documents open (tests cancel-on-quit)
        self._log = (out / "scenario.log").open("a", encoding="utf-8")
        self._t0 = time.monotonic()

    def log(self, text: str) -> None:
        self._log.write(f"{time.monotonic() - self._t0:8.2f}  {text}\n")
        self._log.flush()

    def wait(self, predicate: Any, timeout: float, what: str) -> Wait:
        return Wait(predicate, timeout, what)

    def sleep(self, seconds: float) -> Wait:
        end = time.monotonic() + seconds
        return Wait(lambda: time.monotonic() >= end, seconds + 5, f"sleep {seconds}")

    def docker(self) -> Any:
        for dock in Krita.instance().dockers():
            if dock.objectName() == "underpaint_docker":
                return dock
        return None


class Runner:
    def __init__(self) -> None:
        self.out = Path(os.environ["UNDERPAINT_SCENARIO_OUT"])
        self.out.mkdir(parents=True, exist_ok=True)
        config_path = self.out / "config.json"
        self.ctx = Context(self.out, json.loads(config_path.read_text()) if config_path.exists() else {})
        self.limit = float(os.environ.get("UNDERPAINT_SCENARIO_TIMEOUT", "150"))
        self.started = time.monotonic()
        self.generator: Any = None
        self.waiting: Wait | None = None
        self.done = False
        self.timer = QTimer()
        self.timer.timeout.connect(self.step)
        self.dialogs = QTimer()
        self.dialogs.timeout.connect(self.dismiss_dialogs)

    def start(self) -> None:
        self.ctx.log("runner: starting")
        self.dialogs.start(300)
        try:
            script = Path(os.environ["UNDERPAINT_SCENARIO"])
            sys.path.insert(0, str(script.parent))
            spec = importlib.util.spec_from_file_location("underpaint_scenario_script", script)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self.generator = module.scenario(self.ctx)
        except Exception:
            self.finish(False, traceback.format_exc())
            return
        self.timer.start(50)

    def step(self) -> None:
        if self.done:
            return
        send: Any = None
        throw: BaseException | None = None
        if time.monotonic() - self.started > self.limit:
            throw = TimeoutError(f"the whole scenario ran past {self.limit:g} s")
        elif self.waiting is not None:
            try:
                ready = bool(self.waiting.predicate())
            except Exception as exc:
                ready, throw = False, exc
            if throw is None and not ready:
                if time.monotonic() < self.waiting.deadline:
                    return
                throw = TimeoutError(
                    f"timed out after {self.waiting.timeout:g} s waiting for {self.waiting.what}"
                )
        self.waiting = None
        try:
            yielded = self.generator.throw(throw) if throw is not None else self.generator.send(send)
        except StopIteration:
            self.finish(True, "")
            return
        except Exception:
            self.finish(False, traceback.format_exc())
            return
        if isinstance(yielded, Wait):
            self.waiting = yielded
        elif isinstance(yielded, (int, float)):
            self.waiting = self.ctx.sleep(float(yielded))

    def dismiss_dialogs(self) -> None:
        for widget in QApplication.topLevelWidgets():
            if not widget.isVisible() or not isinstance(widget, QDialog):
                continue
            text = widget.text() if isinstance(widget, QMessageBox) else ""
            self.ctx.log(
                f"runner: dismissing dialog {type(widget).__name__} {widget.windowTitle()!r}: {text!r}"
            )
            self.ctx.results.setdefault("dialogs", []).append(f"{widget.windowTitle()}: {text}")
            if isinstance(widget, QMessageBox):
                for button in widget.buttons():
                    if (
                        widget.buttonRole(button) == QMessageBox.DestructiveRole
                    ):  # "Discard" / "Close without saving"
                        button.click()
                        break
                else:
                    widget.reject()
            else:
                widget.reject()

    def finish(self, ok: bool, error: str) -> None:
        self.done = True
        self.timer.stop()
        self.ctx.log(f"runner: finished ok={ok}" + (f"\n{error}" if error else ""))
        if not ok:
            try:
                QApplication.primaryScreen().grabWindow(0).save(str(self.out / "failure.png"))
            except Exception:
                pass
        result = {
            "ok": ok,
            "error": error,
            "seconds": round(time.monotonic() - self.started, 2),
            "results": self.ctx.results,
        }
        (self.out / "result.json").write_text(json.dumps(result, indent=1, default=str))
        QTimer.singleShot(100, self.quit)

    def quit(self) -> None:
        for doc in Krita.instance().documents():
            try:
                doc.waitForDone()
                doc.setModified(False)
                if not self.ctx.keep_documents_on_quit:
                    doc.close()
            except Exception:
                self.ctx.log("runner: " + traceback.format_exc())
        self.ctx.log("runner: quitting Krita")
        Krita.instance().action("file_quit").trigger()


class ScenarioExtension(Extension):
    def __init__(self, parent: Any) -> None:
        super().__init__(parent)
        self.runner: Runner | None = None

    def setup(self) -> None:
        pass

    def createActions(self, window: Any) -> None:  # noqa: N802 (Krita's name)
        if self.runner is None and os.environ.get("UNDERPAINT_SCENARIO"):
            self.runner = Runner()
            QTimer.singleShot(500, self.runner.start)


Krita.instance().addExtension(ScenarioExtension(Krita.instance()))
