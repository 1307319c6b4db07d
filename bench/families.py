"""Section 7: every model family side by side (the tour's question: what does each one cost?).

For each tiny preset, its first op runs once cold (the first use loads its weights: `timings.load`)
and then warm, rotated with the other presets round after round so that machine noise spreads over
all of them; warm times are reported as medians and as a ratio to the sd15 preset of the same run.
The tiny folders are built before the daemon starts, so the load time is `from_pretrained` alone.
On a machine with a GPU the daemon picks it, and these rows are the GPU rows.
"""

from __future__ import annotations

from typing import Any

from underpaint.daemon.builders.tiny import ensure_tiny
from underpaint.daemon.commands.pictures import image_object
from underpaint.protocol import Client

from .common import PROMPT, SEED, Report, median, photo, progress, rotated, secs

SECTION = "7. Families"


def job_for(preset: dict[str, Any], size: int, steps: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The preset's first op with small, comparable parameters from its own op spec (a family that
    paints at one fixed size, like DDPM or unCLIP, paints at that size: the row says which)."""
    op = preset["ops"][0]
    spec = preset["op_specs"][op]
    params: dict[str, Any] = {"seed": SEED}
    params |= {name: steps for name in spec["params"] if name.endswith("steps")}
    if "prompt" in spec["params"]:
        params["prompt"] = PROMPT
    if "width" in spec["params"]:
        params["width"] = params["height"] = size
    if "resolution" in spec["params"]:
        params["resolution"] = size
    images = {"image": image_object(photo((size, size)))} if spec["images"].get("image") else {}
    return op, params, images


def prebuild(models_dir: Any, families: set[str]) -> None:
    for name in sorted(families):
        ensure_tiny(models_dir, name)


def measure(report: Report, client: Client, reps: int, size: int, steps: int) -> None:
    presets = [p for p in client.hello("underpaint-bench")["models"] if p["name"].startswith("tiny")]
    jobs = {p["name"]: job_for(p, size, steps) for p in presets}
    data: dict[str, Any] = {}
    bar = progress("families", len(presets) * (reps + 1))
    for preset in presets:
        op, params, images = jobs[preset["name"]]
        first = client.run(op, params, images, model=preset["name"])
        picture = first["images"][0]
        data[preset["name"]] = {
            "family": preset["family"],
            "op": op,
            "load": first["timings"]["load"],
            "size": f"{picture['width']}x{picture['height']}",
        }
        bar.update()

    def runner(name: str) -> Any:
        op, params, images = jobs[name]
        return lambda: client.run(op, params, images, model=name)["timings"]["run"]

    names = [p["name"] for p in presets]
    warm = rotated([runner(name) for name in names], reps, bar)
    bar.close()
    for name, runs in zip(names, warm, strict=True):
        data[name]["warm"] = runs
    reference = median(data["tiny"]["warm"]) if "tiny" in data else float("nan")
    for name in names:
        entry = data[name]
        warm_s = median(entry["warm"])
        report.add(
            SECTION,
            f"{name} ({entry['family']}): {entry['op']} {entry['size']}, {steps} steps",
            f"{secs(warm_s)} warm, {warm_s / reference:.2f}x sd15",
            note=f"first use loads {secs(entry['load'])}",
        )
    report.data["families"] = data
