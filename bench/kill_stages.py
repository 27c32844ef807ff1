"""kill -9 at random points of every stage of a reproduced pipeline, then rerun each.

Run by hand on a project where `dvc repro` has run (for example the first clone that
bench/bench_team_remote.py leaves in ``--dir``, with its data server serving again):

    python bench/kill_stages.py REPO [--seed 7] [--from N]

For each stage of ``REPO/dvc.lock``: one forced run (`dvc repro -s -f`) to time it, then
twice a forced run killed with SIGKILL (its whole process group) at a random point inside
that time, each followed by a plain rerun (`dvc repro -s`, the second with
`--no-run-cache`). Prints per kill: stage, kill point, stage time, how the rerun went
(restored from the run cache, ran, or unchanged), its exit code, whether every
`metrics/*.json` equals the uninterrupted run's (MLflow run ids and timings aside), and
files left beyond the uninterrupted run's (checkpoints/ aside, which the next tracked stage
clears); at the end, after one more tracked stage (`naive`), every file left over.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import yaml

VOLATILE = {"mlflow_run_id", "seconds_per_epoch"}
NOT_RESULTS = (".dvc/", ".git/", "mlflow.db", "mlruns/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--from", dest="start", type=int, default=0,
                        help="skip the first N stages of dvc.lock")
    args = parser.parse_args()
    repo, rng = args.repo.resolve(), random.Random(args.seed)

    def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
        if check and proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def results(data):
        if isinstance(data, dict):
            return {k: results(v) for k, v in data.items() if k not in VOLATILE}
        return data

    def metrics() -> dict:
        return {p.name: results(json.loads(p.read_text()))
                for p in sorted((repo / "metrics").glob("*.json"))}

    def files() -> set[str]:
        return {str(p.relative_to(repo)) for p in repo.rglob("*")
                if p.is_file() and not str(p.relative_to(repo)).startswith(NOT_RESULTS)}

    stages = list(yaml.safe_load((repo / "dvc.lock").read_text())["stages"])
    reference, reference_files = metrics(), files()
    bad = kills = 0
    for stage in stages[args.start:]:
        started = time.monotonic()
        sh("dvc", "repro", "-s", "-f", stage)
        took = time.monotonic() - started
        reference_files |= files()           # what an uninterrupted run of it leaves
        for no_run_cache in (False, True):
            delay = rng.uniform(0.3, max(0.4, 0.95 * took))
            proc = subprocess.Popen(["dvc", "repro", "-s", "-f", stage], cwd=repo,
                                    start_new_session=True, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(delay)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass                                  # it finished first
            proc.wait()
            rerun = sh("dvc", "repro", "-s", stage,
                       *(["--no-run-cache"] if no_run_cache else []), check=False)
            how = ("restored" if "skipping run" in rerun.stdout else
                   "unchanged" if "didn't change" in rerun.stdout else "ran")
            same = rerun.returncode == 0 and metrics() == reference
            extra = sorted(f for f in files() - reference_files
                           if not f.startswith("checkpoints/"))
            kills += 1
            bad += not same or bool(extra)
            print(f"{stage}: killed at {delay:.1f} s of {took:.1f} s; rerun {how}, exit "
                  f"{rerun.returncode}, metrics {'equal' if same else 'DIFFER'}, "
                  f"left over {extra or 'nothing'}", flush=True)
    sh("dvc", "repro", "-s", "-f", "naive")
    print(f"{kills} kills, {bad} bad; after one more tracked stage, left over: "
          f"{sorted(files() - reference_files) or 'nothing'}")


if __name__ == "__main__":
    main()
