"""A tiny, offline run of the whole pipeline on generated data, in a few minutes.

    python -m rnnlab.tools.demo              (or: ./dev.sh demo)

Writes a 30,000-row Jena-format zip and 800 generated reviews under ``data/demo/``, then runs
``dvc exp run -n demo`` with the data URLs pointed at them and every loop capped (the
overrides printed first). Extra arguments go to ``dvc exp run``: ``--queue -S 'a=1,2'``
queues a sweep on the same tiny data.

``dvc exp run -S`` rewrites params.yaml through DVC's own YAML dumper (flow lists become
block lists, ``null`` an empty value, comments move) and leaves the overrides in it. The
demo puts params.yaml back byte for byte when the run ends (failed, interrupted or
terminated included), so the next ``dvc repro`` runs on the file's own values; its last line
says what it restored and what it left. Numbers from it mean nothing about the lecture: the
data is generated and the training is a few steps long.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rnnlab.core.atomic import atomic_output
from rnnlab.core.errors import RnnlabError
from rnnlab.core.process import configure_process, this_python_first
from rnnlab.data.synthetic import write_imdb_tarball, write_jena_zip
from rnnlab.tracking.paths import require_repo_root

JENA_ROWS = 30_000
SETTINGS = {
    "jena.train_rows": "[0, 20000]", "jena.val_rows": "[20001, 25000]",
    "jena.test_rows": "[25001, null]",
    "imdb.maxlen": "100", "imdb.max_features": "2000",
    "train.max_epochs": "2", "train.steps_per_epoch": "20", "train.max_eval_batches": "5",
    "gradients.train_steps": "20", "gradients.batches": "2",
}


def overrides(root) -> list[str]:
    """Write the demo data and return the ``-S key=value`` pairs that use it. The files
    are the same bytes at every run, so their md5s in experiments queued earlier hold."""
    demo = root / "data" / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    jena, imdb = demo / "jena_climate_2009_2016.csv.zip", demo / "aclImdb_demo.tar.gz"
    jena_md5 = write_jena_zip(jena, rows=JENA_ROWS, seed=0)
    imdb_md5 = write_imdb_tarball(imdb, per_class=200, seed=0)
    pairs = {"data.jena.url": jena.resolve().as_uri(), "data.jena.md5": jena_md5,
             "data.imdb.url": imdb.resolve().as_uri(), "data.imdb.md5": imdb_md5, **SETTINGS}
    return [f"{k}={v}" for k, v in pairs.items()]


def _terminate(signum, frame):
    raise SystemExit(128 + signum)      # unwinds through ``finally``, unlike the default


@contextmanager
def file_restored(path: Path) -> Iterator[list[bool]]:
    """Put ``path``'s bytes back when the block ends, however it ends (an exception,
    Ctrl-C, SIGTERM). Yields a one-item list that says, afterwards, whether the file had
    changed and was restored."""
    before = path.read_bytes()
    previous = signal.signal(signal.SIGTERM, _terminate)
    restored = [False]
    try:
        yield restored
    finally:
        try:
            if not path.exists() or path.read_bytes() != before:
                with atomic_output(path) as tmp:
                    tmp.write_bytes(before)
                restored[0] = True
        finally:
            signal.signal(signal.SIGTERM, previous)


def _run_to_the_end(command: list[str], root: Path, env: dict[str, str] | None) -> int:
    """``command``'s exit status. It runs in its own process group, so a Ctrl-C reaches it
    once, from here, to dvc and its stage alike (dvc alone ignores SIGINT while a stage
    runs); it is waited out: 130 when it then failed. SIGTERM (``_terminate``'s
    SystemExit) is passed on the same way and waited out before the exit goes on."""
    child = subprocess.Popen(command, cwd=root, env=env, process_group=0)
    interrupted = False
    try:
        while True:
            try:
                # Short waits: a signal that lands on another thread (polars starts a pool)
                # leaves a blocking wait asleep until the child ends; Python raises it after.
                returncode = child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                continue
            except KeyboardInterrupt:
                interrupted = True
                os.killpg(child.pid, signal.SIGINT)
    except BaseException:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait()
        raise
    return 130 if interrupted and returncode != 0 else returncode


def run_experiment(root: Path, command: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``command`` (a ``dvc exp run``) in ``root`` and leave ``params.yaml`` as it was;
    the last line printed says what was restored and what the run left in the workspace."""
    params = root / "params.yaml"
    returncode, restored = 143, [False]     # what a SIGTERM that ends the wait leaves
    try:
        with file_restored(params) as restored:
            returncode = _run_to_the_end(command, root, env)
    finally:
        what = ("put back as it was before the demo (`dvc exp run -S` had rewritten it)"
                if restored[0] else "unchanged")
        if returncode == 130:
            left = "interrupted: the run stopped where it was (dvc's lines above)"
        elif returncode == 143:
            left = "terminated: the run was stopped and waited for (dvc's lines above)"
        elif returncode != 0:
            left = (f"the run failed (dvc exited {returncode}; its error is above"
                    + ("" if "--queue" in command else
                       "; if it says the experiment exists, name this demo with `--name NEW` "
                       "or pass dvc's `-f`")
                    + ")")
        elif "--queue" in command:
            left = "the queued experiments run on the demo's settings (`dvc queue start`)"
        else:
            left = ("the demo's results stay in the workspace (dvc.lock, metrics/, plots/, "
                    "reports/) and in its DVC experiment; the next `dvc repro` or `./dev.sh "
                    "repro` runs on params.yaml's own values")
        print(f"demo: {params.name} {what}; {left}.", flush=True)
    return returncode


def main(argv: list[str] | None = None) -> int:
    configure_process()
    parser = argparse.ArgumentParser(prog="python -m rnnlab.tools.demo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="demo",
                        help="the DVC experiment's name (default demo; a second demo needs "
                             "another, or `-f` to overwrite it)")
    args, rest = parser.parse_known_args(argv)
    try:
        root = require_repo_root()
    except RnnlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    command = ["dvc", "exp", "run", "-n", args.name]
    for pair in overrides(root):
        command += ["-S", pair]
    command += rest
    print(shlex.join(command), flush=True)
    return run_experiment(root, command, env=this_python_first())


if __name__ == "__main__":
    sys.exit(main())
