"""The demo leaves params.yaml as it found it: a real `dvc exp run -S` on a one-stage DVC
project (the whole demo takes minutes; its overrides are checked against params.yaml)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from rnnlab.core.process import this_python_first
from rnnlab.tools import demo
from rnnlab.tools.params import load_params

from _project import env_for_tools, sh

ROOT = Path(__file__).resolve().parents[1]

# What DVC's dumper reflows: comments beside values, a flow list, a null, a nested key.
PARAMS = textwrap.dedent("""\
    # a comment at the top
    a: 1              # beside a
    rows: [0, 200]    # a flow list
    cap: null         # null = no cap
    nested:
      b: 3
    """)
STAGE = textwrap.dedent("""\
    stages:
      echo:
        cmd: python echo.py
        params: [a, rows, cap, nested.b]
        outs: [out.txt]
    """)
ECHO = textwrap.dedent("""\
    import sys, yaml
    p = yaml.safe_load(open("params.yaml"))
    open("out.txt", "w").write(repr(p))
    sys.exit(p["a"] == 9)    # a = 9: the stage fails
    """)


def tiny_dvc_project(root: Path) -> Path:
    (root / "params.yaml").write_text(PARAMS)
    (root / "dvc.yaml").write_text(STAGE)
    (root / "echo.py").write_text(ECHO)
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "initial")
    return root


def run(root: Path, *overrides: str, capfd) -> tuple[int, str]:
    command = [sys.executable, "-m", "dvc", "exp", "run", "-n", "demo"]
    for pair in overrides:
        command += ["-S", pair]
    code = demo.run_experiment(root, command, env=env_for_tools())
    return code, capfd.readouterr().out.strip().splitlines()[-1]


def test_params_yaml_is_byte_identical_after_the_run_and_a_repro_uses_it(tmp_path, capfd):
    root = tiny_dvc_project(tmp_path)
    code, last = run(root, "a=2", "rows=[5, 6]", "cap=7", "nested.b=4", capfd=capfd)
    assert code == 0
    # The experiment ran on the overrides ...
    assert (root / "out.txt").read_text() == repr(
        {"a": 2, "rows": [5, 6], "cap": 7, "nested": {"b": 4}})
    # ... and params.yaml is the file it was, comments and flow lists included.
    assert (root / "params.yaml").read_text() == PARAMS
    assert last.startswith("demo: params.yaml put back as it was before the demo")
    assert "the next `dvc repro`" in last
    # A real run afterwards uses the file's own values.
    sh(root, "dvc", "repro")
    assert (root / "out.txt").read_text() == repr(
        {"a": 1, "rows": [0, 200], "cap": None, "nested": {"b": 3}})


def test_params_yaml_is_restored_when_the_run_fails(tmp_path, capfd):
    root = tiny_dvc_project(tmp_path)
    code, last = run(root, "a=9", capfd=capfd)
    assert code != 0
    assert (root / "params.yaml").read_text() == PARAMS
    assert "put back as it was" in last


def test_the_demo_runs_dvc_and_the_stages_on_its_own_python_unactivated(tmp_path, capfd):
    """`.venv/bin/python -m rnnlab.tools.demo` with the venv not on PATH: `dvc` and the
    stages' `python` are found beside that interpreter (a bare PATH found no `dvc` and
    ended in a FileNotFoundError traceback)."""
    root = tiny_dvc_project(tmp_path)
    bare = env_for_tools() | {"PATH": os.pathsep.join(("/usr/bin", "/bin"))}
    with pytest.raises(FileNotFoundError):
        subprocess.run(["dvc", "--version"], env=bare, capture_output=True)
    code = demo.run_experiment(root, ["dvc", "exp", "run", "-n", "demo", "-S", "a=2"],
                               env=this_python_first(bare))
    assert code == 0, capfd.readouterr().err[-2000:]
    assert ast.literal_eval((root / "out.txt").read_text())["a"] == 2


def test_params_yaml_is_restored_when_the_demo_is_terminated(tmp_path):
    """SIGTERM to the demo's process (the run still going) restores the file as well."""
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS)
    script = textwrap.dedent(f"""\
        import os, signal
        from pathlib import Path
        from rnnlab.tools.demo import file_restored
        path = Path({str(path)!r})
        with file_restored(path):
            path.write_text("rewritten: true\\n")
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not end the block")
        """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env_for_tools())
    assert proc.returncode == 128 + 15, proc.stderr
    assert path.read_text() == PARAMS


def test_the_demo_overrides_only_keys_params_yaml_has(tmp_path):
    """Every ``-S`` the demo passes names a key of params.yaml (DVC would add a misspelled
    one silently) and, applied, still loads."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for pair in demo.overrides(tmp_path):
        dotted, value = pair.split("=", 1)
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        assert last in node, dotted
        node[last] = yaml.safe_load(value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert load_params(tmp_path / "params.yaml").train.max_epochs == 2
