"""Section 3: the model stays warm, and switching ops within one family reuses its components.

The first job on a fresh daemon pays the load; the second must not. Then the op chain (inpaint ->
sdedit -> controlnet -> instruct where the preset has them) runs twice per op: the first run of an op
builds its pipeline view (and loads a component only that op needs: a ControlNet, an
InstructPix2Pix UNet), the second is the steady state. Resident memory (VmRSS of the daemon process)
is read after each op's second run; the daemon's own `models.memory.used_bytes` says how much of the
growth is new weights, so what is left is what the switch itself cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from underpaint.daemon.commands.pictures import image_object
from underpaint.protocol import Client

from .common import PROMPT, SEED, Report, ellipse_mask, mb, photo, progress, rss_bytes, secs, timed

SECTION = "3. Warm model"
MEMORY_TARGET = 0.05  # extra resident memory per op switch, beyond new weights, as a share of RSS


@dataclass(frozen=True)
class Step:
    op: str
    params: dict[str, Any]
    images: dict[str, Any]
    loads: tuple[str, ...] = ()  # the components only this op needs; everything else must be shared


def cold_then_warm(
    report: Report, client: Client, preset: str, params: dict[str, Any], start_s: float
) -> None:
    """First job on a fresh daemon (loads the model) vs the second one."""
    bar = progress(f"warm {preset}", 2)
    runs = []
    for _ in range(2):
        with timed() as t:
            result = client.run("txt2img", params, model=preset)
        runs.append((t[0], result["timings"]))
        bar.update()
    bar.close()
    (cold, cold_t), (warm, warm_t) = runs
    size = f"{params['width']}x{params['height']}, {params['steps']} steps"
    report.add(SECTION, f"{preset}: daemon start (imports, socket bound)", secs(start_s))
    report.add(
        SECTION,
        f"{preset} txt2img {size}: first job / second job",
        f"{cold / warm:.2f}x ({secs(cold)} vs {secs(warm)})",
        "second job loads nothing",
        warm_t["load"] == 0.0,
        f"load {secs(cold_t['load'])} in the first, {secs(warm_t['load'])} in the second",
    )
    report.data.setdefault("warm", {})[preset] = {
        "cold": [cold, cold_t],
        "warm": [warm, warm_t],
        "start": start_s,
    }


def chain_for(preset: str, size: int, steps: int, own_inpaint: bool, instruct: bool) -> list[Step]:
    """The op switch chain at one working size; `own_inpaint` where the preset has an inpainting UNet,
    `instruct` where it has InstructPix2Pix."""
    image = image_object(photo((size, size)))
    mask = image_object(ellipse_mask((size, size)))
    common = {"prompt": PROMPT, "steps": steps, "seed": SEED, "strength": 0.5, "resolution": size}
    unit = {"model": "canny", "preprocessor": "none", "image": "control"}
    chain = [
        Step("inpaint", common, {"image": image, "mask": mask}, ("inpaint",) if own_inpaint else ()),
        Step("sdedit", common, {"image": image}),
        Step(
            "controlnet",
            common | {"units": [unit]},
            {"image": image, "control": image},
            ("controlnet:canny",),
        ),
    ]
    if instruct:
        params = {k: v for k, v in common.items() if k not in ("prompt", "strength")}
        chain.append(
            Step("instruct", params | {"instruction": "make it snow"}, {"image": image}, ("instruct",))
        )
    return chain


def op_switches(report: Report, client: Client, pid: int, preset: str, chain: list[Step]) -> None:
    """Run the chain; rows for extra time and extra resident memory of every switch."""
    rss_prev, used_prev = rss_bytes(pid), client.models()["memory"]["used_bytes"]
    loaded_prev = _loaded(client, preset)
    rss_start = rss_prev
    worst = 0.0
    bar = progress(f"op switches {preset}", 2 * len(chain))
    records = []
    for step in chain:
        walls, loads = [], []
        for _ in range(2):
            with timed() as t:
                result = client.run(step.op, step.params, step.images, model=preset)
            walls.append(t[0])
            loads.append(result["timings"]["load"])
            bar.update()
        rss, used = rss_bytes(pid), client.models()["memory"]["used_bytes"]
        loaded = _loaded(client, preset)
        report.check(
            f"{preset}: switching to {step.op} loads only {list(step.loads) or 'nothing'}",
            loaded - loaded_prev == set(step.loads),
        )
        loaded_prev = loaded
        new_weights = used - used_prev
        extra = rss - rss_prev - new_weights
        share = extra / rss_prev
        worst = max(worst, share)
        records.append({"op": step.op, "walls": walls, "loads": loads, "rss": rss, "used": used})
        news = f", loads {mb(new_weights)} of new weights in {secs(loads[0])}" if new_weights else ""
        report.add(
            SECTION,
            f"{preset}: switch to {step.op}: extra RSS beyond new weights",
            f"{extra / 2**20:+.0f} MiB ({share:+.1%} of {mb(rss_prev)})",
            f"< {MEMORY_TARGET:.0%}",
            share < MEMORY_TARGET,
            f"first run {secs(walls[0])}, second {secs(walls[1])} "
            f"(+{secs(max(0.0, walls[0] - walls[1]))} once){news}",
        )
        rss_prev, used_prev = rss, used
    bar.close()
    report.add(
        SECTION,
        f"{preset}: whole chain {' -> '.join(s.op for s in chain)}",
        f"RSS {mb(rss_start)} -> {mb(rss_prev)}",
        note=f"worst switch {worst:+.1%}",
    )
    report.data.setdefault("switches", {})[preset] = records


def _loaded(client: Client, preset: str) -> set[str]:
    """The components the daemon says it holds for `preset` (models.presets[].loaded)."""
    return next(set(p["loaded"]) for p in client.models()["presets"] if p["name"] == preset)
