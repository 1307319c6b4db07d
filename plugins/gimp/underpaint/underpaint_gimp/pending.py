"""Jobs sent from an image whose results are not placed yet, as stored on that image.

A procedure call waits for its job while GIMP runs; if the link to the daemon is lost for good, or
GIMP is closed, the job may still finish on the daemon (it keeps results for its session). So every
call writes what it needs to place its result later onto the image, in the persistent parasite
`underpaint-pending`: the daemon's endpoint and keys, the session token, the job id, and the
placement (mode, region, anchor layer, the selection for results that fill it). A later call on the
image, or Fetch Pending Results, resumes that session and places what finished. Pure Python.
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from underpaint_protocol.regions import Rect

PENDING = "underpaint-pending"  # image parasite (saved in .xcf): JSON list of PendingJob
LIVE = "underpaint-live"  # image parasite, not saved: session tokens held by calls running now
VERSION = 1
Connection = tuple[str, str, str, str]  # endpoint, session token, server key, client key


@dataclass(frozen=True)
class PendingJob:
    """One job whose result belongs on the image, and how to place it."""

    job: str
    endpoint: str
    session: str
    mode: str  # the procedure's mode key
    base: str  # the mode whose placement applies (Compare: its base mode)
    model: str  # the preset ("" = the daemon's default)
    region: tuple[int, int, int, int]  # x, y, width, height that was sent (or filled)
    fit: bool = False  # results cover `region`, scaled uniformly (Generate, Mix)
    asked: int = 0  # steps the user asked for (progress)
    not_sent: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)
    anchor: int | None = None  # tattoo of the layer the results go above
    mask: bytes | None = None  # the selection over `region` (8-bit), for results that fill it
    server_key: str = ""
    client_key: str = ""
    sent: float = 0.0  # time.time() when the daemon accepted it

    @property
    def rect(self) -> Rect:
        return Rect(*self.region)

    @property
    def connection(self) -> Connection:
        """Jobs with the same connection are resumed together."""
        return self.endpoint, self.session, self.server_key, self.client_key

    def accepted(self, job: str, session: str, asked: int) -> PendingJob:
        return replace(self, job=job, session=session, asked=asked, sent=time.time())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["region"] = list(self.region)
        data["not_sent"] = list(self.not_sent)
        data["mask"] = _pack_mask(self.mask)
        return data

    @classmethod
    def from_json(cls, data: Any) -> PendingJob | None:
        """A stored job, or None for anything this version cannot read (never raises)."""
        try:
            return cls(
                job=str(data["job"]),
                endpoint=str(data["endpoint"]),
                session=str(data["session"]),
                mode=str(data["mode"]),
                base=str(data.get("base") or data["mode"]),
                model=str(data.get("model") or ""),
                region=tuple(int(v) for v in data["region"][:4]),  # type: ignore[arg-type]
                fit=bool(data.get("fit")),
                asked=int(data.get("asked") or 0),
                not_sent=tuple(str(v) for v in data.get("not_sent") or ()),
                sources={str(k): str(v) for k, v in (data.get("sources") or {}).items()},
                anchor=int(data["anchor"]) if data.get("anchor") is not None else None,
                mask=_unpack_mask(data.get("mask")),
                server_key=str(data.get("server_key") or ""),
                client_key=str(data.get("client_key") or ""),
                sent=float(data.get("sent") or 0.0),
            )
        except (KeyError, TypeError, ValueError, IndexError, zlib.error):
            return None


def _pack_mask(mask: bytes | None) -> str | None:
    return None if mask is None else base64.b64encode(zlib.compress(mask, 6)).decode("ascii")


def _unpack_mask(text: Any) -> bytes | None:
    return None if not text else zlib.decompress(base64.b64decode(str(text)))


def encode(jobs: list[PendingJob]) -> bytes:
    return json.dumps({"version": VERSION, "jobs": [j.to_json() for j in jobs]}, sort_keys=True).encode()


def decode(data: bytes | None) -> list[PendingJob]:
    """The jobs stored on an image ([] for none or for a parasite this version cannot read)."""
    if not data:
        return []
    try:
        stored = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return []
    rows = stored.get("jobs") if isinstance(stored, dict) else None
    return [job for job in map(PendingJob.from_json, rows or []) if job is not None]


def decode_live(data: bytes | None) -> set[str]:
    try:
        tokens = json.loads(bytes(data or b"[]").decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return set()
    return {str(t) for t in tokens} if isinstance(tokens, list) else set()


def encode_live(tokens: set[str]) -> bytes:
    return json.dumps(sorted(tokens)).encode()


def by_connection(jobs: list[PendingJob], skip: set[str]) -> dict[Connection, list[PendingJob]]:
    """The jobs grouped by the session they belong to, oldest first, leaving out sessions in `skip`
    (held by a call running now: taking its session over would steal that call's events)."""
    groups: dict[Connection, list[PendingJob]] = {}
    for job in sorted(jobs, key=lambda j: j.sent):
        if job.session not in skip:
            groups.setdefault(job.connection, []).append(job)
    return groups


def mask_over(mask: bytes, region: Rect, target: Rect) -> bytes:
    """The 8-bit `mask` of `region` as seen over `target` (0 where the region does not reach)."""
    if target == region:
        return mask
    out = bytearray(target.width * target.height)
    common = region.intersected(target)
    if common.empty:
        return bytes(out)
    for y in range(common.y, common.bottom):
        src = (y - region.y) * region.width + (common.x - region.x)
        dst = (y - target.y) * target.width + (common.x - target.x)
        out[dst : dst + common.width] = mask[src : src + common.width]
    return bytes(out)


def describe(job: PendingJob, title: str) -> str:
    """`Inpaint (tiny), sent at 14:02`: how messages name a pending job."""
    when = time.strftime("%H:%M", time.localtime(job.sent)) if job.sent else "earlier"
    return f"{title} ({job.model or 'default preset'}), sent at {when}"
