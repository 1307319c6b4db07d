"""`underpaint edit`: one job from files on disk, with a progress bar and Ctrl-C = cancel.

Every result picture gets a JSON record next to it (NAME.json for NAME.png): the op, the preset, the
params that reproduce exactly that picture (its own seed, one variation), its `score` when the job was
ranked, its place (x, y, width, height) and the input files the job read. `edit reword --from NAME.json`
reads such a record back: the same job again, with an edited prompt (Prompt-to-Prompt, PROTOCOL.md
section 8 `reword`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from ...protocol import DaemonError, JobCancelled, ProtocolMismatch
from ...protocol.client import loading_text
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
#: reword's CLI flag (argparse dest) -> protocol param name
REWORD_FLAGS = {
    "edit_kind": "edit",
    "inject_cross": "inject_cross",
    "inject_self": "inject_self",
    "blend_threshold": "blend_threshold",
}
#: Source ops a result must come from to be reworded (the ops that start from noise).
REWORDABLE = ("txt2img", "inpaint")


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


def input_paths(args: argparse.Namespace) -> dict[str, Path]:
    """The input files of a job by image slot, as `build_request` reads them (absolute paths)."""
    paths = {slot: getattr(args, slot) for slot in ("image", "mask", "depth") if getattr(args, slot, None)}
    for i, text in enumerate(getattr(args, "item", None) or []):
        fields = dict(part.partition("=")[::2] for part in text.split(",") if part)
        if "image" in fields:
            paths[f"item{i}"] = Path(fields["image"])
    for spec in getattr(args, "control", None) or []:
        name, sep, path = spec.partition("=")
        name, path = (name, path) if sep else ("control", name)
        paths[name] = Path(path)
    return {slot: Path(path).resolve() for slot, path in paths.items()}


def parse_weight(text: str) -> tuple[str, float]:
    """'snow=2' -> ('snow', 2.0)."""
    word, sep, value = text.rpartition("=")
    try:
        if not sep or not word.strip():
            raise ValueError
        return word.strip(), float(value)
    except ValueError:
        raise ValueError(f"--weight {text!r}: expected WORD=NUMBER, e.g. snow=2") from None


def reword_request(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """`edit reword --from RESULT.json`: the recorded job's params and input files, with the edit.
    Sets args.model and args.image from the record where they were not given (the reworded patch is
    pasted onto the source job's input picture, as the source's was)."""
    if args.from_result is None:
        raise ValueError("reword needs --from RESULT.json (the record written next to a result's PNG)")
    try:
        record = json.loads(args.from_result.read_text())
        op, params = record["op"], dict(record["params"])
        inputs = {slot: Path(path) for slot, path in (record.get("inputs") or {}).items()}
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        what = f"{args.from_result} is not a result record written by `underpaint edit`"
        raise ValueError(f"{what}: {exc!r}") from None
    if op == "reword":  # a reworded result: edit its source job again
        op = params.get("op")
    if op not in REWORDABLE:
        raise ValueError(
            f"{args.from_result} is a {op} result; only {' and '.join(REWORDABLE)} results can be reworded"
        )
    params["op"] = op
    params.pop("rank", None)
    for flag, name in PARAM_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            params["new_prompt" if name == "prompt" else name] = value
    for flag, name in REWORD_FLAGS.items():
        if getattr(args, flag, None) is not None:
            params[name] = getattr(args, flag)
    if args.weight:
        params["weights"] = dict(parse_weight(text) for text in args.weight)
    if args.blend:
        params["blend"] = list(args.blend)
    params.update(parse_param(text) for text in args.param)
    images = {}
    for slot, path in inputs.items():
        picture = Image.open(path)
        images[slot] = image_object(picture.convert("L") if slot in ("mask", "depth") else picture)
    args.model = args.model or record.get("model")
    args.image = args.image or inputs.get("image")
    args.inputs = {slot: path.resolve() for slot, path in inputs.items()}
    return params, images


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
        if args.op == "reword":
            params, images = reword_request(args)
        else:
            params, images = build_request(args)
            args.inputs = input_paths(args)
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
        on_loading = loading_shower(bar, f"{args.op} {job}")

        def on_progress(event: dict[str, Any]) -> None:
            on_loading(None)
            bar.total = event["total"]
            bar.n = event["step"]
            bar.refresh()

        try:
            result = client.wait(job, on_progress, on_event=on_loading)
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


def loading_shower(bar: Any, desc: str) -> Any:
    """What a CLI does with a job's events besides progress: each model it starts to load gets a line
    ("Loading ..."), and the bar says how long it has waited; `None` (the first step) restores the bar."""
    shown: list[str] = []

    def on_event(event: dict[str, Any] | None) -> None:
        if event is None:
            if shown:
                shown.clear()
                bar.set_description_str(desc)
            return
        if event.get("type") != "loading":
            return  # newer event types: nothing to show
        what = str(event.get("what") or "")
        if not shown or shown[-1] != what:
            shown.append(what)
            bar.write(f"Loading {what}")
        bar.set_description_str(loading_text(event))

    return on_event


def _write(args: argparse.Namespace, result: dict[str, Any]) -> int:
    base = Image.open(args.image).convert("RGBA") if args.image and args.op != "upscale" else None
    patches = result_images(result)
    pictures = paste_results(base, patches)
    outs = (
        [args.out]
        if len(pictures) == 1
        else [args.out.with_name(f"{args.out.stem}-{i + 1}{args.out.suffix}") for i in range(len(pictures))]
    )
    for path, picture, (patch, x, y), obj in zip(outs, pictures, patches, result["images"], strict=True):
        picture.save(path)
        if args.save_patches:
            patch.save(path.with_suffix(".patch.png"))
        record = result_record(result, obj, (x, y, patch.width, patch.height), args.inputs, path)
        path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        score = f"  score {obj['score']:.4f}" if "score" in obj else ""
        print(f"wrote {path} (seed {obj.get('seed')}{score})")
    t = result["timings"]
    print(
        f"seed {result['seed']}  model {result['model']}  run {t['run']:.2f} s  "
        f"load {t['load']:.2f} s  total {t['total']:.2f} s"
    )
    return 0


def result_record(
    result: dict[str, Any],
    image: dict[str, Any],
    place: tuple[int, int, int, int],
    inputs: dict[str, Path],
    picture: Path,
) -> dict[str, Any]:
    """What reproduces one result picture: `op`, `model` and `params` with the picture's own seed and
    one variation (PROTOCOL.md 6.4), the input files by image slot, and where the patch lies."""
    seed = image.get("seed", result["seed"])
    params = {**result["params"], "seed": seed}
    if "variations" in params:
        params["variations"] = 1
    record: dict[str, Any] = {"op": result["op"], "model": result["model"], "params": params, "seed": seed}
    if "score" in image:
        record["score"] = image["score"]
    x, y, width, height = place
    record |= {"x": x, "y": y, "width": width, "height": height}
    record["inputs"] = {slot: str(path) for slot, path in inputs.items()}
    record["picture"] = str(picture.resolve())
    return record
