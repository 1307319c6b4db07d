"""How a `loading` event (PROTOCOL.md 6.10) reads to a person. Standard library only: editors show
it even where the rest of the client cannot be imported."""

from __future__ import annotations

from typing import Any


def loading_detail(event: dict[str, Any]) -> str:
    """ "<what>… 12 s (340 MB of 2.0 GB)": what is loading, for how long, and the bytes when known."""
    line = f"{event.get('what') or 'the model'}\u2026 {float(event.get('elapsed_s') or 0):.0f} s"
    done, total = event.get("bytes"), event.get("total_bytes")
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        line += f" ({byte_size(done)} of {byte_size(total)})"
    elif isinstance(done, int):
        line += f" ({byte_size(done)} so far)"
    elif isinstance(total, int) and total > 0:
        line += f" ({byte_size(total)})"
    return line


def byte_size(n: int) -> str:
    """Bytes as a person reads them: "340.0 MB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
