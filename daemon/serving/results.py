"""Final events kept for their session, so a client that lost its connection still gets its work.

Every job's final event (`result`, `cancelled`, `error`) is kept for `ttl` seconds within a memory
budget, oldest evicted first. Evicted job ids are remembered (a bounded number) so that fetching one
says `result_expired` rather than `unknown_job`. An event also remembers whether, when and to which
connection it was sent: one sent shortly before that connection was found dead may never have
arrived, so it counts as undelivered again and is sent on the session's resume.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

#: Evicted job ids remembered for `result_expired` (oldest forgotten first).
REMEMBER_EVICTED = 65536
_OVERHEAD = 512  # bytes counted per kept event besides its binary payloads


@dataclass(eq=False)
class Kept:
    job: str
    session: str
    op: str
    message: dict[str, Any]  # the final event, image data inline (split into frames when sent)
    frames: bool  # the submit asked for frames
    nbytes: int
    finished: float
    sent_to: Any = None  # the connection it was last sent to, None while undelivered
    sent_at: float = 0.0


class ResultStore:
    def __init__(self, ttl: float, budget_bytes: int) -> None:
        self.ttl = ttl
        self.budget_bytes = budget_bytes
        self._kept: OrderedDict[str, Kept] = OrderedDict()  # in finishing order
        self._evicted: OrderedDict[str, str] = OrderedDict()  # job id -> session id
        self.used_bytes = 0

    def keep(self, job: str, session: str, op: str, message: dict[str, Any], frames: bool) -> Kept:
        nbytes = payload_bytes(message) + _OVERHEAD
        kept = Kept(job, session, op, message, frames, nbytes, time.monotonic())
        self._kept[job] = kept
        self.used_bytes += kept.nbytes
        while self.used_bytes > self.budget_bytes and self._kept:
            self._evict(next(iter(self._kept)))
        return kept

    def get(self, job: str) -> Kept | None:
        return self._kept.get(job)

    def evicted_owner(self, job: str) -> str | None:
        """The session of an evicted job, None if the id was never kept (or long forgotten)."""
        return self._evicted.get(job)

    def of_session(self, session: str) -> list[Kept]:
        return [k for k in self._kept.values() if k.session == session]

    def sessions(self) -> set[str]:
        return {k.session for k in self._kept.values()}

    def undelivered(self, session: str) -> list[Kept]:
        return [k for k in self._kept.values() if k.session == session and k.sent_to is None]

    def unsend_recent(self, conn: Any, since: float) -> set[str]:
        """`conn` died: what was sent to it since `since` may not have arrived. Returns the sessions
        of those events (one may already live on another connection: it gets them now)."""
        sessions = set()
        for kept in self._kept.values():
            if kept.sent_to is conn and kept.sent_at >= since:
                kept.sent_to = None
                sessions.add(kept.session)
        return sessions

    def expire(self, now: float) -> None:
        """Evict what is older than the time to keep."""
        while self._kept:
            oldest = next(iter(self._kept.values()))
            if now - oldest.finished < self.ttl:
                return
            self._evict(oldest.job)

    def _evict(self, job: str) -> None:
        kept = self._kept.pop(job)
        self.used_bytes -= kept.nbytes
        self._evicted[job] = kept.session
        while len(self._evicted) > REMEMBER_EVICTED:
            self._evicted.popitem(last=False)


def payload_bytes(node: Any) -> int:
    """Bytes of the binary payloads in a message (image data)."""
    if isinstance(node, (bytes, bytearray, memoryview)):
        return len(node)
    if isinstance(node, dict):
        return sum(payload_bytes(v) for v in node.values())
    if isinstance(node, list):
        return sum(payload_bytes(v) for v in node)
    return 0
