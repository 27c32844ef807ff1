"""The console scripts: every tool ./dev.sh runs by name is declared in pyproject.toml,
installed, and starts (its --help)."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_tool_dev_sh_runs_is_a_declared_script():
    used = set(re.findall(r"exec (rnnlab-[a-z-]+)", (ROOT / "dev.sh").read_text()))
    assert used and used <= set(SCRIPTS), sorted(used - set(SCRIPTS))


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_script_points_at_a_main_and_is_installed(name):
    module, _, function = SCRIPTS[name].partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    installed = shutil.which(name, path=str(Path(sys.executable).parent))
    assert installed, f"{name} is not installed beside {sys.executable}: pip install -e . again"
    done = subprocess.run([installed, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]


def test_dev_sh_help_lists_every_command_it_takes():
    """`./dev.sh help` prints the header's lines; a command added below them once went
    unlisted (bench, ray-sweep)."""
    text = (ROOT / "dev.sh").read_text()
    commands = set(re.findall(r"^  ([a-z][a-z-]*)\)", text, flags=re.M))
    done = subprocess.run([str(ROOT / "dev.sh"), "help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    listed = set(re.findall(r"^ *\./dev\.sh ([a-z][a-z-]*)", done.stdout, flags=re.M))
    assert {"repro", "test", "bench", "ray-sweep"} <= commands
    assert commands <= listed, f"not in `./dev.sh help`: {sorted(commands - listed)}"
