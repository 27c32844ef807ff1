"""What a second clone gets from a DVC remote: with the results committed, or the run-cache only.

Run by hand (about 2-3 minutes on 2 cores; docs/teams.md quotes it):

    PYTHONPATH=src python bench/bench_team_remote.py [--dir /tmp/bench_team_remote]

Builds the tests' tiny project (a generated 5,000-row Jena zip and 80 reviews served on
loopback; three variants, one short epoch each: the tests' ``TRAIN_CAPS``), runs
``dvc repro``, adds a local-folder DVC remote and ``dvc push --run-cache``. Then two clones:
one of the commit without the results (code, params, ``.dvc/config``: what the run-cache
alone brings), one of the commit with ``dvc.lock``, ``metrics/``, ``plots/``, ``reports/``;
each ``dvc pull --run-cache`` then ``dvc repro`` (offline: the data server is stopped), timed,
with the stages each one ran or restored and whether its metrics equal the first clone's.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import yaml  # noqa: E402

from rnnlab.data.synthetic import write_jena_zip  # noqa: E402

from _project import TRAIN_CAPS, set_params, sh, small_project  # noqa: E402
from conftest import serving  # noqa: E402

VARIANTS = ("dense", "gru_dropout", "imdb_dense")


def timed(repo: Path, *cmd: str, check: bool = True):
    started = time.monotonic()
    proc = sh(repo, *cmd, check=check)
    return proc, time.monotonic() - started


def stages(proc) -> tuple[list[str], list[str]]:
    text = proc.stdout + proc.stderr
    return (re.findall(r"Running stage '([^']+)'", text),
            re.findall(r"Stage '([^']+)' is cached", text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench_team_remote"))
    base = parser.parse_args().dir.resolve()
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    zip_path = base / "jena.zip"
    md5 = write_jena_zip(zip_path, rows=5000, seed=7)
    with serving(base / "served") as server:
        first = small_project(base / "first", server, (zip_path, md5))
        models = yaml.safe_load((first / "params.yaml").read_text())["models"]
        set_params(first, **TRAIN_CAPS, models={k: models[k] for k in VARIANTS})
        sh(first, "git", "commit", "-qam", "a few variants")
        proc, took = timed(first, "dvc", "repro")
        print(f"first clone: dvc repro {took:.1f} s, {len(stages(proc)[0])} stages ran")
    sh(first, "dvc", "remote", "add", "-d", "shared", str(base / "remote"))
    sh(first, "git", "add", ".dvc/config")
    sh(first, "git", "commit", "-qm", "the shared remote")
    proc, took = timed(first, "dvc", "push", "--run-cache")
    print(f"first clone: dvc push --run-cache {took:.1f} s ({proc.stdout.strip().splitlines()[-1]})")
    runs = list((first / ".dvc" / "cache" / "runs").glob("*/*/*"))
    print(f"run-cache records: {len(runs)}")
    sh(base, "git", "clone", "-q", str(first), str(base / "runcache_only"))
    sh(first, "git", "add", "-A")
    sh(first, "git", "commit", "-qm", "results")
    sh(base, "git", "clone", "-q", str(first), str(base / "committed"))
    for name in ("committed", "runcache_only"):
        clone = base / name
        pull, pulled = timed(clone, "dvc", "pull", "--run-cache", check=False)
        repro, took = timed(clone, "dvc", "repro", check=False)
        ran, restored = stages(repro)
        same = [m.name for m in (first / "metrics").glob("*.json")
                if (clone / "metrics" / m.name).exists()
                and (clone / "metrics" / m.name).read_text() == m.read_text()]
        print(f"{name}: dvc pull --run-cache {pulled:.1f} s (exit {pull.returncode}); "
              f"dvc repro {took:.1f} s (exit {repro.returncode}), ran {ran}, restored "
              f"{restored}; metrics equal to the first clone's: {sorted(same)}")


if __name__ == "__main__":
    main()
