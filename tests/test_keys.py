"""CurveZMQ: `underpaint keygen`, a daemon with `--keys` that serves authorised clients only (and binds
sessions to their keys), and the rule that a network endpoint needs keys or an explicit --insecure."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from underpaint.daemon.commands.launch import DaemonProcess, running_daemon
from underpaint.protocol import Client, DaemonRefused, DaemonUnavailable

CLI = [sys.executable, "-m", "underpaint.daemon.cli"]
JOB = {"prompt": "a key", "steps": 2, "width": 64, "height": 64, "seed": 2}


def keygen(folder: Path, client: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "keygen", str(folder), "--client", client], capture_output=True, text=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("alice", "bob"):
        made = keygen(folder, name)
        assert made.returncode == 0, made.stderr
    return folder


@pytest.fixture(scope="module")
def keyed(underpaint_home, keys: Path) -> Iterator[DaemonProcess]:
    with running_daemon(keys=keys) as proc:
        yield proc


def test_keygen_makes_the_daemon_pair_and_allowed_client_pairs(keys: Path) -> None:
    for name in ("server.key", "server.key_secret", "alice.key", "alice.key_secret", "bob.key_secret"):
        assert (keys / name).is_file(), name
    assert sorted(p.name for p in (keys / "authorized").iterdir()) == ["alice.key", "bob.key"]
    assert (keys / "server.key_secret").stat().st_mode & 0o077 == 0, "secret keys are private"
    again = keygen(keys, "alice")
    assert again.returncode == 2 and "exists already" in again.stderr


def test_an_authorised_client_works_and_sessions_are_bound_to_keys(keyed: DaemonProcess, keys: Path) -> None:
    server = keys / "server.key"
    with Client(keyed.endpoint, timeout=60, server_key=server, client_key=keys / "alice.key_secret") as alice:
        token = alice.hello()["session"]
        assert alice.run("txt2img", JOB, timeout=120)["images"]
    with Client(keyed.endpoint, timeout=30, server_key=server, client_key=keys / "bob.key_secret") as bob:
        assert bob.hello(session=token)["resumed"] is False, "bob cannot take alice's session"
    with Client(keyed.endpoint, timeout=30, server_key=server, client_key=keys / "alice.key_secret") as back:
        assert back.hello(session=token)["resumed"] is True


def test_an_unauthorised_client_is_refused(keyed: DaemonProcess, keys: Path, tmp_path: Path) -> None:
    assert keygen(tmp_path, "mallory").returncode == 0  # a valid pair the daemon does not know
    with (
        Client(
            keyed.endpoint,
            timeout=5,
            server_key=keys / "server.key",
            client_key=tmp_path / "mallory.key_secret",
        ) as mallory,
        pytest.raises(DaemonRefused),
    ):
        mallory.hello()
    with Client(keyed.endpoint, timeout=3) as plain, pytest.raises(DaemonUnavailable):
        plain.hello()  # no keys at all: no handshake, no answer
    assert keyed.alive()


def test_keys_come_from_the_cli_flags(keyed: DaemonProcess, keys: Path) -> None:
    args = ["--endpoint", keyed.endpoint, "--server-key", str(keys / "server.key")]
    done = subprocess.run(
        [*CLI, "status", *args, "--client-key", str(keys / "bob.key_secret")], capture_output=True, text=True
    )
    assert done.returncode == 0 and "protocol 1" in done.stdout, done.stderr
    refused = subprocess.run([*CLI, "status", *args, "--timeout", "3"], capture_output=True, text=True)
    assert refused.returncode == 2 and "both" in refused.stderr, "a server key alone is not enough"


def test_a_network_endpoint_needs_keys_or_insecure(tmp_path: Path) -> None:
    serve = [*CLI, "serve", "--endpoint", "tcp://0.0.0.0:0"]
    done = subprocess.run(serve, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--keys" in done.stderr and "--insecure" in done.stderr
    # With --insecure the endpoint passes (loudly); the unknown preset is what stops this one.
    done = subprocess.run(
        [*serve, "--insecure", "--preset", "nope"], capture_output=True, text=True, timeout=120
    )
    assert "INSECURE" in done.stderr and "unknown preset 'nope'" in done.stderr
    assert "can be reached from other machines" not in done.stderr
    done = subprocess.run([*serve, "--keys", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "keygen" in done.stderr, "a folder without keys is explained"


def test_which_endpoints_need_keys() -> None:
    from underpaint.daemon.serving.security import is_loopback

    for local in (
        "tcp://127.0.0.1:57321",
        "tcp://127.0.0.2:1",
        "tcp://[::1]:1",
        "tcp://localhost:5",
        "ipc:///tmp/u",
    ):
        assert is_loopback(local), local
    for remote in ("tcp://0.0.0.0:57321", "tcp://*:57321", "tcp://192.168.1.20:57321", "tcp://[::]:1"):
        assert not is_loopback(remote), remote
