"""The serving limits a shared box needs (PROTOCOL.md 9.3), with their defaults. Light to import: the
command line reads the defaults for its help."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True)
class Policy:
    """The serving limits beyond the parameter ranges; all advertised in `welcome.limits`."""

    max_queued: int = 256  # jobs waiting, all clients
    max_queued_bytes_per_client: int = 512 * MIB  # image bytes of one client's waiting jobs
    max_queued_bytes: int = 2048 * MIB  # image bytes of all waiting jobs
    max_connections: int = 256
    max_connections_per_client: int = 8  # per public key (keys on)
    max_job_cost: float = 1024.0  # megapixel-steps: pixels x steps x variations / 2^20
    max_job_memory_bytes: int = 4096 * MIB  # estimated working memory of one job
    results_ttl_s: float = 3600.0
    results_bytes: int = 1024 * MIB
    session_grace_s: float = 120.0
    shutdown_grace_s: float = 5.0
    decode_threads: int = 2

    def to_wire(self) -> dict[str, Any]:
        wire = asdict(self)
        wire.pop("decode_threads")
        wire.pop("shutdown_grace_s")
        return wire
