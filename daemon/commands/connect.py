"""One way for every client command to open its connection: endpoint, timeout and CurveZMQ keys
(flags, or $UNDERPAINT_SERVER_KEY / $UNDERPAINT_CLIENT_KEY)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ...protocol import Client


def open_client(args: argparse.Namespace, **options: Any) -> Client:
    """A Client for the command's --endpoint, --timeout, --server-key and --client-key; a key that
    cannot be read ends the command with a message (exit status 2)."""
    try:
        return Client(
            args.endpoint,
            timeout=args.timeout,
            server_key=getattr(args, "server_key", None),
            client_key=getattr(args, "client_key", None),
            **options,
        )
    except ValueError as exc:
        print(f"underpaint: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
