"""`python -m reliability`: the outside proof of issue 9, a long fuzz and a soak of the daemon.

Both start their own `underpaint serve` on a free loopback port (or use `--endpoint`), talk to it only
through the protocol, and print a markdown report; `--json` keeps every counter and reproducer.
Exit status 1 when a figure that must be zero is not (deaths, hangs, tracebacks, undocumented replies,
wrong deliveries, lost jobs, non-deterministic references).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny models are built locally; never reach for a hub

from .daemon import Daemon, External, Target, curve_options  # noqa: E402
from .fuzz import Fuzz, FuzzPlan  # noqa: E402
from .report import Tally, failures, markdown  # noqa: E402
from .soak import Soak, SoakPlan  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m reliability",
        description="Fuzz and soak an Underpaint daemon from outside, as any client could, and report "
        "deaths, hangs, tracebacks, undocumented replies, lost or misdelivered jobs and RSS. Loopback "
        "only; bounded in messages, jobs and time. See docs/RELIABILITY.md.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    fuzz = sub.add_parser("fuzz", help="send generated messages (default 100,000) and judge every reply")
    fuzz.add_argument("--messages", type=int, default=100_000)
    fuzz.add_argument("--batch", type=int, default=250, help="messages between health checks")
    fuzz.add_argument(
        "--run-cost",
        type=float,
        default=64.0,
        help="accepted jobs up to this many work units (steps at 64x64) may run; others are "
        "cancelled at once",
    )
    fuzz.add_argument("--kinds", default="", help="comma-separated case kinds only (default: all)")
    fuzz.add_argument(
        "--max-message-mb",
        type=int,
        default=8,
        help="the started daemon's message limit (small, so oversize cases stay cheap)",
    )
    soak = sub.add_parser("soak", help="run many real jobs from several clients (default 1,000)")
    soak.add_argument("--jobs", type=int, default=1000)
    soak.add_argument("--clients", type=int, default=4)
    soak.add_argument("--inflight", type=int, default=2, help="jobs each client keeps in flight")
    soak.add_argument("--cancel-rate", type=float, default=0.1)
    soak.add_argument(
        "--drop-rate",
        type=float,
        default=0.02,
        help="chance per job that its client drops its connection and reconnects",
    )
    for sp in (fuzz, soak):
        sp.add_argument("--seed", type=int, default=1)
        sp.add_argument("--presets", default="tiny*", help="presets whose jobs may run (shell patterns)")
        sp.add_argument("--max-seconds", type=float, default=4 * 3600.0)
        sp.add_argument("--endpoint", help="use this running daemon instead of starting one")
        sp.add_argument("--pid", type=int, help="with --endpoint: its pid, for RSS")
        sp.add_argument("--log", type=Path, help="with --endpoint: its log file, for tracebacks")
        sp.add_argument("--threads", type=int, default=1, help="torch threads of the started daemon")
        sp.add_argument(
            "--keys",
            type=Path,
            help="CurveZMQ: a folder from `underpaint keygen`; the started "
            "daemon serves with it and the harness connects with its client key",
        )
        sp.add_argument("--server-key", type=Path, help="with --endpoint: the daemon's public key file")
        sp.add_argument(
            "--client-key",
            type=Path,
            help="the client's secret key file (default with --keys: KEYS/client.key_secret)",
        )
        sp.add_argument(
            "--daemon-arg",
            action="append",
            default=[],
            help="extra argument for `underpaint serve` (repeatable)",
        )
        sp.add_argument("--protocol-md", help="PROTOCOL.md to take the documented codes from")
        sp.add_argument("--out", type=Path, help="also write the markdown report here")
        sp.add_argument("--json", type=Path, help="write every counter and reproducer here")
    return p.parse_args(argv)


def target(args: argparse.Namespace) -> Target:
    server_key = args.server_key or (args.keys / "server.key" if args.keys else None)
    client_key = args.client_key or (args.keys / "client.key_secret" if args.keys else None)
    options = curve_options(server_key, client_key) if server_key and client_key else {}
    if args.endpoint:
        external = External(args.endpoint, args.pid, args.log)
        external.options = options
        return external
    extra = ["--preset", "tiny", "--threads", str(args.threads)]
    if args.keys:
        extra += ["--keys", str(args.keys)]
    if args.command == "fuzz":
        extra += ["--max-message-mb", str(args.max_message_mb)]
    daemon = Daemon([*extra, *args.daemon_arg])
    daemon.options = options
    print(f"starting underpaint serve {' '.join(daemon.args)} ...", file=sys.stderr, flush=True)
    daemon.start()
    return daemon


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tally = Tally()
    tally.info["command"] = " ".join(["python -m reliability", *(argv if argv is not None else sys.argv[1:])])
    tally.info["date"] = time.strftime("%Y-%m-%d %H:%M")
    tgt = target(args)
    try:
        if args.command == "fuzz":
            plan = FuzzPlan(
                messages=args.messages,
                seed=args.seed,
                presets=args.presets,
                batch=args.batch,
                run_cost=args.run_cost,
                max_seconds=args.max_seconds,
                kinds=tuple(k for k in args.kinds.split(",") if k),
                progress=True,
            )
            Fuzz(tgt, plan, tally, args.protocol_md).run()
        else:
            plan_s = SoakPlan(
                jobs=args.jobs,
                clients=args.clients,
                inflight=args.inflight,
                cancel_rate=args.cancel_rate,
                drop_rate=args.drop_rate,
                presets=args.presets,
                seed=args.seed,
                max_seconds=args.max_seconds,
                progress=True,
            )
            Soak(tgt, plan_s, tally, args.protocol_md).run()
    finally:
        if isinstance(tgt, Daemon):
            status = tgt.stop()
            tally.info["daemon exit status"] = status if status is not None else "killed after SIGTERM grace"
            tgt.close()
    text = markdown(tally, args.command, f"reliability {args.command}")
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(tally.as_dict(), indent=1, default=str), encoding="utf-8")
    bad = failures(tally)
    if bad:
        print("FAILED: " + ", ".join(f"{k} = {v}" for k, v in sorted(bad.items())), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
