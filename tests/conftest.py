"""Shared fixtures: a real daemon process with the tiny preset, and the skip-or-fail rule for tests
that need root or a host application (skip loudly on a person's machine, fail in CI)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, reason: str) -> None:
    """Skip with a loud reason when `condition` is false, except in CI where it is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(f"SKIPPED (would fail in CI): {reason}")


@pytest.fixture(scope="session")
def underpaint_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One place for the tiny models for the whole run (UNDERPAINT_HOME if set, to reuse a cache)."""
    home = Path(os.environ.get("UNDERPAINT_HOME") or tmp_path_factory.mktemp("underpaint-home"))
    os.environ["UNDERPAINT_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def daemon(underpaint_home: Path) -> Iterator:
    """A real `underpaint serve --preset tiny` process on a free loopback port."""
    from underpaint.daemon.commands.launch import running_daemon

    with running_daemon(preset="tiny") as proc:
        yield proc
    # the daemon must have survived everything the tests threw at it
    assert proc.process.returncode in (0, -15), proc.log()


@pytest.fixture
def client(daemon) -> Iterator:
    from underpaint.protocol import Client

    with Client(daemon.endpoint, timeout=120) as c:
        yield c
