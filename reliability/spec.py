"""What an outside client knows: the error codes PROTOCOL.md documents, and the daemon's welcome.

The harness judges the daemon only by these two sources, as a client written from the spec would.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

# The reply type each request expects besides `error` (PROTOCOL.md sections 5 and 6), with `fetch`
# (issue 9's sessions: `fetched` with the job's `state` and, once it is done, its final `event`).
EXPECTED_REPLY: dict[str, frozenset[str]] = {
    "hello": frozenset({"welcome"}),
    "submit": frozenset({"accepted"}),
    "cancel": frozenset({"ack"}),
    "status": frozenset({"status"}),
    "models": frozenset({"models"}),
    "load": frozenset({"loaded"}),
    "unload": frozenset({"unloaded"}),
    "fetch": frozenset({"fetched"}),
}

# Job events (section 6): they carry `job` and end a job when terminal.
EVENT_TYPES = frozenset({"progress", "loading", "result", "cancelled"})
TERMINAL_TYPES = frozenset({"result", "cancelled", "error"})

# Codes that end an accepted job while it runs (section 5.2); anything else after `accepted` is odd
# but still documented when PROTOCOL.md lists it (e.g. a shutdown code).
RUNTIME_CODES = frozenset({"model_unavailable", "out_of_memory", "job_failed"})


def protocol_text(path: str | Path | None = None) -> str:
    """PROTOCOL.md as installed with the protocol package, or the file at `path`."""
    if path is not None:
        return Path(path).read_text(encoding="utf-8")
    return resources.files("underpaint.protocol").joinpath("PROTOCOL.md").read_text(encoding="utf-8")


def documented_codes(text: str) -> frozenset[str]:
    """Error codes of the table under `| code | when |` in PROTOCOL.md (section 6.9)."""
    codes: set[str] = set()
    in_table = False
    for line in text.splitlines():
        stripped = line.strip()
        if re.match(r"^\|\s*code\s*\|\s*when\s*\|", stripped):
            in_table = True
            continue
        if not in_table:
            continue
        if not stripped.startswith("|"):
            if codes:
                break
            continue
        match = re.match(r"^\|\s*`([a-z_]+)`\s*\|", stripped)
        if match:
            codes.add(match.group(1))
    if not codes:
        raise ValueError("no error-code table found in PROTOCOL.md")
    return frozenset(codes)


@dataclass
class Welcome:
    """The daemon's `welcome`, with the look-ups the generators need."""

    raw: dict[str, Any]
    presets: dict[str, dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.presets = {p["name"]: p for p in self.raw.get("models", []) if isinstance(p, dict)}

    @property
    def limits(self) -> dict[str, int]:
        return dict(self.raw.get("limits") or {})

    @property
    def features(self) -> list[str]:
        return list(self.raw.get("features") or [])

    @property
    def schedulers(self) -> list[str]:
        return list(self.raw.get("schedulers") or [])

    @property
    def preprocessors(self) -> list[str]:
        return [p["name"] for p in self.raw.get("preprocessors") or [] if p.get("available")]

    @property
    def session(self) -> str | None:
        """The resume token, where the daemon hands one out (issue 9's sessions)."""
        token = self.raw.get("session")
        return token if isinstance(token, str) and token else None

    def matching(self, pattern: str) -> list[str]:
        """Preset names matching a comma-separated list of shell patterns."""
        pats = [p.strip() for p in pattern.split(",") if p.strip()]
        return [name for name in self.presets if any(fnmatch.fnmatchcase(name, p) for p in pats)]

    def ops(self, preset: str) -> list[str]:
        return list(self.presets[preset].get("ops") or [])

    def spec(self, preset: str, op: str) -> dict[str, Any]:
        return self.presets[preset]["op_specs"][op]

    def resolution(self, preset: str) -> int:
        return int(self.presets[preset].get("resolution") or 512)

    def controlnets(self, preset: str) -> list[str]:
        return list(self.presets[preset].get("controlnets") or [])

    def foreign_params(self, preset: str, op: str) -> dict[str, dict[str, Any]]:
        """Params of `op` that another preset takes and this one does not (they must be refused)."""
        own = self.spec(preset, op)["params"]
        out: dict[str, dict[str, Any]] = {}
        for name, other in self.presets.items():
            if name == preset or op not in (other.get("op_specs") or {}):
                continue
            for pname, pspec in other["op_specs"][op]["params"].items():
                if pname not in own:
                    out.setdefault(pname, pspec)
        return out
