"""The `underpaint` command: run the daemon, talk to it, and run the demo.

Client subcommands import no torch/diffusers, so `underpaint edit` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..protocol.messages import DEFAULT_ENDPOINT


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="underpaint",
        description="Underpaint: a warm diffusers daemon for Krita, GIMP and scripts, over ZeroMQ.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _serve_parser(sub)
    _edit_parser(sub)
    for name, help_, func in (
        ("models", "list the daemon's model presets, their families and ops, and what is loaded", cmd_models),
        ("status", "show the daemon's device, queue and running job", cmd_status),
    ):
        p = sub.add_parser(name, help=help_, description=help_)
        _endpoint_arg(p)
        if name == "models":
            p.add_argument("--about", action="store_true", help="also explain each model family")
        p.set_defaults(func=func)
    demo = sub.add_parser(
        "demo",
        help="start a tiny-model daemon and run every op on a bundled picture",
        description="Start a daemon with the `tiny` preset (random weights built locally, no "
        "download) on a free loopback port, run every op on a real picture, write PNGs, print where.",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("underpaint-demo"),
        help="folder for the PNGs (default: ./underpaint-demo)",
    )
    demo.set_defaults(func=cmd_demo)
    from .commands.compare import add_parser as add_compare_parser
    from .commands.install_plugin import add_parser as add_install_parser

    add_compare_parser(sub, _request_args, _endpoint_arg)
    add_install_parser(sub)
    return parser


def _endpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint", default=DEFAULT_ENDPOINT, help=f"daemon ZeroMQ endpoint (default: {DEFAULT_ENDPOINT})"
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the daemon to answer (default 10)"
    )


# -- serve ---------------------------------------------------------------------------------------
def _serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the daemon",
        description="Run the Underpaint daemon: keep diffusers pipelines warm and serve them over "
        "ZeroMQ (protocol/PROTOCOL.md). Stops cleanly on Ctrl-C / SIGTERM.",
    )
    p.add_argument(
        "--endpoint",
        default=DEFAULT_ENDPOINT,
        help=f"ZeroMQ endpoint to bind (default: {DEFAULT_ENDPOINT}, loopback only; "
        "use tcp://0.0.0.0:PORT to serve a LAN, tcp://127.0.0.1:0 for any free port)",
    )
    p.add_argument(
        "--config", type=Path, help="TOML file with model presets, merged over the built-in presets.toml"
    )
    p.add_argument(
        "--preset",
        help="default model preset for jobs that name none "
        "(built-in: sd15 = real SD 1.5 weights, tiny = local random test models)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float16", "bfloat16", "float32"],
        help="weights dtype (auto: float16 on GPUs, float32 on cpu)",
    )
    p.add_argument(
        "--memory-budget-gb",
        type=float,
        default=0.0,
        help="unload least recently used models above this many GB (0 = no limit)",
    )
    p.add_argument(
        "--max-message-mb", type=float, default=256.0, help="largest accepted request in MiB (default 256)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=4096 * 4096,
        help="largest accepted image in pixels (default 4096*4096)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads torch may use (0 = torch's default; 1-2 keeps a shared machine responsive)",
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        help="where the tiny models are built (default: $UNDERPAINT_HOME/models or "
        "~/.cache/underpaint/models)",
    )
    p.add_argument(
        "--ready-file", type=Path, help="write the bound endpoint to this file once listening (for scripts)"
    )
    p.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity"
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from dataclasses import replace

    from .config import load_config
    from .device import pick_device, pick_dtype
    from .params import Limits
    from .serving.models import ModelManager
    from .serving.server import Server

    config = load_config(args.config)
    if args.preset:
        if args.preset not in config.presets:
            print(
                f"underpaint serve: unknown preset {args.preset!r}; known: {sorted(config.presets)}",
                file=sys.stderr,
            )
            return 2
        config = replace(config, default=args.preset)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    models = ModelManager(
        config, device, pick_dtype(device, args.dtype), int(args.memory_budget_gb * 1024**3), args.models_dir
    )
    limits = Limits(max_message_bytes=int(args.max_message_mb * 1024 * 1024), max_pixels=args.max_pixels)
    server = Server(args.endpoint, models, limits)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.ready_file:
        args.ready_file.write_text(server.bound_endpoint)
    server.serve(stop)
    return 0


# -- client commands -------------------------------------------------------------------------------
def _edit_parser(sub: Any) -> None:
    p = sub.add_parser(
        "edit",
        help="run one op on the daemon and write the result",
        description="Submit one job to a running daemon, show a progress bar, write the result. "
        "Ctrl-C cancels the job. --out gets the finished picture (the patch pasted onto the input); "
        "with several variations, NAME-1.png, NAME-2.png, ... Which ops and parameters a preset "
        "takes depends on its model family: see `underpaint models`.",
    )
    p.add_argument(
        "op",
        choices=[
            "txt2img",
            "sdedit",
            "inpaint",
            "controlnet",
            "instruct",
            "variation",
            "depth",
            "mix",
            "upscale",
        ],
        help="what to do (see PROTOCOL.md section 8)",
    )
    _endpoint_arg(p)
    p.add_argument("--model", help="model preset (default: the daemon's)")
    _request_args(p)
    p.add_argument("--preview", action="store_true", help="ask for per-step previews")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("underpaint-out.png"),
        help="output PNG (default: underpaint-out.png)",
    )
    p.add_argument(
        "--save-patches", action="store_true", help="also write each raw RGBA patch as NAME.patch.png"
    )
    p.set_defaults(func=cmd_edit)


def _request_args(p: argparse.ArgumentParser) -> None:
    """The images and parameters of a job (shared by `edit` and `compare`)."""
    p.add_argument("--image", type=Path, help="input picture")
    p.add_argument("--mask", type=Path, help="8-bit mask picture: white = repaint")
    p.add_argument(
        "--depth", type=Path, help="depth: a depth map picture (white = near) instead of estimating"
    )
    p.add_argument(
        "--control",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="control image (repeatable); NAME defaults to 'control'",
    )
    p.add_argument(
        "--unit",
        action="append",
        default=[],
        metavar="KEY=VAL,...",
        help="ControlNet unit, e.g. model=canny,preprocessor=canny,image=control,scale=1",
    )
    p.add_argument(
        "--item",
        action="append",
        default=[],
        metavar="prompt=TEXT|image=PATH[,weight=W]",
        help="mix: a prompt or a picture to blend, with a weight (repeat 2-8 times)",
    )
    p.add_argument("--prompt", help="what to paint")
    p.add_argument("--negative-prompt", help="what to avoid")
    p.add_argument("--instruction", help="instruct: the edit to make")
    for name, kind, help_ in (
        ("steps", int, "denoising steps"),
        ("guidance-scale", float, "classifier-free guidance"),
        ("image-guidance-scale", float, "instruct: faithfulness to the image"),
        ("strength", float, "share of the image re-painted (0-1)"),
        ("seed", int, "seed (random if absent; always printed)"),
        ("variations", int, "number of images"),
        ("width", int, "output width (px)"),
        ("height", int, "output height (px)"),
        ("resolution", int, "working size, longer side (px)"),
        ("padding", int, "context around the mask (px)"),
        ("feather", int, "inward feathering of the result's alpha (px)"),
        ("factor", int, "upscale factor: 2 or 4"),
        ("noise-level", int, "x4 upscaler noise level"),
    ):
        p.add_argument(f"--{name}", type=kind, help=help_)
    p.add_argument("--scheduler", help="sampler name (see `underpaint models` / the handshake)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other parameter of the preset's op spec, e.g. refine=0.3 (sdxl), stages=2 (if), "
        "prior_steps=10 (kandinsky22); VALUE is read as JSON, else as text",
    )


def cmd_edit(args: argparse.Namespace) -> int:
    from .commands.edit import run_edit

    return run_edit(args)


def cmd_models(args: argparse.Namespace) -> int:
    from ..protocol import Client

    with Client(args.endpoint, timeout=args.timeout) as client:
        try:
            reply = client.models()
        except TimeoutError as exc:
            print(f"underpaint: {exc}", file=sys.stderr)
            return 1
    memory = reply["memory"]
    print(
        f"default preset: {reply['default']}   memory used: {memory['used_bytes'] / 1e6:.1f} MB"
        + (f" of {memory['budget_bytes'] / 1e6:.0f} MB" if memory["budget_bytes"] else "")
    )
    for p in reply["presets"]:
        loaded = ", ".join(p["loaded"]) or "nothing"
        print(f"  {p['name']:<18} {p.get('title', p['family'])} ({p['family']}) @ {p['resolution']} px")
        print(f"  {'':<18} ops: {', '.join(p['ops'])}")
        if p["controlnets"]:
            print(f"  {'':<18} controlnets: {', '.join(p['controlnets'])}")
        print(f"  {'':<18} loaded: {loaded}")
    if getattr(args, "about", False):
        seen: set[str] = set()
        for p in reply["presets"]:
            if p["family"] not in seen and p.get("about"):
                seen.add(p["family"])
                print(f"\n{p.get('title', p['family'])} ({p['family']}):\n  {p['about']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ..protocol import Client

    with Client(args.endpoint, timeout=args.timeout) as client:
        try:
            welcome = client.hello("underpaint-cli")
            status = client.status()
        except TimeoutError as exc:
            print(f"underpaint: {exc}", file=sys.stderr)
            return 1
    print(
        f"daemon {welcome['daemon']} (protocol {welcome['protocol']}) on {welcome['device']} "
        f"{welcome['dtype']}; queued: {status['queued']}; running: {status['running'] or '-'}"
    )
    for job in status["jobs"]:
        print(
            f"  {job['job']} {job['op']:<10} {job['model']:<8} {job['state']:<8} "
            f"pos {job['position']} step {job['step']}/{job['total']}" + ("  (yours)" if job["mine"] else "")
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .commands.demo import run_demo

    return run_demo(args.out)


if __name__ == "__main__":
    sys.exit(main())
