"""The Daemon rows under Advanced: the endpoint with Connect, and the CurveZMQ keys a daemon on a
studio network asks for (PROTOCOL.md 1.2): the daemon's public `server.key` and this painter's key
pair `NAME.key_secret`, both made by `underpaint keygen`. Paths only: the files stay where they are.
Kept in Krita's settings (group "underpaint": endpoint, server_key, client_key); used on Connect.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PyQt5.QtWidgets import QFileDialog, QLabel, QLineEdit, QPushButton, QToolButton

from .connection import DEFAULT_ENDPOINT, Keys
from .widgets import hbox

KEY_FILTER = "ZeroMQ keys (*.key *.key_secret);;All files (*)"


class DaemonSettings:
    """Endpoint, Connect, server key and client key; `on_connect` runs on Connect or Enter."""

    def __init__(
        self, rows: Any, endpoint: str, server_key: str, client_key: str, on_connect: Callable[[], None]
    ) -> None:
        self.endpoint_edit = QLineEdit(endpoint)
        self.endpoint_edit.setToolTip("the daemon's ZeroMQ endpoint (`underpaint serve --endpoint ...`)")
        self.endpoint_edit.setMinimumWidth(40)
        self.endpoint_edit.returnPressed.connect(on_connect)
        self.connect_button = QPushButton("Connect")
        self.connect_button.setToolTip(
            "connect to the endpoint with these keys now (the docker also reconnects by itself; "
            "running jobs go on)"
        )
        self.connect_button.clicked.connect(on_connect)
        self.server_key_edit = self._key_edit(
            server_key,
            "the daemon's public key, server.key from `underpaint keygen` (empty: no keys, "
            "as a daemon on this machine's loopback needs none)",
            on_connect,
        )
        self.client_key_edit = self._key_edit(
            client_key,
            "your key pair, NAME.key_secret from `underpaint keygen --client NAME`; its public half "
            "must be in the daemon's authorized/ folder (empty: no keys)",
            on_connect,
        )
        for label, widget in (
            ("Daemon", hbox(self.endpoint_edit, self.connect_button)),
            ("Server key", hbox(self.server_key_edit, self._browse(self.server_key_edit, "server.key"))),
            ("Client key", hbox(self.client_key_edit, self._browse(self.client_key_edit, "NAME.key_secret"))),
        ):
            tip = QLabel(label)
            tip.setToolTip(widget.layout().itemAt(0).widget().toolTip())
            rows.add(tip, widget)

    @staticmethod
    def _key_edit(text: str, tip: str, on_connect: Callable[[], None]) -> QLineEdit:
        edit = QLineEdit(text)
        edit.setToolTip(tip)
        edit.setPlaceholderText("none")
        edit.setMinimumWidth(40)
        edit.returnPressed.connect(on_connect)
        return edit

    def _browse(self, edit: QLineEdit, what: str) -> QToolButton:
        button = QToolButton()
        button.setText("\u2026")
        button.setToolTip(f"pick the {what} file")

        def pick() -> None:
            start = str(Path(edit.text()).parent) if edit.text() else str(Path.home())
            path, _ = QFileDialog.getOpenFileName(edit, f"Underpaint: {what}", start, KEY_FILTER)
            if path:
                edit.setText(path)

        button.clicked.connect(pick)
        return button

    def endpoint(self) -> str:
        return self.endpoint_edit.text().strip() or DEFAULT_ENDPOINT

    def key_paths(self) -> tuple[str, str]:
        return self.server_key_edit.text().strip(), self.client_key_edit.text().strip()

    def keys(self) -> Keys | None:
        """Both paths, or None when neither is set (one alone is refused by the client, saying why)."""
        server, client = self.key_paths()
        return (server, client) if server or client else None
