"""The benchmark script must never rot: a --quick run on the tiny preset, checked for real results.

The full run (`python -m bench --fullsize`) is not part of the suite; this smoke run (a few minutes)
goes through every section with tiny sizes and asserts what must hold whatever the machine's load:
the table is produced, pixels match between daemon and in-process, no job is lost, cancel works.
Timing targets are not asserted here (shared machines are noisy); the table reports them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(620)
def test_quick_bench_produces_the_table(underpaint_home: Path, tmp_path: Path) -> None:
    out, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "UNDERPAINT_HOME": str(underpaint_home)}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--threads", "1", "--out", str(out), "--json", str(raw)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    took = time.monotonic() - t0
    assert proc.returncode == 0, f"bench failed ({took:.0f} s):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"

    table = out.read_text()
    assert "<!-- bench:begin -->" in table and "| Section | Measurement |" in table
    for section in (
        "1. Daemon overhead",
        "2. Transfer",
        "3. Warm model",
        "4. Cancel and previews",
        "5. Many clients",
        "6. GPU",
        "7. Families",
        "8. Prompts",
        "9. Reword",
        "10. Workers",
        "11. Live",
    ):
        assert f"| {section} |" in table, f"section {section!r} missing from the table"
    assert table in proc.stdout or "| Section | Measurement |" in proc.stdout  # also printed

    result = json.loads(raw.read_text())
    checks = result["checks"]
    assert checks and all(checks.values()), checks
    identical = [name for name in checks if name.startswith("pixels identical")]
    assert len(identical) == 2, identical  # txt2img and sdedit, daemon vs in-process
    clients = result["data"]["clients"]
    assert clients["lost"] == 0 and clients["wrong"] == 0
    assert result["data"]["cancel"]["tiny"]["latency_s"] > 0
    assert all(len(v["daemon"]) >= 1 for v in result["data"]["transfer"].values() if "daemon" in v)
    families = result["data"]["families"]
    assert {"tiny", "tiny-sdxl", "tiny-kandinsky22"} <= set(families), "every tiny family is measured"
    assert all(entry["load"] > 0 and entry["warm"] for entry in families.values())
    assert {"tiny", "tiny-sdxl"} <= set(result["data"]["prompts"]), "weighted long prompts are measured"
    live = result["data"]["live"]
    assert live["superseded"] >= 1 and live["latency_s"] > 0, live
