"""Section 12 (opt-in, `--sections 12`: needs Krita, xvfb-run and Debian's PyQt5): what Live's polling
costs Krita on a big canvas (issue 10).

Krita's Python API has no "pixels changed" signal, so Live polls (plugins/krita/.../live_fingerprint.py).
Reading and hashing every layer on every tick is the baseline; the plugin reads the painter's layer and
one other per tick and keeps a CRC per layer. Both run in one Krita, interleaved, on the same canvas.
Hard checks: the fingerprint sees a stroke on the painter's layer at the next tick, and a change on
another layer within as many ticks as there are layers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from underpaint.daemon.commands.install_plugin import enable_in_kritarc

from .common import Report, median

SECTION = "12. Krita live polling"
REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "tests" / "krita" / "runner"  # the scenario runner plugin the Krita tests use
SCENARIO = Path(__file__).with_name("krita_poll_scenario.py")
TIMEOUT_S = 300


def _run_krita(config: dict[str, object], work: Path) -> dict[str, object]:
    """Install the plugin and the runner into a fresh home, run the scenario under Xvfb, read its result."""
    home, out = work / "home", work / "out"
    out.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "KDE_", "QT_", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), LANG="C.UTF-8", LC_ALL="C.UTF-8")
    install = [sys.executable, "-m", "underpaint.daemon.cli", "install-plugin", "krita"]
    subprocess.run(install, env=env, check=True, capture_output=True, timeout=60)
    pykrita = home / ".local/share/krita/pykrita"
    shutil.copytree(RUNNER / "underpaint_scenario", pykrita / "underpaint_scenario")
    shutil.copy2(RUNNER / "underpaint_scenario.desktop", pykrita)
    enable_in_kritarc(home / ".config" / "kritarc", "underpaint_scenario")
    (out / "config.json").write_text(json.dumps(config))
    env.update(
        UNDERPAINT_SCENARIO=str(SCENARIO),
        UNDERPAINT_SCENARIO_OUT=str(out),
        UNDERPAINT_SCENARIO_TIMEOUT=str(TIMEOUT_S - 30),
        # Krita embeds the system Python: a virtual environment's python first on PATH would hide PyQt5
        PATH=":".join(p for p in env.get("PATH", "").split(":") if not p.startswith(sys.prefix)),
    )
    display = str(random.randrange(200, 30000))
    cmd = ["xvfb-run", "-a", "-n", display, "-s", "-screen 0 1280x1024x24", "krita", "--nosplash"]
    with (out / "krita-output.log").open("wb") as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=out, timeout=TIMEOUT_S)
    result_path = out / "result.json"
    if not result_path.exists():
        tail = (out / "krita-output.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"Krita wrote no result:\n{tail}")
    return json.loads(result_path.read_text())


def measure(report: Report, quick: bool) -> None:
    missing = [tool for tool in ("krita", "xvfb-run") if shutil.which(tool) is None]
    if missing:
        report.add(SECTION, "not run", "-", note=f"not installed here: {', '.join(missing)}")
        return
    size, layers, reps = (1024, 4, 4) if quick else (4096, 6, 10)
    with tempfile.TemporaryDirectory(prefix="underpaint-krita-poll-") as tmp:
        result = _run_krita({"size": size, "layers": layers, "reps": reps}, Path(tmp))
    ok = report.check("krita poll: the scenario ran", bool(result.get("ok")))
    if not ok:
        report.add(SECTION, "not run", "-", note=str(result.get("error"))[-300:])
        return
    r = result["results"]
    report.data["krita_poll"] = r
    base, new = median(r["baseline_ms"]), median(r["fingerprint_ms"])
    ratio = new / base if base else float("nan")
    reads = r["reads"][1:]
    report.add(
        SECTION,
        f"one poll tick, {size} x {size} canvas, {layers} layers (every layer read each tick)",
        f"{new:.1f} ms ({base:.1f} ms)",
        "≤ 0.5 × reading every layer",
        ratio <= 0.5,
        f"ratio {ratio:.2f}, median of {reps} interleaved pairs; layers read per tick after the first: "
        f"at most {max(reads)}; the first tick reads all ({r['first_ms']:.0f} ms)",
    )
    report.add(
        SECTION,
        "a change on another layer is seen after",
        f"{r['other_layer_seen_at_tick']} ticks",
        f"≤ {layers} ticks",
        (r["other_layer_seen_at_tick"] or layers + 1) <= layers,
    )
    report.check(
        "krita poll: a stroke on the painter's layer is seen at the next tick", r["stroke_next_tick"]
    )
    report.check(
        "krita poll: a change on another layer is seen within as many ticks as layers",
        r["other_layer_seen_at_tick"] is not None and r["other_layer_seen_at_tick"] <= layers,
    )
    report.check("krita poll: at most two layers read per tick after the first", max(reads) <= 2)
