"""CurveZMQ key files from the plug-in's settings, checked before anything is sent.

A daemon reachable from other machines runs with keys (`underpaint serve --keys DIR`): the plug-in
then needs the daemon's public key (`server.key`) and a key pair of its own (`NAME.key_secret`, whose
public half the daemon lists in `DIR/authorized/`). Both are paths typed in the dialogs or passed by
batch callers; empty means no keys (or $UNDERPAINT_SERVER_KEY / $UNDERPAINT_CLIENT_KEY, which the
protocol client reads itself). Pure Python: the messages are tested outside GIMP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .request import UserError

SERVER_ARG, CLIENT_ARG = "server-key", "client-key"
HOW = "Make them with `underpaint keygen DIR` and start the daemon with `underpaint serve --keys DIR`."


@dataclass(frozen=True)
class KeyFiles:
    """The two key paths of one connection ("" = not set)."""

    server: str = ""
    client: str = ""

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> KeyFiles:
        return cls(_path(values.get(SERVER_ARG)), _path(values.get(CLIENT_ARG)))

    @property
    def used(self) -> bool:
        return bool(self.server or self.client)

    def checked(self) -> KeyFiles:
        """These paths, or a UserError naming the setting that is wrong and what it should hold."""
        if not self.used:
            return self
        if not self.server or not self.client:
            missing = "Server key (the daemon's server.key)" if not self.server else "Client key"
            raise UserError(
                f"CurveZMQ needs both key files, and {missing} is empty: Server key is the daemon's "
                "public key (server.key), Client key this computer's pair (NAME.key_secret). " + HOW
            )
        for label, path, wanted in (
            ("Server key", self.server, "public-key"),
            ("Client key", self.client, "secret-key"),
        ):
            _check_file(label, path, wanted)
        return self


def _path(value: Any) -> str:
    return os.path.expanduser(str(value or "").strip())


def _check_file(label: str, path: str, wanted: str) -> None:
    """The file exists and is a ZeroMQ certificate holding `wanted` (secret-key: a NAME.key_secret)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{label}: the file {path} does not exist. " + HOW)
    try:
        text = file.read_text(errors="replace")[:4096]
    except OSError as exc:
        raise UserError(f"{label}: cannot read {path} ({exc.strerror or exc}).") from exc
    if wanted not in text:
        what = "a key pair (NAME.key_secret, not NAME.key)" if wanted == "secret-key" else "a public key"
        raise UserError(f"{label}: {path} does not hold {what} made by `underpaint keygen`.")


def refused_message(endpoint: str, why: str, keys: KeyFiles) -> str:
    """The daemon's security handshake failed: say which setting to look at."""
    if not keys.used:
        return (
            f"The Underpaint daemon at {endpoint} uses CurveZMQ keys ({why}), and none are set here: "
            "set Server key to that daemon's server.key and Client key to a key pair of yours, "
            "NAME.key_secret, whose NAME.key is in the daemon's keys folder, authorized/. " + HOW
        )
    return (
        f"The Underpaint daemon at {endpoint} refused the connection: {why}. Check the key settings: "
        "Server key must be that daemon's server.key, and the public half of Client key "
        "(NAME.key next to NAME.key_secret) must be in the daemon's keys folder, authorized/ (the "
        "daemon re-reads it on SIGHUP). A daemon without keys takes no keys: leave both empty."
    )


def unanswered_hint(keys: KeyFiles) -> str:
    """What to add to 'not answering' when keys may be the reason (a daemon with keys says nothing to
    a client without them)."""
    if keys.used:
        return ""
    return (
        " If that daemon runs with keys (underpaint serve --keys), set Server key and Client key "
        "(in the dialog, or the server-key and client-key arguments)."
    )
