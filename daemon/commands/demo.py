"""`underpaint demo`: every op of every model family, end to end through a real daemon, on a real
picture, and a contact sheet comparing the families on one prompt."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ...protocol import Client
from .compare import contact_sheet
from .launch import running_daemon
from .pictures import image_object, paste_results, result_images

PICTURE = Path(__file__).parents[1] / "assets" / "chelsea.png"


def demo_inputs() -> dict[str, Image.Image]:
    """The bundled photo, an elliptical soft-edged mask over the cat's head, and a sketch."""
    picture = Image.open(PICTURE).convert("RGBA")
    mask = Image.new("L", picture.size, 0)
    ImageDraw.Draw(mask).ellipse((120, 20, 330, 200), fill=255)
    sketch = Image.new("RGB", picture.size, "white")
    draw = ImageDraw.Draw(sketch)
    draw.ellipse((140, 40, 310, 190), outline="black", width=4)
    draw.line((150, 250, 300, 250), fill="black", width=4)
    return {"image": picture, "mask": mask, "sketch": sketch}


def demo_jobs(inputs: dict[str, Image.Image]) -> list[tuple[str, str, dict[str, Any], dict]]:
    """(title, op, params, images) for every op; images as wire objects."""
    image, mask = image_object(inputs["image"]), image_object(inputs["mask"])
    sketch = image_object(inputs["sketch"])
    thumb = image_object(inputs["image"].convert("RGB").resize((64, 43)))
    small = image_object(inputs["image"].convert("RGB").resize((192, 128)))
    base = {"steps": 8, "seed": 1234}
    return [
        ("txt2img", "txt2img", base | {"prompt": "a cat on a sofa"}, {}),
        ("sdedit", "sdedit", base | {"prompt": "a watercolour cat", "strength": 0.6}, {"image": image}),
        ("inpaint", "inpaint", base | {"prompt": "a fox head"}, {"image": image, "mask": mask}),
        (
            "controlnet-canny",
            "controlnet",
            base | {"prompt": "a cat", "units": [{"model": "canny", "preprocessor": "canny"}]},
            {"image": image, "mask": mask, "control": image},
        ),
        (
            "controlnet-sketch",
            "controlnet",
            base
            | {
                "prompt": "a cat",
                "width": 96,
                "height": 64,
                "units": [
                    {"model": "scribble", "image": "sketch", "preprocessor": "none"},
                    {"model": "lineart", "image": "photo", "preprocessor": "lineart_standard", "scale": 0.5},
                ],
            },
            {"sketch": sketch, "photo": image},
        ),
        ("instruct", "instruct", base | {"instruction": "make it winter"}, {"image": image}),
        ("upscale-x4", "upscale", base | {"prompt": "a cat", "steps": 4}, {"image": thumb}),
        ("upscale-x2", "upscale", base | {"prompt": "a cat", "steps": 4, "factor": 2}, {"image": small}),
    ]


def family_jobs(preset: dict[str, Any], inputs: dict[str, Image.Image]) -> list[tuple[str, str, dict, dict]]:
    """One job per op of a non-SD-1.5 preset, built from the preset's own op specs."""
    image, mask = image_object(inputs["image"]), image_object(inputs["mask"])
    jobs = []
    for op in preset["ops"]:
        spec = preset["op_specs"][op]
        params: dict[str, Any] = {"seed": 1234}
        params |= {name: 6 for name in spec["params"] if name.endswith("steps")}
        if "prompt" in spec["params"]:
            params["prompt"] = "a cat on a sofa"
        images: dict[str, Any] = {}
        if "image" in spec["images"]:
            images["image"] = image
        if "mask" in spec["images"]:
            images["mask"] = mask
        if op == "upscale":
            images = {"image": image_object(inputs["image"].convert("RGB").resize((64, 43)))}
        if op == "controlnet":
            params["units"] = [{"model": preset["controlnets"][0], "image": "sketch"}]
            images["sketch"] = image_object(inputs["sketch"])
            images.pop("mask", None)
        if op == "mix":
            params["items"] = [{"prompt": "a cat"}, {"image": "photo", "weight": 0.5}]
            images["photo"] = image
        jobs.append((f"{preset['name']}-{op}", op, params, images))
    return jobs


def run_demo(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    inputs = demo_inputs()
    inputs["mask"].save(out / "input-mask.png")
    inputs["sketch"].save(out / "input-sketch.png")
    print("starting a daemon with the tiny presets (the first run builds the tiny models)...")
    written = 0
    with running_daemon(preset="tiny") as daemon, Client(daemon.endpoint, timeout=600) as client:
        welcome = client.hello("underpaint-demo")
        print(f"daemon {welcome['daemon']} on {welcome['device']} at {daemon.endpoint}")
        print("the tiny models have random weights: expect noise where the model paints.\n")
        tiny = [p for p in welcome["models"] if p["name"].startswith("tiny")]
        jobs = [(title, op, params, images, "tiny") for title, op, params, images in demo_jobs(inputs)]
        for preset in tiny:
            if preset["name"] != "tiny":
                jobs += [(*job, preset["name"]) for job in family_jobs(preset, inputs)]
        for title, op, params, images, model in jobs:
            t0 = time.perf_counter()
            result = client.run(op, params, images, model=model)
            base = inputs["image"] if "image" in images and op != "upscale" else None
            picture = paste_results(base, result_images(result))[0]
            path = out / f"{title}.png"
            picture.save(path)
            written += 1
            patch = result["images"][0]
            print(
                f"{title:<32} seed {result['seed']:<6} patch at ({patch['x']},{patch['y']}) "
                f"{time.perf_counter() - t0:6.2f} s -> {path}"
            )
        names = [p["name"] for p in tiny if "txt2img" in p["ops"]]
        print(f"\ncomparing {', '.join(names)} on one prompt...")
        params = {"op": "txt2img", "models": names, "prompt": "a cat on a sofa", "seed": 7, "steps": 6}
        params |= {"prior_steps": 6, "super_res_steps": 6}  # presets that do not take these ignore them
        result = client.run("compare", params)
        sheet = out / "compare-sheet.png"
        contact_sheet(result, paste_results(None, result_images(result))).save(sheet)
        written += 1
        print(f"compare-sheet -> {sheet}")
    print(f"\nwrote {written} results to {out.resolve()}")
    return 0
