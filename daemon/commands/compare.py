"""`underpaint compare`: one prompt on several presets in one job, written as a labelled contact sheet
(the tour's advice: try the models side by side before choosing one)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from ...protocol import DaemonError, JobCancelled, ProtocolMismatch
from .connect import open_client
from .edit import build_request, loading_shower
from .pictures import paste_results, result_images

CELL = 256  # longer side of each picture on the sheet
LABEL_HEIGHT = 40
GAP = 8


def add_parser(sub: Any, add_request_args: Any, endpoint_args: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="run one op on several presets and write a labelled contact sheet",
        description="Run the same op, prompt, parameters and seed on several model presets in one job "
        "(queued fairly like any other) and write a contact sheet: one picture per preset, labelled with "
        "the preset, its family and its seconds. Each preset takes the parameters its family understands; "
        "the rest are listed as ignored. Ctrl-C cancels.",
    )
    p.add_argument(
        "--models", required=True, help="comma-separated preset names, e.g. tiny,tiny-sdxl,tiny-kandinsky22"
    )
    p.add_argument(
        "--op",
        default="txt2img",
        help="the op every preset runs (default txt2img; any op but compare)",
    )
    endpoint_args(p)
    add_request_args(p)
    p.add_argument(
        "--out", type=Path, default=Path("underpaint-compare.png"), help="contact sheet PNG to write"
    )
    p.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    try:
        params, images = build_request(args)
    except (OSError, ValueError) as exc:
        print(f"underpaint compare: {exc}", file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    params |= {"op": args.op, "models": models}
    with open_client(args) as client:
        try:
            client.hello("underpaint-cli")
            job = client.submit("compare", params, images)
        except (TimeoutError, ProtocolMismatch, DaemonError) as exc:
            print(f"underpaint compare: {exc}", file=sys.stderr)
            return 1
        bar = tqdm(total=0, desc=f"compare {len(models)} presets", unit="step")
        on_loading = loading_shower(bar, f"compare {len(models)} presets")

        def on_progress(event: dict[str, Any]) -> None:
            on_loading(None)
            bar.total, bar.n = event["total"], event["step"]
            bar.refresh()

        try:
            result = client.wait(job, on_progress, on_event=on_loading)
        except KeyboardInterrupt:
            client.cancel(job)
            try:
                client.wait(job, timeout=60)
            except JobCancelled:
                pass
            print("underpaint compare: cancelled", file=sys.stderr)
            return 130
        except (DaemonError, TimeoutError) as exc:  # TimeoutError: the daemon stayed away too long
            print(f"underpaint compare: {exc}", file=sys.stderr)
            return 1
        finally:
            bar.close()
    base = Image.open(args.image).convert("RGBA") if args.image and args.op != "upscale" else None
    sheet = contact_sheet(result, paste_results(base, result_images(result)))
    sheet.save(args.out)
    for entry in result["compare"]:
        line = f"{entry['model']:<20} {entry['family']:<12} "
        line += f"load {entry['load']:6.2f} s  run {entry['run']:6.2f} s"
        if entry.get("ignored"):
            line += f"  ignored: {', '.join(entry['ignored'])}"
        if entry.get("error"):
            line += f"  FAILED: {entry['error']['code']}: {entry['error']['message']}"
        print(line)
    print(f"wrote {args.out}")
    return 0


def contact_sheet(result: dict[str, Any], pictures: list[Image.Image]) -> Image.Image:
    """One column per preset (its variations below each other), each labelled with the preset, family
    and seconds; a preset that failed gets a grey cell saying why."""
    font = ImageFont.load_default(size=13)
    entries = result["compare"]
    by_model: dict[str, list[Image.Image]] = {e["model"]: [] for e in entries}
    for obj, picture in zip(result["images"], pictures, strict=True):
        by_model[obj["model"]].append(_fit(picture))
    rows = max(1, *(len(v) for v in by_model.values()))
    width = len(entries) * (CELL + GAP) + GAP
    height = LABEL_HEIGHT + rows * (CELL + GAP) + GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for col, entry in enumerate(entries):
        x = GAP + col * (CELL + GAP)
        seconds = entry["load"] + entry["run"]
        draw.text((x, 4), entry["model"], fill="black", font=font)
        draw.text((x, 21), f"{entry['family']}  {seconds:.2f} s", fill=(90, 90, 90), font=font)
        if entry.get("error"):
            draw.rectangle((x, LABEL_HEIGHT, x + CELL, LABEL_HEIGHT + CELL), fill=(220, 220, 220))
            draw.multiline_text((x + 6, LABEL_HEIGHT + 6), _wrap(entry["error"]["message"]), fill="black")
        for row, picture in enumerate(by_model[entry["model"]]):
            y = LABEL_HEIGHT + row * (CELL + GAP)
            sheet.paste(picture, (x + (CELL - picture.width) // 2, y + (CELL - picture.height) // 2), picture)
    return sheet


def _fit(picture: Image.Image) -> Image.Image:
    """Scale to fit a cell: tiny models' pictures grow (nearest neighbour), big ones shrink."""
    scale = CELL / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS).convert("RGBA")


def _wrap(text: str, width: int = 36) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line][:12])
