"""CurveZMQ keys for a daemon reachable from a network: key files, the ZAP authenticator, and the
rule that a non-loopback endpoint needs keys (or the user's explicit `--insecure`).

A key folder (made by `underpaint keygen DIR`) holds:
- `server.key` (the daemon's public key: give it to every client) and `server.key_secret`
  (the daemon's secret key: never leaves the daemon's machine);
- `authorized/NAME.key`: the public key of every client the daemon accepts (add or remove files,
  then restart the daemon or send it SIGHUP);
- `NAME.key` / `NAME.key_secret`: a client's key pair as keygen made it, to move to that client.
The files are ZeroMQ's certificate format (`zmq.auth.load_certificate` reads them).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("underpaint.security")

SERVER = "server"
AUTHORIZED = "authorized"


@dataclass(frozen=True)
class Keys:
    folder: Path
    public: bytes  # z85
    secret: bytes  # z85

    @property
    def authorized(self) -> Path:
        return self.folder / AUTHORIZED


def load_keys(folder: Path) -> Keys:
    """The daemon's key pair from a keygen folder; ValueError saying what is missing."""
    secret_file = folder / f"{SERVER}.key_secret"
    if not secret_file.is_file():
        raise ValueError(f"{secret_file} does not exist: make the keys with `underpaint keygen {folder}`")
    public, secret = zmq.auth.load_certificate(secret_file)
    if secret is None:
        raise ValueError(f"{secret_file} holds no secret key")
    if not (folder / AUTHORIZED).is_dir():
        raise ValueError(f"{folder / AUTHORIZED} does not exist: it holds the allowed clients' public keys")
    return Keys(folder, public, secret)


def keygen(folder: Path, client: str = "client") -> dict[str, Path]:
    """Make the daemon's key pair (once) and a key pair for `client`, whose public key is allowed."""
    if not client or "/" in client or client.startswith(".") or client == SERVER:
        raise ValueError(f"client name {client!r}: use letters, digits, '-' or '_' (and not 'server')")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / AUTHORIZED).mkdir(exist_ok=True)
    made: dict[str, Path] = {}
    server_secret = folder / f"{SERVER}.key_secret"
    if not server_secret.exists():
        zmq.auth.create_certificates(folder, SERVER)
        made["server"] = folder / f"{SERVER}.key"
    if (folder / f"{client}.key_secret").exists():
        raise ValueError(f"{folder / (client + '.key_secret')} exists already; pick another client name")
    public, secret = zmq.auth.create_certificates(folder, client)
    shutil.copyfile(public, folder / AUTHORIZED / f"{client}.key")
    for path in (server_secret, Path(secret)):
        os.chmod(path, 0o600)
    made |= {"client_public": Path(public), "client_secret": Path(secret)}
    made["authorized"] = folder / AUTHORIZED / f"{client}.key"
    return made


def secure(context: zmq.Context, router: zmq.Socket, keys: Keys) -> ThreadAuthenticator:
    """Make `router` a CURVE server that accepts only the authorized clients' keys."""
    auth = ThreadAuthenticator(context, log=logging.getLogger("underpaint.zap"))
    auth.start()
    allow(auth, keys)
    router.setsockopt(zmq.CURVE_SERVER, 1)
    router.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    router.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    return auth


def allow(auth: ThreadAuthenticator, keys: Keys) -> int:
    """(Re)read the authorized public keys; returns how many there are."""
    auth.configure_curve(domain="*", location=str(keys.authorized))
    count = len(list(keys.authorized.glob("*.key")))
    if count == 0:
        log.warning("no client key in %s: no client can connect", keys.authorized)
    else:
        log.info("CurveZMQ on: %d client key(s) allowed from %s", count, keys.authorized)
    return count


def is_loopback(endpoint: str) -> bool:
    """True for endpoints only this machine can reach: ipc://, inproc://, tcp on a loopback address."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if ";" in host:  # tcp://source;destination: what is bound is the destination
        host = host.split(";")[-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: resolve what we can
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False
