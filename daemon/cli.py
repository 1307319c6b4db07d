"""The `underpaint` command: run the daemon, talk to it, and run the demo.

Client subcommands import no torch/diffusers, so `underpaint edit` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import replace
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
        ("status", "show the daemon's device, queue, running jobs and workers", cmd_status),
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
    keygen = sub.add_parser(
        "keygen",
        help="make CurveZMQ keys: the daemon's pair and one client's pair (allowed at once)",
        description="Make the keys a daemon needs to serve a network safely: DIR/server.key (public: "
        "give it to every client), DIR/server.key_secret (stays with the daemon), and a key pair for "
        "one client, DIR/NAME.key and DIR/NAME.key_secret (move both to that client), whose public key "
        "is copied to DIR/authorized/ (the keys `serve --keys DIR` accepts). Run it again with another "
        "--client for each further client; delete a file in DIR/authorized/ to lock a client out.",
    )
    keygen.add_argument("dir", type=Path, metavar="DIR", help="folder for the keys (made if missing)")
    keygen.add_argument("--client", default="client", help="name of the client's key pair (default: client)")
    keygen.set_defaults(func=cmd_keygen)
    from .commands.compare import add_parser as add_compare_parser
    from .commands.install_plugin import add_parser as add_install_parser

    add_compare_parser(sub, _request_args, _endpoint_arg)
    add_install_parser(sub)
    from .commands.pull import add_parser as add_pull_parser

    add_pull_parser(sub)
    return parser


def _endpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint", default=DEFAULT_ENDPOINT, help=f"daemon ZeroMQ endpoint (default: {DEFAULT_ENDPOINT})"
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the daemon to answer (default 10)"
    )
    p.add_argument(
        "--server-key",
        metavar="FILE",
        help="the daemon's public key (its server.key) when it uses CurveZMQ keys "
        "(default: $UNDERPAINT_SERVER_KEY)",
    )
    p.add_argument(
        "--client-key",
        metavar="FILE",
        help="this client's key pair (NAME.key_secret from `underpaint keygen`) "
        "(default: $UNDERPAINT_CLIENT_KEY)",
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
        help="torch device of the single worker: auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps",
    )
    _pool_args(p)
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
        help="unload least recently used models above this many GB, per worker (0 = no limit)",
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
        help="CPU threads torch may use in each worker (0 = torch's default, or with several CPU workers "
        "the cores shared out among them; 1-2 keeps a shared machine responsive)",
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        metavar="DIR",
        help="your model folder from another tool (A1111/Forge, ComfyUI, Fooocus, InvokeAI, or any folder "
        "of .safetensors files): a preset per checkpoint, with the LoRAs and ControlNets that fit it; "
        "replaces the config's [models_dir] path",
    )
    p.add_argument(
        "--build-dir",
        type=Path,
        help="where the tiny test models are built (default: $UNDERPAINT_HOME/models or "
        "~/.cache/underpaint/models)",
    )
    p.add_argument(
        "--ready-file", type=Path, help="write the bound endpoint to this file once listening (for scripts)"
    )
    _security_args(p)
    _limit_args(p)
    p.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity"
    )
    p.set_defaults(func=cmd_serve)


def _pool_args(p: argparse.ArgumentParser) -> None:
    """Several workers: one per device of this machine, or Ray actors (docs/STUDIO.md)."""
    p.add_argument(
        "--devices",
        metavar="LIST",
        help="one worker process per device, e.g. cuda:0,cuda:1 (or cpu,cpu); auto = every CUDA GPU "
        "(else one worker on mps or cpu). Jobs of different clients then run at the same time",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="without --ray: N worker processes on --device; with --ray: N actors (default: one per "
        "GPU of the cluster, or 1 where it has none)",
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the workers as Ray actors (pip install 'underpaint[ray]'): ADDRESS of a running "
        "cluster (HOST:6379), or auto to start a private local one that stops with the daemon",
    )
    p.add_argument(
        "--worker-start-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the workers to be ready before serving (default 600)",
    )


def _security_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help="serve with CurveZMQ encryption and authentication: DIR from `underpaint keygen` "
        "(DIR/server.key_secret, and the allowed clients' public keys in DIR/authorized/; SIGHUP "
        "re-reads them). Required for an endpoint other machines can reach, unless --insecure",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback endpoint without keys: anyone who reaches the port can run jobs, "
        "read the queue and unload models, and prompts and pictures cross the network unencrypted",
    )


def _limit_args(p: argparse.ArgumentParser) -> None:
    """Limits a shared box needs (PROTOCOL.md 9.3); defaults from serving.admission.Policy."""
    from .serving.policy import Policy

    d = Policy()
    mib = 1024 * 1024
    for flag, kind, default, help_ in (
        ("--max-queued-per-client", int, 64, "jobs (and loads) one client may have waiting"),
        ("--max-queued", int, d.max_queued, "jobs waiting, all clients together"),
        (
            "--max-queued-mb-per-client",
            float,
            d.max_queued_bytes_per_client / mib,
            "MiB of images one client's waiting jobs may hold",
        ),
        ("--max-queued-mb", float, d.max_queued_bytes / mib, "MiB of images all waiting jobs may hold"),
        ("--max-connections", int, d.max_connections, "connections served at once"),
        (
            "--max-connections-per-client",
            int,
            d.max_connections_per_client,
            "connections served at once per client key (with --keys)",
        ),
        (
            "--max-job-cost",
            float,
            d.max_job_cost,
            "largest job in megapixel-steps: pixels x steps x variations / 2^20",
        ),
        (
            "--max-job-memory-mb",
            float,
            d.max_job_memory_bytes / mib,
            "largest estimated memory of one job, MiB",
        ),
        ("--results-ttl", float, d.results_ttl_s, "seconds finished jobs' results are kept for fetch/resume"),
        ("--results-mb", float, d.results_bytes / mib, "MiB of kept results (oldest evicted first)"),
        (
            "--session-grace",
            float,
            d.session_grace_s,
            "seconds a client may be away before its queued and running jobs are cancelled",
        ),
        (
            "--shutdown-grace",
            float,
            d.shutdown_grace_s,
            "seconds shutdown waits for the running job to stop at its next step before exiting anyway",
        ),
        ("--decode-threads", int, d.decode_threads, "threads that validate submits and decode their images"),
    ):
        p.add_argument(flag, type=kind, default=default, help=f"{help_} (default {default:g})")
    p.add_argument(
        "--test-start-delay",
        type=float,
        default=0.0,
        help="TESTING ONLY: a worker waits this many seconds before it starts each op (simulates a "
        "slow model load, to test a worker lost before its job's first step); never use it to serve",
    )
    p.add_argument(
        "--test-step-delay",
        type=float,
        default=0.0,
        help="TESTING ONLY: sleep this many seconds inside every denoising step (simulates a very slow "
        "device, to test shutdown and timeouts); never use it to serve",
    )


def _policy(args: argparse.Namespace) -> Any:
    from .serving.policy import Policy

    mib = 1024 * 1024
    return Policy(
        max_queued=args.max_queued,
        max_queued_bytes_per_client=int(args.max_queued_mb_per_client * mib),
        max_queued_bytes=int(args.max_queued_mb * mib),
        max_connections=args.max_connections,
        max_connections_per_client=args.max_connections_per_client,
        max_job_cost=args.max_job_cost,
        max_job_memory_bytes=int(args.max_job_memory_mb * mib),
        results_ttl_s=args.results_ttl,
        results_bytes=int(args.results_mb * mib),
        session_grace_s=args.session_grace,
        shutdown_grace_s=args.shutdown_grace,
        decode_threads=args.decode_threads,
    )


def _serve_keys(args: argparse.Namespace) -> Any:
    """The keys to serve with, or None; SystemExit(2) for a non-loopback endpoint without them."""
    from .serving.security import is_loopback, load_keys

    if args.keys is not None:
        try:
            return load_keys(args.keys)
        except ValueError as exc:
            print(f"underpaint serve: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    if is_loopback(args.endpoint):
        return None
    if not args.insecure:
        print(
            f"underpaint serve: {args.endpoint} can be reached from other machines; serve it with "
            "CurveZMQ keys (`underpaint keygen DIR`, then `--keys DIR`), or pass --insecure to let "
            "anyone who reaches the port use the daemon unencrypted",
            file=sys.stderr,
        )
        raise SystemExit(2)
    logging.getLogger("underpaint.security").warning(
        "INSECURE: serving %s without keys: anyone who reaches this port can run jobs, read the queue "
        "and unload models, and prompts and pictures cross the network unencrypted",
        args.endpoint,
    )
    return None


def _on_signals(stop: threading.Event, on_hup: Any) -> None:
    """First SIGINT/SIGTERM: shut down gracefully; a second one: exit at once. SIGHUP: re-read keys."""
    count = [0]

    def stop_handler(*_: Any) -> None:
        count[0] += 1
        if count[0] > 1:
            os.write(2, b"underpaint serve: second signal, exiting now\n")
            os._exit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop_handler)
    if on_hup is not None and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: on_hup())


def _check_pool_args(args: argparse.Namespace) -> None:
    """Refuse combinations that cannot mean anything, before the heavy imports."""
    problem = None
    if args.ray and args.devices:
        problem = "--devices places local workers; with --ray, Ray places them (use --workers for how many)"
    elif args.workers is not None and args.workers < 1:
        problem = "--workers must be at least 1"
    elif args.devices and args.workers is not None:
        problem = "give either --devices (one worker per device) or --workers (N workers on --device)"
    if problem:
        print(f"underpaint serve: {problem}", file=sys.stderr)
        raise SystemExit(2)


def _pool(args: argparse.Namespace, config: Any) -> Any:
    """The pool the flags ask for; None for the default single worker thread."""
    from .serving.pool.base import WorkerSpec

    spec = WorkerSpec(
        config,
        args.device,
        args.dtype,
        int(args.memory_budget_gb * 1024**3),
        args.build_dir,
        args.threads,
        args.test_step_delay,
        args.test_start_delay,
        args.log_level,
    )
    if args.ray:
        try:
            from .serving.pool.raypool import RayPool
        except ImportError as exc:
            raise ImportError(f"--ray needs Ray: pip install 'underpaint[ray]' ({exc})") from None
        return RayPool(spec, args.ray, args.workers)
    if not args.devices and args.workers is None:
        return None
    from .device import expand_devices, pick_device
    from .serving.pool.local import LocalPool, process_specs

    if args.devices:
        devices = expand_devices(args.devices)
    else:
        devices = [str(pick_device(args.device))] * args.workers
    if args.threads <= 0 and all(d == "cpu" for d in devices):
        spec = replace(spec, threads=max(1, (os.cpu_count() or 1) // len(devices)))  # share the cores out
    return LocalPool(process_specs(spec, devices), "process")


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _check_pool_args(args)
    keys = _serve_keys(args)  # before the heavy imports: a refused endpoint says so at once
    from .config import load_config
    from .device import pick_device, pick_dtype
    from .errors import ConfigError
    from .params import Limits
    from .serving.models import ModelManager
    from .serving.server import Server

    try:
        config = load_config(args.config, args.models_dir)
    except (ConfigError, OSError) as exc:
        print(f"underpaint serve: {exc}", file=sys.stderr)
        return 2
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
        config, device, pick_dtype(device, args.dtype), int(args.memory_budget_gb * 1024**3), args.build_dir
    )
    limits = Limits(
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        max_queued_per_client=args.max_queued_per_client,
    )
    try:
        pool = _pool(args, config)
    except (ImportError, ValueError, RuntimeError) as exc:
        print(f"underpaint serve: {exc}", file=sys.stderr)
        return 2
    server = Server(
        args.endpoint, models, limits, _policy(args), keys, step_delay=args.test_step_delay, pool=pool
    )
    stop = threading.Event()
    _on_signals(stop, server.reload_keys if keys is not None else None)
    if not server.start_workers(args.worker_start_timeout, stop) and not stop.is_set():
        print("underpaint serve: no worker could start (the log above says why)", file=sys.stderr)
        server.pool.close(2.0)
        return 2
    if args.ready_file:
        args.ready_file.write_text(server.bound_endpoint)
    server.serve(stop)
    if server.pool.stuck():
        # A worker thread is inside a step that ignores cancellation; the clients have their events
        # and the sockets are closed: exit without waiting for the device.
        logging.getLogger("underpaint.server").warning("exiting while the device is still busy")
        logging.shutdown()
        os._exit(0)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from .serving.security import keygen

    try:
        made = keygen(args.dir, args.client)
    except (ValueError, OSError) as exc:
        print(f"underpaint keygen: {exc}", file=sys.stderr)
        return 2
    if "server" in made:
        print(f"daemon keys: {args.dir / 'server.key'} (public: give to clients), server.key_secret (keep)")
    print(f"client {args.client!r}: {made['client_secret']} (and .key): move both to that client")
    print(f"allowed: {made['authorized']}")
    print(f"serve:   underpaint serve --keys {args.dir} --endpoint tcp://0.0.0.0:57321")
    print(
        f"client:  underpaint status --endpoint tcp://HOST:57321 --server-key server.key "
        f"--client-key {args.client}.key_secret"
    )
    return 0


# -- client commands -------------------------------------------------------------------------------
def _edit_parser(sub: Any) -> None:
    p = sub.add_parser(
        "edit",
        help="run one op on the daemon and write the result",
        description="Submit one job to a running daemon, show a progress bar, write the result. "
        "Ctrl-C cancels the job. --out gets the finished picture (the patch pasted onto the input); "
        "with several variations, NAME-1.png, NAME-2.png, ... Next to each PNG, NAME.json records the "
        "result (op, preset, params and seed, score, place, input files): `edit reword --from NAME.json "
        "--prompt TEXT` edits its prompt later. Which ops and parameters a preset "
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
            "reword",
        ],
        help="what to do (see PROTOCOL.md section 8)",
    )
    _endpoint_arg(p)
    p.add_argument("--model", help="model preset (default: the daemon's)")
    _request_args(p)
    p.add_argument("--preview", action="store_true", help="ask for per-step previews")
    # reword (Prompt-to-Prompt): daemon/commands/edit.py, PROTOCOL.md section 8 `reword`
    p.add_argument(
        "--from",
        dest="from_result",
        type=Path,
        metavar="RESULT.json",
        help="reword: the result to edit (the JSON written next to every result PNG); --prompt is then "
        "the edited prompt, and other options change the source job's params",
    )
    p.add_argument(
        "--edit-kind",
        choices=["auto", "replace", "refine", "reweight"],
        help="reword: replace (words swapped), refine (words added), reweight (weights only); default auto",
    )
    p.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="WORD=W",
        help="reword: attention weight of a word or phrase of the edited prompt, 0-10 (repeatable)",
    )
    p.add_argument(
        "--inject-cross", type=float, metavar="F", help="reword: share of steps the word maps are kept"
    )
    p.add_argument(
        "--inject-self", type=float, metavar="F", help="reword: share of steps the layout maps are kept"
    )
    p.add_argument(
        "--blend",
        action="append",
        default=[],
        metavar="WORD",
        help="reword: local blend, only where this word's attention is may pixels change (repeatable)",
    )
    p.add_argument(
        "--blend-threshold", type=float, metavar="F", help="reword: local blend threshold, 0.01-0.99"
    )
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
    from .commands.connect import open_client

    with open_client(args) as client:
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
        if p.get("loras"):
            print(f"  {'':<18} loras: {', '.join(lora['name'] for lora in p['loras'])}")
        print(f"  {'':<18} loaded: {loaded}")
    if reply.get("unusable"):
        print("files of the models dir that cannot be used:")
        for item in reply["unusable"]:
            print(f"  {item['path']}: {item['reason']}")
    if getattr(args, "about", False):
        seen: set[str] = set()
        for p in reply["presets"]:
            if p["family"] not in seen and p.get("about"):
                seen.add(p["family"])
                print(f"\n{p.get('title', p['family'])} ({p['family']}):\n  {p['about']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .commands.connect import open_client

    with open_client(args) as client:
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
    workers = status.get("workers") or []
    if len(workers) > 1 or welcome.get("pool", "local") != "local":
        print(f"workers ({welcome.get('pool', 'local')}):")
        for w in workers:
            warm = ", ".join(w["warm"]) or "nothing warm"
            print(
                f"  {w['worker']:<4} {w['state']:<8} {w['device'] or '?'} on {w['host'] or '?'} "
                f"(pid {w['pid'] or '?'}): {w['job'] or 'no job'}; {warm}"
            )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .commands.demo import run_demo

    return run_demo(args.out)


if __name__ == "__main__":
    sys.exit(main())
