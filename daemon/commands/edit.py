"""`underpaint edit`: one job from files on disk, with a progress bar and Ctrl-C = cancel."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from PIL import Image
from tqdm import tqdm

from ...protocol import DaemonError, JobCancelled, ProtocolMismatch
from .connect import open_client
from .pictures import image_object, paste_results, result_images

# CLI flag (argparse dest) -> protocol param name
PARAM_FLAGS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "instruction": "instruction",
    "steps": "steps",
    "guidance_scale": "guidance_scale",
    "image_guidance_scale": "image_guidance_scale",
    "strength": "strength",
    "seed": "seed",
    "variations": "variations",
    "width": "width",
    "height": "height",
    "resolution": "resolution",
    "padding": "padding",
    "feather": "feather",
    "factor": "factor",
    "noise_level": "noise_level",
    "scheduler": "scheduler",
}
UNIT_FLOATS = ("scale", "start", "end")


def parse_unit(text: str) -> dict[str, Any]:
    """'model=canny,preprocessor=canny,scale=0.8' -> a unit map."""
    unit: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--unit {text!r}: expected KEY=VALUE pairs separated by commas")
        unit[key.strip()] = float(value) if key.strip() in UNIT_FLOATS else value.strip()
    return unit


def parse_param(text: str) -> tuple[str, Any]:
    """'refine=0.3' -> ('refine', 0.3); values are JSON where they parse, else text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--param {text!r}: expected NAME=VALUE")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def parse_items(texts: list[str], images: dict[str, Any]) -> list[dict[str, Any]]:
    """--item prompt=TEXT,weight=W / image=PATH,weight=W -> mix items (pictures go into `images`)."""
    items = []
    for i, text in enumerate(texts):
        fields = dict(part.partition("=")[::2] for part in text.split(",") if part)
        item: dict[str, Any] = {"weight": float(fields.get("weight", 1.0))}
        if "image" in fields:
            name = f"item{i}"
            images[name] = image_object(Image.open(fields["image"]))
            item["image"] = name
        elif "prompt" in fields:
            item["prompt"] = fields["prompt"]
        else:
            raise ValueError(f"--item {text!r}: expected prompt=TEXT or image=PATH, and optionally weight=W")
        items.append(item)
    return items


def build_request(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    params = {
        p: getattr(args, flag) for flag, p in PARAM_FLAGS.items() if getattr(args, flag, None) is not None
    }
    params.update(parse_param(text) for text in args.param)
    images: dict[str, Any] = {}
    if args.image:
        images["image"] = image_object(Image.open(args.image))
    if args.mask:
        images["mask"] = image_object(Image.open(args.mask).convert("L"))
    if args.depth:
        images["depth"] = image_object(Image.open(args.depth).convert("L"))
    if args.item:
        params["items"] = parse_items(args.item, images)
    for spec in args.control:
        name, sep, path = spec.partition("=")
        name, path = (name, path) if sep else ("control", name)
        images[name] = image_object(Image.open(path))
    if args.unit:
        params["units"] = [parse_unit(u) for u in args.unit]
    return params, images


def run_edit(args: argparse.Namespace) -> int:
    try:
        params, images = build_request(args)
    except (OSError, ValueError) as exc:
        print(f"underpaint edit: {exc}", file=sys.stderr)
        return 2
    with open_client(args) as client:
        try:
            client.hello("underpaint-cli")
            job = client.submit(args.op, params, images, model=args.model, preview=args.preview)
        except (TimeoutError, ProtocolMismatch, DaemonError) as exc:
            print(f"underpaint edit: {exc}", file=sys.stderr)
            return 1
        bar = tqdm(total=0, desc=f"{args.op} {job}", unit="step", leave=True)

        def on_progress(event: dict[str, Any]) -> None:
            bar.total = event["total"]
            bar.n = event["step"]
            bar.refresh()

        try:
            result = client.wait(job, on_progress)
        except KeyboardInterrupt:
            bar.write("cancelling...")
            client.cancel(job)
            try:
                client.wait(job, timeout=60)
            except JobCancelled:
                pass
            bar.close()
            print("underpaint edit: cancelled", file=sys.stderr)
            return 130
        except (DaemonError, TimeoutError) as exc:  # TimeoutError: the daemon stayed away too long
            bar.close()
            print(f"underpaint edit: {exc}", file=sys.stderr)
            return 1
        bar.close()
    return _write(args, result)


def _write(args: argparse.Namespace, result: dict[str, Any]) -> int:
    base = Image.open(args.image).convert("RGBA") if args.image and args.op != "upscale" else None
    patches = result_images(result)
    pictures = paste_results(base, patches)
    outs = (
        [args.out]
        if len(pictures) == 1
        else [args.out.with_name(f"{args.out.stem}-{i + 1}{args.out.suffix}") for i in range(len(pictures))]
    )
    for path, picture, (patch, _, _) in zip(outs, pictures, patches, strict=True):
        picture.save(path)
        if args.save_patches:
            patch.save(path.with_suffix(".patch.png"))
        print(f"wrote {path}")
    t = result["timings"]
    print(
        f"seed {result['seed']}  model {result['model']}  run {t['run']:.2f} s  "
        f"load {t['load']:.2f} s  total {t['total']:.2f} s"
    )
    return 0
