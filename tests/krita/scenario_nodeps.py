"""Missing-dependencies scenario: Krita's Python cannot import zmq (pytest shadows it on PYTHONPATH).
The docker must still load, and say what is missing and how to install it."""

from __future__ import annotations

from typing import Any

from scenario_lib import wait_for_docker


def scenario(ctx: Any):
    docker = yield from wait_for_docker(ctx)
    yield ctx.wait(
        lambda: docker.connection.state.name == "NO_DEPENDENCIES", 10, "the missing-dependency state"
    )
    yield 0.5  # several timer ticks: nothing may change or crash
    ctx.results["status"] = docker.status_label.toolTip()
    ctx.results["state"] = docker.connection.state.name
    ctx.results["generate_enabled"] = docker.generate_button.isEnabled()
    docker.generate_button.click()
    ctx.results["busy"] = docker.is_busy()
