"""A tiny, offline run of the whole pipeline on generated data, in a few minutes.

    python -m rnnlab.demo              (or: ./dev.sh demo)

Writes a 30,000-row Jena-format zip and 800 generated reviews under ``data/demo/``, then runs
``dvc exp run -n demo`` with the data URLs pointed at them and every loop capped (the
overrides printed first). The workspace keeps those params, so a sweep queued next
(``dvc exp run --queue -S ...``) runs on the same tiny data. Numbers from it mean nothing
about the lecture: the data is generated and the training is a few steps long.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from rnnlab.paths import repo_root
from rnnlab.synthetic import write_imdb_tarball, write_jena_zip

JENA_ROWS = 30_000
SETTINGS = {
    "jena.train_rows": "[0, 20000]", "jena.val_rows": "[20001, 25000]",
    "jena.test_rows": "[25001, null]",
    "imdb.maxlen": "100", "imdb.max_features": "2000",
    "train.max_epochs": "2", "train.steps_per_epoch": "20", "train.max_eval_batches": "5",
    "gradients.train_steps": "20", "gradients.batches": "2",
}


def overrides(root) -> list[str]:
    """Write the demo data (once) and return the ``-S key=value`` pairs that use it."""
    demo = root / "data" / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    jena, imdb = demo / "jena_climate_2009_2016.csv.zip", demo / "aclImdb_demo.tar.gz"
    jena_md5 = write_jena_zip(jena, rows=JENA_ROWS, seed=0)
    imdb_md5 = write_imdb_tarball(imdb, per_class=200, seed=0)
    pairs = {"data.jena.url": jena.resolve().as_uri(), "data.jena.md5": jena_md5,
             "data.imdb.url": imdb.resolve().as_uri(), "data.imdb.md5": imdb_md5, **SETTINGS}
    return [f"{k}={v}" for k, v in pairs.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rnnlab.demo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="demo", help="the DVC experiment's name")
    args, rest = parser.parse_known_args(argv)
    root = repo_root()
    command = ["dvc", "exp", "run", "-n", args.name]
    for pair in overrides(root):
        command += ["-S", pair]
    command += rest
    print(shlex.join(command), flush=True)
    return subprocess.run(command, cwd=root).returncode


if __name__ == "__main__":
    sys.exit(main())
