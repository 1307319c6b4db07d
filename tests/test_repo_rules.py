"""Rules of the design card that code review alone would let slip: kept true by tests."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module, level) of every import in a file; level > 0 is relative."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", node.level))
    return out


def test_protocol_needs_only_pyzmq_msgpack_and_the_stdlib() -> None:
    for path in (ROOT / "protocol").glob("*.py"):
        for module, level in _imports(path):
            top = module.split(".")[0]
            assert level > 0 or top in STDLIB | {"zmq", "msgpack", "__future__"}, (path.name, module)
            assert top != "underpaint", f"{path.name} must import its siblings relatively"


def test_plugins_are_thin() -> None:
    heavy = {"torch", "diffusers", "transformers", "numpy", "PIL", "controlnet_aux"}
    files = list((ROOT / "plugins").rglob("*.py"))
    assert len(files) > 5
    for path in files:
        for module, level in _imports(path):
            assert level > 0 or module.split(".")[0] not in heavy, (str(path), module)


def test_no_generic_top_level_packages() -> None:
    from underpaint import daemon, protocol

    assert daemon.__name__ == "underpaint.daemon" and protocol.__name__ == "underpaint.protocol"
    for generic in ("daemon", "protocol", "plugins", "bench"):
        found = subprocess.run([sys.executable, "-c", f"import {generic}"], cwd="/", capture_output=True)
        assert found.returncode != 0, f"`import {generic}` must not work after installing"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```sh\n(python3 -m venv .*?)\n```", readme)
    assert len(commands) == 2, "README has exactly two set-up commands"
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_ruff_is_clean() -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
