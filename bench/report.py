"""The markdown report: machine, command, the results table and the hard checks.

`--out FILE` replaces only what lies between the two markers when FILE has them (so the prose of
docs/BENCHMARKS.md stays), and writes the whole report otherwise. `--block NAME` uses the markers
`bench:NAME:begin` / `bench:NAME:end` instead, so a run of some sections can keep its own table beside the
full run's.
"""

from __future__ import annotations

from pathlib import Path

from .common import Report


def markers(block: str | None) -> tuple[str, str]:
    name = f"bench:{block}:" if block else "bench:"
    return f"<!-- {name}begin -->", f"<!-- {name}end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: Report, machine: dict[str, str], command: str, when: str, duration_s: float) -> str:
    lines = [
        f"Measured {when} with `{command}` ({duration_s / 60:.1f} min).",
        "",
        *(f"- **{key}**: {value}" for key, value in machine.items()),
        "",
        "| Section | Measurement | Result | Target | Met | Notes |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(report.rows, key=lambda r: r.section.split(".")[0]):
        met = {True: "yes", False: "**NO**", None: ""}[row.met]
        cells = (row.section, row.metric, row.value, row.target, met, row.note)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "Hard checks (a failure makes the run exit 1):", ""]
    lines += [f"- {'pass' if ok else '**FAIL**'}: {name}" for name, ok in report.checks.items()]
    missed = [r for r in report.rows if r.met is False]
    lines += ["", f"Targets met: {sum(r.met is True for r in report.rows)}, missed: {len(missed)}."]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str, name: str | None = None) -> None:
    """Replace the marked block of an existing file, or write the report with markers around it."""
    begin, end = markers(name)
    block = f"{begin}\n{text}{end}"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1]
        path.write_text(head + block + tail, encoding="utf-8")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Underpaint benchmarks\n\n{block}\n", encoding="utf-8")
