"""The demo leaves params.yaml as it found it: a real `dvc exp run -S` on a one-stage DVC
project (the whole demo takes minutes; its overrides are checked against params.yaml)."""

from __future__ import annotations

import ast
import os
import signal
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
    assert "put back as it was" in last and f"the run failed (dvc exited {code}" in last
    assert "results stay in the workspace" not in last


def test_a_second_demo_of_the_same_name_says_it_failed_and_what_to_do(tmp_path, capfd):
    root = tiny_dvc_project(tmp_path)
    assert run(root, "a=2", capfd=capfd)[0] == 0
    code, last = run(root, "a=3", capfd=capfd)
    assert code != 0 and "`--name NEW` or pass dvc's `-f`" in last, last


@pytest.mark.hostile
def test_ctrl_c_in_the_demo_reaches_dvc_and_ends_in_one_line(tmp_path):
    """SIGINT to the demo alone (not its process group): it is passed on to the run, which
    ends as it ends on Ctrl-C; the demo waits for it, restores params.yaml and says so in
    one line, exit 130 (it was a KeyboardInterrupt traceback, the run killed midway)."""
    (tmp_path / "params.yaml").write_text(PARAMS)
    child = textwrap.dedent(f"""\
        import signal, sys, time
        from pathlib import Path
        Path("params.yaml").write_text("rewritten: true\\n")
        def stop(*_):
            Path({str(tmp_path / "child_stopped")!r}).touch()
            sys.exit(1)
        signal.signal(signal.SIGINT, stop)
        print("ready", flush=True)
        time.sleep(60)
        """)
    script = textwrap.dedent(f"""\
        import signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)   # a background shell's
        from pathlib import Path                                     # child ignores it
        from rnnlab.tools.demo import run_experiment
        sys.exit(run_experiment(Path({str(tmp_path)!r}), [sys.executable, "-c", {child!r}]))
        """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env_for_tools())
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert (tmp_path / "child_stopped").exists()
    assert (tmp_path / "params.yaml").read_text() == PARAMS
    assert out.strip().splitlines()[-1].startswith(
        "demo: params.yaml put back as it was before the demo"), out
    assert "interrupted: the run stopped where it was" in out


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


def test_the_demos_data_is_the_same_bytes_at_every_run(tmp_path):
    """Two runs of the demo (here: two clones) write the same files, so the same md5s: the
    IMDB tarball's gzip header had held its temporary name and the time, so a second demo
    run broke the md5 of experiments queued by the first and retrained the IMDB half."""
    first, second = (demo.overrides(tmp_path / name) for name in ("a", "b"))
    assert [p for p in first if ".md5=" in p] == [p for p in second if ".md5=" in p]
    assert (tmp_path / "a/data/demo/aclImdb_demo.tar.gz").read_bytes() == \
        (tmp_path / "b/data/demo/aclImdb_demo.tar.gz").read_bytes()


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
