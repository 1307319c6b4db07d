"""Counting what happened and writing it down: counters, findings with reproducers, RSS, markdown/JSON."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_EXAMPLES = 3


def describe(value: Any, depth: int = 0) -> Any:
    """A short, JSON-safe picture of a message: bytes and long texts summarised, nesting cut."""
    if depth > 6:
        return "<...>"
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return f"<{len(data)} bytes{': ' + data[:24].hex() if len(data) <= 64 else ''}>"
    if isinstance(value, str):
        return value if len(value) <= 400 else f"{value[:200]!r}... ({len(value)} chars)"
    if isinstance(value, float) and not math.isfinite(value):
        return f"float('{value}')"
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(describe(k, depth + 1)): describe(v, depth + 1) for k, v in items[:24]}
        if len(items) > 24:
            out["..."] = f"{len(items) - 24} more keys"
        return out
    if isinstance(value, list | tuple):
        out = [describe(v, depth + 1) for v in value[:8]]
        return out + [f"... {len(value) - 8} more"] if len(value) > 8 else out
    if isinstance(value, bool | int | float) or value is None:
        return value
    return repr(value)[:80]


@dataclass
class Rss:
    """Resident set size of the daemon over a run, sampled from /proc."""

    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (time, progress, bytes)
    peak_hwm: int = 0

    def add(self, progress: float, rss: int | None, hwm: int | None = None) -> None:
        if rss:
            self.samples.append((time.monotonic(), progress, rss))
        if hwm:
            self.peak_hwm = max(self.peak_hwm, hwm)

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {}
        values = [s[2] for s in self.samples]
        return {
            "start_mb": round(values[0] / 2**20, 1),
            "end_mb": round(values[-1] / 2**20, 1),
            "max_mb": round(max(values) / 2**20, 1),
            "peak_hwm_mb": round(self.peak_hwm / 2**20, 1) if self.peak_hwm else None,
            "samples": len(values),
            "trend_mb_per_1000": self.trend(),
            "by_tenth_mb": self.by_tenth(),
        }

    def by_tenth(self) -> list[float]:
        """RSS (MB) at the last sample of each tenth of the run's progress: growth that levels off
        (models loading, caches filling) reads differently from a steady leak."""
        last = self.samples[-1][1] or 1
        out: list[float] = []
        for tenth in range(1, 11):
            upto = [r for _, p, r in self.samples if p <= last * tenth / 10]
            if upto:
                out.append(round(upto[-1] / 2**20))
        return out

    def trend(self) -> float | None:
        """Least-squares slope of RSS against progress (MB per 1000 units), after the first 10 %."""
        if len(self.samples) < 4:
            return None
        last = self.samples[-1][1] or 1
        points = [(p, r / 2**20) for _, p, r in self.samples if p >= 0.1 * last]
        if len(points) < 3:
            return None
        n = len(points)
        mx = sum(p for p, _ in points) / n
        my = sum(r for _, r in points) / n
        var = sum((p - mx) ** 2 for p, _ in points)
        if var == 0:
            return None
        return round(sum((p - mx) * (r - my) for p, r in points) / var * 1000, 2)


class Tally:
    """Thread-safe counters plus up to three reproducers per finding."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.findings: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.rss = Rss()
        self.info: dict[str, Any] = {}
        self.latency: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def find(self, key: str, example: dict[str, Any]) -> None:
        """A failure class: counted, and its first examples kept as reproducers."""
        with self._lock:
            self.findings[key] += 1
            kept = self.examples.setdefault(key, [])
            if len(kept) < MAX_EXAMPLES:
                kept.append({k: describe(v) for k, v in example.items()})

    def took(self, kind: str, seconds: float) -> None:
        with self._lock:
            self.latency[kind] = max(self.latency.get(kind, 0.0), seconds)

    def prefixed(self, prefix: str) -> dict[str, int]:
        return {k[len(prefix) :]: v for k, v in sorted(self.counts.items()) if k.startswith(prefix)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "info": self.info,
            "counts": dict(sorted(self.counts.items())),
            "findings": dict(self.findings.most_common()),
            "examples": self.examples,
            "rss": self.rss.summary(),
            "max_reply_seconds": {k: round(v, 3) for k, v in sorted(self.latency.items())},
        }


# The figures that must be zero (issue 9): a finding whose key starts with one of these fails a run.
MUST_BE_ZERO = (
    "death",
    "hang",
    "traceback",
    "undocumented",
    "wrong_delivery",
    "lost",
    "log_traceback",
    "nondeterministic",
    "harness_error",
)


def failures(tally: Tally) -> dict[str, int]:
    return {k: v for k, v in tally.findings.items() if k.startswith(MUST_BE_ZERO)}


def total(tally: Tally, prefix: str) -> int:
    return sum(v for k, v in tally.findings.items() if k.startswith(prefix))


def headline(tally: Tally, kind: str) -> list[tuple[str, Any]]:
    """The figures issue 9 asks for, first the ones that must be zero."""
    c = tally.counts
    if kind == "soak":
        rows: list[tuple[str, Any]] = [
            ("jobs submitted", c["jobs_submitted"]),
            ("jobs accepted", c["jobs_accepted"]),
            ("ended in a result", c["job_end:result"]),
            ("ended cancelled (asked)", c["job_end:cancelled"]),
            ("ended in a documented error", sum(v for k, v in c.items() if k.startswith("job_end:error:"))),
            ("left behind by a dropped connection (no resume)", c["job_end:orphaned"]),
            (
                "connections dropped / sessions resumed",
                f"{c['connections_dropped']} / {c['sessions_resumed']}",
            ),
            ("reference results compared", c["reference_results"]),
            (
                "final events sent again on resume: jobs that ended while away / < 5 s before the drop",
                f"{c['event:job:final_again_after_reconnect']} / "
                f"{c['event:job:final_again_after_reconnect:ended_just_before_the_drop']}",
            ),
        ]
    else:
        rows = [
            ("messages", c["messages"]),
            (
                "replies: documented",
                sum(v for k, v in c.items() if k.startswith(("reply:ok:", "reply:error:"))),
            ),
            ("replies: undocumented", sum(v for k, v in c.items() if k.startswith("reply:undocumented"))),
            ("replies: traceback", sum(v for k, v in c.items() if k.startswith("reply:traceback"))),
            (
                "jobs accepted / run / cancelled at once",
                f"{c['jobs_accepted']} / {c['jobs_run']} / {c['jobs_cancelled_at_once']}",
            ),
        ]
    rows += [
        ("deaths", total(tally, "death")),
        ("hangs", total(tally, "hang")),
        ("tracebacks in replies and events", total(tally, "traceback")),
        ("tracebacks in the daemon log", total(tally, "log_traceback")),
        ("undocumented replies and events (incl. no reply)", total(tally, "undocumented")),
        ("wrong deliveries", total(tally, "wrong_delivery")),
        ("lost jobs", total(tally, "lost")),
    ]
    if kind == "soak":
        rows.append(("non-deterministic reference results", total(tally, "nondeterministic")))
    else:
        rows.append(("accepted although outside the spec", total(tally, "accepted_invalid")))
    return rows


def markdown(tally: Tally, kind: str, title: str | None = None) -> str:
    """The report as markdown: headline figures, RSS, replies by class, findings with reproducers."""
    lines = [f"## {title or kind}", "", "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in headline(tally, kind)]
    rss = tally.rss.summary()
    if rss:
        lines.append(
            f"| RSS start / end / max (MB) | {rss['start_mb']} / {rss['end_mb']} / {rss['max_mb']}"
            f" (kernel peak {rss['peak_hwm_mb']}) |"
        )
        lines.append(f"| RSS trend (MB per 1000) | {rss['trend_mb_per_1000']} |")
        lines.append(f"| RSS at each tenth of the run (MB) | {' / '.join(map(str, rss['by_tenth_mb']))} |")
    for key, value in sorted(tally.info.items()):
        lines.append(f"| {key} | {value} |")
    lines += ["", "Replies and job events by class:", "", "| class | count |", "|---|---|"]
    for key, value in sorted(tally.counts.items()):
        if key.startswith(("reply:", "event:", "job_end:")):
            lines.append(f"| `{key}` | {value} |")
    if tally.findings:
        lines += [
            "",
            "Findings (each with its first reproducer):",
            "",
            "| finding | count | reproducer |",
            "|---|---|---|",
        ]
        for key, value in tally.findings.most_common():
            example = json.dumps(tally.examples.get(key, [{}])[0], ensure_ascii=True)[:600].replace("|", "/")
            lines.append(f"| `{key}` | {value} | `{example}` |")
    return "\n".join(lines) + "\n"
