"""The prompt boxes' weight keys (Ctrl+Up / Ctrl+Down, the text logic is `weights.py`) and the line
under the prompt that shows the daemon's prompt syntax error and puts the cursor where it is."""

from __future__ import annotations

from typing import Any

from PyQt5.QtCore import QEvent, QObject, Qt
from PyQt5.QtGui import QTextCursor
from PyQt5.QtWidgets import QLabel, QLineEdit, QPlainTextEdit, QWidget

from . import weights

TextBox = QPlainTextEdit | QLineEdit
WEIGHT_HELP = "(phrase:1.3) stresses a phrase, (phrase:0.7) softens it; Ctrl+Up / Ctrl+Down change the weight"


def text_of(box: TextBox) -> str:
    return box.toPlainText() if isinstance(box, QPlainTextEdit) else box.text()


def selection_of(box: TextBox) -> tuple[int, int]:
    """The selection (or the cursor, as an empty range) in Python indices."""
    text = text_of(box)
    if isinstance(box, QPlainTextEdit):
        cursor = box.textCursor()
        start, end = cursor.selectionStart(), cursor.selectionEnd()
    elif box.hasSelectedText():
        start = box.selectionStart()
        end = start + len(box.selectedText())
    else:
        start = end = box.cursorPosition()
    return weights.from_qt(text, start), weights.from_qt(text, end)


def select(box: TextBox, start: int, end: int) -> None:
    """Select text[start:end] (Python indices); start == end puts the cursor there."""
    text = text_of(box)
    qt_start, qt_end = weights.to_qt(text, start), weights.to_qt(text, end)
    if isinstance(box, QPlainTextEdit):
        cursor = box.textCursor()
        cursor.setPosition(qt_start)
        cursor.setPosition(qt_end, QTextCursor.KeepAnchor)
        box.setTextCursor(cursor)
    elif qt_start == qt_end:
        box.setCursorPosition(qt_start)
    else:
        box.setSelection(qt_start, qt_end - qt_start)


def change_weight(box: TextBox, up: bool) -> bool:
    """Apply one weight step to the box's phrase under the cursor, as one step of the box's own
    undo (Ctrl+Z); the phrase stays selected so the next press goes on with it."""
    text = text_of(box)
    start, end = selection_of(box)
    edit = weights.adjust(text, start, end, up)
    if edit is None:
        return False
    select(box, edit.start, edit.end)
    if isinstance(box, QPlainTextEdit):
        box.textCursor().insertText(edit.replacement)  # replaces the selection
    else:
        box.insert(edit.replacement)
    select(box, edit.select_start, edit.select_end)
    return True


def _weight_key(event: Any) -> bool | None:
    """True for Ctrl+Up, False for Ctrl+Down, None for any other key."""
    modifiers = event.modifiers() & ~Qt.KeypadModifier
    if modifiers != Qt.ControlModifier or event.key() not in (Qt.Key_Up, Qt.Key_Down):
        return None
    return event.key() == Qt.Key_Up


class WeightKeys(QObject):
    """Catches Ctrl+Up / Ctrl+Down in the watched prompt boxes, before Krita's shortcuts see them."""

    def watch(self, *boxes: TextBox) -> None:
        for box in boxes:
            box.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if event.type() not in (QEvent.ShortcutOverride, QEvent.KeyPress):
            return False
        up = _weight_key(event)
        if up is None or not isinstance(watched, (QPlainTextEdit, QLineEdit)):
            return False
        if event.type() == QEvent.ShortcutOverride:  # "this key is mine": no Krita action fires
            event.accept()
            return True
        change_weight(watched, up)
        return True


class TextError(QLabel):
    """The daemon's complaint about a prompt's syntax, under the prompt; it goes away as soon as the
    painter edits the box it is about."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("underpaint_text_error")
        self.setWordWrap(True)
        self.setStyleSheet("color: #e57373")
        self.setToolTip("what the daemon could not read in a prompt; the cursor is put where it is")
        self.setVisible(False)
        self.box: TextBox | None = None

    def show_error(self, box: TextBox, message: str, position: int | None) -> None:
        self.clear_error()
        self.box = box
        self.setText(message)
        self.setVisible(True)
        box.textChanged.connect(self.clear_error)
        box.setFocus(Qt.OtherFocusReason)
        if position is not None:
            at = max(0, min(int(position), len(text_of(box))))
            select(box, at, at)

    def clear_error(self, *_: Any) -> None:
        if self.box is not None:
            try:
                self.box.textChanged.disconnect(self.clear_error)
            except TypeError:
                pass
            self.box = None
        self.setText("")
        self.setVisible(False)
